"""Data utilities shared by the tasks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation fixed by ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so epoch e sees the same order whether the
    run was resumed from a checkpoint or not (a RandomSampler draws from the global RNG, whose
    state a checkpoint does not keep).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + 100_003 * self.epoch)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())
