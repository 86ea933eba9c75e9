"""Sharded streaming data: the epoch plan, and the sharded loaders against the folder loaders
(the same samples, as a multiset per epoch, across 2 simulated ranks x 2 workers)."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter

import pytest
import torch
from torchvision import datasets

from tasks.common.runtime.shards import (
    ShardedDataset,
    ShardIndex,
    _segments,
    plan_epoch,
    read_segment,
    shard_order,
    sharded_loader,
)
from tests.helpers import ROOT, compose_cfg, run_cfg, run_script

sys.path.insert(0, str(ROOT / "scripts"))
from make_imagenet_folder import make_imagenet_folder  # noqa: E402

RANKS, WORKERS = 2, 2


def _positions(counts, order, segments):
    """Segments -> stream positions of the shards concatenated in ``order``."""
    base = {}
    total = 0
    for s in order:
        base[s] = total
        total += counts[s]
    return [base[s] + i for s, first, end in segments for i in range(first, end)]


@pytest.mark.parametrize(
    ("counts", "batch", "drop_last"),
    [([7, 7, 7, 5, 3, 9], 4, False), ([7, 7, 7, 5, 3, 8], 4, False), ([5, 5, 5, 2], 3, True)],
)
def test_plan_gives_every_rank_the_same_count_and_every_sample_once(counts, batch, drop_last):
    total = sum(counts)
    for epoch in (0, 1):
        order = shard_order(len(counts), 0, epoch, True)
        per_rank, got = [], []
        for rank in range(RANKS):
            mine = []
            for worker in range(WORKERS):
                segs = plan_epoch(
                    counts,
                    seed=0,
                    epoch=epoch,
                    shuffle=True,
                    rank=rank,
                    world_size=RANKS,
                    worker=worker,
                    num_workers=WORKERS,
                    batch_size=batch,
                    drop_last=drop_last,
                )
                mine += _positions(counts, order, segs)
            per_rank.append(len(mine))
            got += mine
        assert len(set(per_rank)) == 1  # DDP: equal batch counts on every rank
        if drop_last:
            assert len(got) == total // RANKS * RANKS and len(set(got)) == len(got)
        else:  # padded as DistributedSampler pads: the first samples of the stream again
            padded = -(-total // RANKS) * RANKS
            assert sorted(got) == sorted(list(range(total)) + list(range(padded - total)))


def test_shard_order_is_a_function_of_seed_and_epoch():
    assert shard_order(50, 3, 1, True) == shard_order(50, 3, 1, True)
    assert shard_order(50, 3, 1, True) != shard_order(50, 3, 2, True)
    assert sorted(shard_order(50, 3, 1, True)) == list(range(50))
    assert shard_order(5, 3, 1, False) == [0, 1, 2, 3, 4]
    assert _segments([1, 0], [3, 4], 2, 9) == [(1, 2, 4), (0, 0, 3), (1, 0, 2)]  # wraps


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    from tasks.imagenet.shards import convert_image_folder

    root = make_imagenet_folder(
        tmp_path_factory.mktemp("folder"),
        num_classes=4,
        train_per_class=9,
        val_per_class=3,
        size=40,
    )
    out = tmp_path_factory.mktemp("shards")
    convert_image_folder(root, out, samples_per_shard=5)
    return root, out


def _key(image: torch.Tensor, label) -> tuple[int, str]:
    return int(label), hashlib.sha1(image.numpy().tobytes()).hexdigest()


def _sharded_epoch(location, decode, epoch, batch_size, shuffle, drop_last=False):
    """Every sample that 2 ranks x 2 workers read in ``epoch``, and each rank's batch count."""
    seen, batches = [], []
    for rank in range(RANKS):
        dataset = ShardedDataset(
            location,
            decode,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=7,
            buffer_size=6,
            rank=rank,
            world_size=RANKS,
        )
        loader = sharded_loader(dataset, num_workers=WORKERS)
        loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning calls
        n = 0
        for images, labels in loader:
            n += 1
            seen += [_key(x, y) for x, y in zip(images, labels, strict=True)]
        assert n == len(loader)
        batches.append(n)
    return seen, batches


def test_imagenet_shards_yield_the_folder_samples(imagenet):
    from tasks.imagenet.data import eval_transform
    from tasks.imagenet.shards import _Transformed

    root, out = imagenet
    transform = eval_transform(32)
    for split in ("train", "val"):
        folder = datasets.ImageFolder(str(root / split), transform=transform)
        want = Counter(_key(*folder[i]) for i in range(len(folder)))
        orders = []
        for epoch in (0, 1):
            seen, batches = _sharded_epoch(out / split, _Transformed(transform), epoch, 4, True)
            assert Counter(seen) == want, (split, epoch)
            assert batches[0] == batches[1]
            orders.append(seen)
        assert orders[0] != orders[1]  # reshuffled every epoch
        again, _ = _sharded_epoch(out / split, _Transformed(transform), 1, 4, True)
        assert again == orders[1]  # ... as a function of (seed, epoch): resuming is exact


