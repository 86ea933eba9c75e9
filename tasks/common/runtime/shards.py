"""Sharded streaming data: WebDataset-format tar shards plus an offset index.

Format: each split is a directory of ``<split>-NNNNNN.tar`` shards in WebDataset's layout (a
sample is the consecutive tar members sharing a key: ``00000042.jpeg``, ``00000042.cls``, ...;
plain POSIX tars that ``tar``, the ``webdataset`` package or any object store handle) and an
``index.json`` with each shard's sample count and the byte offset of every sample. The index is
what lets a worker start reading in the middle of a shard, so that every rank gets exactly the
same number of samples (DDP needs equal batch counts) without reading anything twice.

The tar files are written and parsed by the ``webdataset`` package (``ShardWriter`` /
``tar_file_expander`` + ``group_by_keys``), and its seeded ``shuffle`` buffer mixes each worker's
stream. What stays here is what webdataset cannot do (tests/shards/test_webdataset.py measures
it): its ``split_by_node`` / ``split_by_worker`` deal whole shards, so ranks get unequal sample
counts (DDP needs equal batch counts) and nobody starts inside a shard; and its shard shuffle is
not a function of the epoch that Lightning sets, so a resumed run could not replay an epoch.
The offset index and the epoch plan below give both. Why not LitData's optimized chunks: the
files stay standard tars (``tar tf``, any object store, the ``webdataset`` package), and
``fsspec`` (installed with Lightning) opens ``s3://``, ``gs://``, ``http(s)://`` or local paths.

Each epoch: the shard order is a permutation fixed by ``(seed, epoch)``; the concatenated sample
stream is cut into ``world_size`` equal contiguous ranges (padded by wrapping around, as
DistributedSampler pads, or trimmed with ``drop_last``); each rank's range is cut into whole
batches, dealt to the DataLoader workers in contiguous runs; each worker streams its runs
sequentially through a shuffle buffer seeded by ``(seed, epoch, rank, worker)``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

INDEX_FILE = "index.json"
FORMAT = "webdataset-tar+offsets/1"


class ShardWriter:
    """Write samples (``{extension: value}``) into tar shards of ``samples_per_shard`` samples
    (webdataset's ``ShardWriter``, reproducible bytes) and, on close, the ``index.json`` with
    every sample's byte offset that the streaming dataset reads. Values are bytes, or what
    webdataset encodes by extension (``str``; ``cls`` int; ``.npy`` array; ``json`` object)."""

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str,
        samples_per_shard: int = 1000,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.shards: list[dict[str, Any]] = []
        self.count = 0
        self._offsets = [0]  # of the shard being written: sample starts, then the end
        self._writer = wds.ShardWriter(
            str(self.out_dir / f"{prefix}-%06d.tar"),
            maxcount=samples_per_shard,
            maxsize=float("inf"),
            post=self._shard_written,
            verbose=0,
            user="",
            group="",
            mode=0o644,
            mtime=0,
        )

    def _shard_written(self, path: str) -> None:
        if len(self._offsets) == 1:  # nothing written: the writer's empty first file
            Path(path).unlink()
        else:
            url, samples = Path(path).name, len(self._offsets) - 1
            self.shards.append({"url": url, "samples": samples, "offsets": self._offsets})
        self._offsets = [0]

    def write(self, sample: dict[str, Any], key: str | None = None) -> None:
        key = key or f"{self.count:08d}"
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.' (WebDataset's separator)")
        self._writer.write({"__key__": key, **sample})
        self._offsets.append(self._writer.tarstream.tarstream.offset)  # this sample's end
        self.count += 1

    def close(self) -> Path:
        self._writer.close()
        index = {"format": FORMAT, "meta": self.meta, "shards": self.shards}
        path = self.out_dir / INDEX_FILE
        path.write_text(json.dumps(index))
        return path

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardIndex:
    """``index.json`` of one split: shard URLs (relative to the index), counts, offsets."""

    location: str
    urls: list[str]
    counts: list[int]
    offsets: list[list[int]]
    meta: dict[str, Any]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @classmethod
    def load(cls, location: str | Path) -> ShardIndex:
        import fsspec

        location = str(location).rstrip("/")
        index_url = location if location.endswith(".json") else f"{location}/{INDEX_FILE}"
        base = index_url.rsplit("/", 1)[0]
        try:
            with fsspec.open(index_url, "r") as f:
                data = json.load(f)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"no shard index {index_url}: convert the dataset first (scripts/make_shards.py)"
            ) from error
        if data.get("format") != FORMAT:
            raise ValueError(f"{index_url}: format {data.get('format')!r}, expected {FORMAT!r}")
        shards = data["shards"]
        return cls(
            location=base,
            urls=[s["url"] if "://" in s["url"] else f"{base}/{s['url']}" for s in shards],
            counts=[int(s["samples"]) for s in shards],
            offsets=[list(s["offsets"]) for s in shards],
            meta=data.get("meta", {}),
        )


# --- the epoch plan: which samples each rank / worker reads ----------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The permutation seed of EpochShuffleSampler (tasks/common/runtime/data.py)."""
    return torch.Generator().manual_seed(seed + 100_003 * epoch)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_shards))
    return torch.randperm(num_shards, generator=epoch_generator(seed, epoch)).tolist()


def samples_per_rank(total: int, world_size: int, drop_last: bool) -> int:
    """DistributedSampler's count: pad up to a multiple of world_size, or trim down."""
    return total // world_size if drop_last else math.ceil(total / world_size)


