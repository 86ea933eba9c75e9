"""Data utilities shared by the tasks: the epoch-seeded sampler that makes resuming exact, and
the error every data check raises."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


class DataValidationError(ValueError):
    """Bad input data found at set-up: names the file, the row (if any) and the problem."""

    def __init__(self, file: str | Path, problem: str, row: int | str | None = None) -> None:
        where = f"{file}" if row is None else f"{file}, row {row}"
        super().__init__(f"{where}: {problem}")
        self.file, self.row, self.problem = str(file), row, problem


def check_finite(array: np.ndarray, file: str | Path, what: str = "features") -> None:
    """NaN / Inf in a feature array -> DataValidationError naming the first bad row."""
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(array).any() else "Inf"
        raise DataValidationError(file, f"{what} contain {kind} values (first at row {row})", row)


def training_seed() -> int:
    """The run's seed as Lightning's ``seed_everything`` exported it (0 when unset)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def current_epoch(datamodule: Any) -> int:
    """The epoch of the trainer a datamodule is attached to (0 outside a trainer); after a
    resume, the restored epoch."""
    trainer = getattr(datamodule, "trainer", None)
    return int(trainer.current_epoch) if trainer is not None else 0


class EpochShuffleSampler(DistributedSampler):
    """Shuffles with a permutation fixed by ``(seed, epoch)``, and shards it across DDP ranks.

    Lightning calls ``set_epoch`` before every epoch, so epoch e sees the same order whether the
    run was resumed from a checkpoint or not (a RandomSampler draws from the global RNG, whose
    state a checkpoint does not keep). Being a ``DistributedSampler``, Lightning does not wrap it
    under DDP (a wrapped sampler would never see ``set_epoch``); the ranks are read from the
    process group when iterating, each rank takes every world-size-th index of the (padded)
    permutation, as ``DistributedSampler`` does.

    ``epoch`` is the epoch the loader is built for (``current_epoch(datamodule)``): a resumed
    run's loader workers fetch their first indices when Lightning creates the iterator, before it
    calls ``set_epoch``.

    ``item_seeds=True`` yields ``(index, seed)`` pairs with a seed fixed by
    ``(seed, epoch, index)``; wrap the dataset in ``SeededItems`` so that data-side randomness
    (augmentation, masking, label sampling) is also the same after a resume, in any worker.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int | None = None,
        shuffle: bool = True,
        item_seeds: bool = False,
        epoch: int = 0,
    ) -> None:  # no super().__init__: it needs the process group, which exists only later
        self.total, self.seed = num_samples, training_seed() if seed is None else seed
        self.shuffle, self.item_seeds, self.epoch, self.drop_last = (
            shuffle,
            item_seeds,
            epoch,
            False,
        )

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @property
    def num_replicas(self) -> int:
        return self._world()[1]

    @property
    def rank(self) -> int:
        return self._world()[0]

    @property
    def num_samples(self) -> int:
        return math.ceil(self.total / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Any]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + 100_003 * self.epoch)
            order = torch.randperm(self.total, generator=gen).tolist()
        else:
            order = list(range(self.total))
        rank, world = self._world()
        if world > 1:
            order += order[: world * self.num_samples - len(order)]
            order = order[rank::world]
        if not self.item_seeds:
            return iter(order)
        base = (self.seed * 1_000_003 + self.epoch * 7_919) % (2**31)
        return iter((i, (base + 104_729 * i) % (2**32)) for i in order)


class SeededItems(Dataset):
    """A dataset whose items are drawn with Python, NumPy and torch seeded from the sampler's
    ``(index, seed)`` pairs; the caller's RNG states are restored afterwards. Plain integer
    indices (evaluation loaders) pass straight through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # rows, items, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