def test_shards_are_plain_webdataset_tars(imagenet):
    wds = pytest.importorskip("webdataset")
    _, out = imagenet
    index = ShardIndex.load(out / "train")
    ours = [
        s
        for url, offs, n in zip(index.urls, index.offsets, index.counts, strict=True)
        for s in read_segment(url, offs, 0, n)
    ]
    theirs = list(wds.WebDataset(index.urls, shardshuffle=False, empty_check=False))
    assert len(ours) == len(theirs) == 36
    for a, b in zip(ours, theirs, strict=True):
        assert a["__key__"] == b["__key__"]
        assert {k: v for k, v in a.items() if not k.startswith("__")} == {
            k: v for k, v in b.items() if not k.startswith("__")
        }
    # reading from the middle of a shard (a worker's segment) gives the same samples
    middle = list(read_segment(index.urls[1], index.offsets[1], 2, 4))
    assert [s["__key__"] for s in middle] == [s["__key__"] for s in ours[7:9]]


def test_mad_shards_yield_the_folder_samples(tmp_path):
    from tasks.mad_ad.data import MadADDataModule
    from tasks.mad_ad.shards import convert_mad, decode_ad
    from tasks.mad_ad.synthetic import build_tiny_llama, write_synthetic_mad

    mad = tmp_path / "mad"
    write_synthetic_mad(mad, train_movies=2, test_movies=1, ads_per_movie=7, dim=16)
    llama = build_tiny_llama(tmp_path / "llama")
    files = dict(
        visual_features="CLIP_frames_features_5fps.h5",
        audio_features="openl3_audio_features_5hz.h5",
        annotations="mad-v2-ad-named.csv",
        root=str(mad),
        test_movies="test_movies.txt",
        tokens_per_modality=25,
        fps=5.0,
    )
    folder = MadADDataModule(tokenizer_path=str(llama), num_workers=0, **files)
    convert_mad(tmp_path / "shards", samples_per_shard=4, **files)

    def key(item):
        tensors = [item[k].numpy().tobytes() for k in ("visual", "audio", "padding_mask")]
        ids = tuple(item["input_ids"].tolist()) + tuple(item["labels"].tolist())
        return item["index"], item["movie"], hashlib.sha1(b"".join(tensors)).hexdigest(), ids

    def decode(sample):
        item = decode_ad(sample, folder.tokenizer, folder.dataset_kwargs["prompt"], 64)
        return key(item)

    for split in ("train", "val", "test"):
        want = Counter(key(item) for item in folder.dataset(split))
        assert want, split
        seen = []
        for rank in range(RANKS):
            dataset = ShardedDataset(
                tmp_path / "shards" / split,
                decode,
                batch_size=3,
                shuffle=split == "train",
                rank=rank,
                world_size=RANKS,
            )
            for worker in range(WORKERS):  # the two workers' streams, read in this process
                dataset.set_epoch(1)
                segments = dataset.segments(worker, WORKERS)
                seen += [
                    decode(s)
                    for shard, first, end in segments
                    for s in read_segment(
                        dataset.index.urls[shard], dataset.index.offsets[shard], first, end
                    )
                ]
        total = sum(want.values())
        padded = Counter(seen)
        assert len(seen) == -(-total // RANKS) * RANKS
        assert set(padded) == set(want) and sum((padded - want).values()) == len(seen) - total


def test_training_from_imagenet_shards(imagenet, tmp_path):
    """A tiny ViT trains from the shards; each epoch has the folder loader's step count."""
    root, out = imagenet
    overrides = [
        "experiment=imagenet_shards_tiny",
        f"data.shards={out}",
        f"data.root={root}",
        "logger=csv",
        "trainer.max_epochs=2",
        "mask=multilayer",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    record = run_cfg(compose_cfg(overrides, tmp_path))
    assert record["status"] == "ok"
    assert record["epochs"] == 2
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * (36 // 8)  # drop_last batches of 8 from 36 images
    assert 0.0 <= record["metrics"]["val/top1"] <= 100.0


@pytest.mark.slow
def test_make_shards_cli_then_train(tmp_path):
    folder = make_imagenet_folder(tmp_path / "inet", num_classes=4, train_per_class=8)
    proc = run_script(
        [
            "scripts/make_shards.py",
            "imagenet",
            "--root",
            str(folder),
            "--out",
            str(tmp_path / "shards"),
            "--samples-per-shard",
            "8",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train        32 samples in     4 shards" in proc.stdout
    proc = run_script(
        [
            "train.py",
            "experiment=imagenet_shards_tiny",
            f"data.shards={tmp_path / 'shards'}",
            "logger=csv",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_resume_mid_epoch_from_shards_is_exact(imagenet, tmp_path):
    """A run from the shards interrupted inside an epoch and resumed from last.ckpt ends with the
    metrics of an uninterrupted run: the epoch plan, the webdataset shuffle buffer (seeded by
    seed / epoch / rank / worker) and the per-sample augmentation seeds replay the epoch."""
    from tests.robustness.test_resume import assert_same_metrics, interrupted_then_resumed

    root, out = imagenet
    overrides = [
        "experiment=imagenet_shards_tiny",
        f"data.shards={out}",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=3",
        "data.num_workers=2",
    ]
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step=4 + 2)  # 4 steps an epoch
    assert_same_metrics(full, resumed)