Segment = tuple[int, int, int]  # (shard, first sample, end sample) in shard-local indices


def _segments(order: list[int], counts: list[int], start: int, stop: int) -> list[Segment]:
    """Stream positions [start, stop) of the shards concatenated in ``order`` (positions past
    the end wrap around to the start) as per-shard runs."""
    total = sum(counts[s] for s in order)
    out: list[Segment] = []
    pos = start
    while pos < stop:
        wrapped = pos % total
        base = 0
        for shard in order:
            if wrapped < base + counts[shard]:
                first = wrapped - base
                take = min(counts[shard] - first, stop - pos)
                out.append((shard, first, first + take))
                pos += take
                break
            base += counts[shard]
    return out


def plan_epoch(
    counts: list[int],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    batch_size: int,
    drop_last: bool,
) -> list[Segment]:
    """The segments that worker ``worker`` of rank ``rank`` reads in epoch ``epoch``."""
    order = [s for s in shard_order(len(counts), seed, epoch, shuffle) if counts[s] > 0]
    total = sum(counts)
    per_rank = samples_per_rank(total, world_size, drop_last)
    if per_rank == 0:
        return []
    batches = math.ceil(per_rank / batch_size)
    first_batch = batches * worker // num_workers
    end_batch = batches * (worker + 1) // num_workers
    start = rank * per_rank + first_batch * batch_size
    stop = rank * per_rank + min(end_batch * batch_size, per_rank)
    return _segments(order, counts, start, stop)


# --- reading ---------------------------------------------------------------------------------


def read_segment(url: str, offsets: list[int], first: int, end: int) -> Iterator[dict[str, Any]]:
    """Samples ``first`` .. ``end - 1`` of one shard as webdataset yields them (``__key__``,
    ``__url__``, ``ext: bytes``): one sequential read from the first sample's byte offset
    (works on object storage too), parsed by webdataset."""
    import fsspec

    if end <= first:
        return
    with fsspec.open(url, "rb") as f:
        f.seek(offsets[first])
        length = offsets[end] - offsets[first]
        stream = io.BytesIO(f.read(length)) if length < (64 << 20) else f
        files = tar_file_expander([{"url": url, "stream": stream}])
        yield from itertools.islice(group_by_keys(files), end - first)


def distributed_rank(trainer: Any = None) -> tuple[int, int]:
    """(rank, world_size): the trainer's when given, else the running process group's, else
    (0, 1)."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedDataset(IterableDataset):
    """Streams one split's shards: per-rank and per-worker splitting, ``(seed, epoch)``
    shuffling. ``decode`` turns a raw sample (``{"__key__", ext: bytes}``) into the item.

    ``len()`` is this rank's sample count, so ``len(loader)`` is its batch count. ``set_epoch``
    is called through the loader's sampler (``sharded_loader``) as Lightning does for
    DistributedSampler."""

    def __init__(
        self,
        location: str | Path,
        decode: Callable[[dict[str, Any]], Any],
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        buffer_size: int = 1000,
        item_seeds: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        from tasks.common.runtime.data import training_seed

        self.index = ShardIndex.load(location)
        self.decode = decode
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed = training_seed() if seed is None else seed
        self.buffer_size, self.item_seeds, self.epoch = buffer_size, item_seeds, 0
        default_rank, default_world = distributed_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def place(self, rank: int, world_size: int) -> None:
        """Which part of each epoch this process reads; data modules call it from their
        ``*_dataloader`` hooks, where Lightning's ranks are known."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return samples_per_rank(self.index.num_samples, self.world_size, self.drop_last)

    def segments(self, worker: int = 0, num_workers: int = 1) -> list[Segment]:
        return plan_epoch(
            self.index.counts,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
            rank=self.rank,
            world_size=self.world_size,
            worker=worker,
            num_workers=num_workers,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
        )

    def raw(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        for shard, first, end in self.segments(worker, num_workers):
            yield from read_segment(self.index.urls[shard], self.index.offsets[shard], first, end)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        samples: Iterable[dict[str, Any]] = self.raw(worker, num_workers)
        if self.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
            samples = wds.shuffle(self.buffer_size, self.buffer_size, rng=rng)(samples)
        for sample in samples:
            yield self._decode(sample)

    def _decode(self, sample: dict[str, Any]) -> Any:
        """``decode`` with Python / NumPy / torch seeded from ``(seed, epoch, key)`` when
        ``item_seeds`` (augmentation is then the same after a resume, in any worker)."""
        if not self.item_seeds:
            return self.decode(sample)
        import numpy as np

        digest = hashlib.sha256(f"{self.seed}/{self.epoch}/{sample['__key__']}".encode()).digest()
        seed = int.from_bytes(digest[:4], "little")
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.decode(sample)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


class _EpochSampler(torch.utils.data.Sampler):
    """The infinite ``None`` sampler that a DataLoader uses for an IterableDataset, plus the
    ``set_epoch`` that Lightning calls at every epoch start; forwards it to the dataset."""

    def __init__(self, dataset: ShardedDataset) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[None]:
        while True:
            yield None


def sharded_loader(
    dataset: ShardedDataset,
    *,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose epoch follows Lightning's ``set_epoch`` calls.
    Workers are not persistent: each epoch's workers receive the dataset with its epoch set."""
    loader = DataLoader(
        dataset,
        batch_size=dataset.batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=dataset.drop_last,
        persistent_workers=False,
    )
    loader.batch_sampler.sampler = _EpochSampler(dataset)
    return loader
