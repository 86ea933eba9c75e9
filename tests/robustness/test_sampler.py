"""The epoch-seeded sampler: a permutation fixed by (seed, epoch), sharded across DDP ranks as
DistributedSampler does, with per-item seeds that change with the epoch; SeededItems makes an
item's randomness a function of that seed and leaves the caller's RNGs untouched."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from tasks.common.runtime.data import EpochShuffleSampler, SeededItems


def _indices(sampler) -> list[int]:
    return [i if isinstance(i, int) else i[0] for i in sampler]


def test_permutation_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(5)
    assert list(a) != list(b)
    gen = torch.Generator().manual_seed(3 + 100_003 * 4)  # the documented formula
    assert list(a) == torch.randperm(50, generator=gen).tolist()


def test_ranks_partition_the_padded_permutation(monkeypatch):
    sampler = EpochShuffleSampler(10, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(EpochShuffleSampler, "_world", lambda self, r=rank: (r, 3))
        assert len(sampler) == 4 and sampler.num_replicas == 3
        shards.append(list(sampler))
    padded = full + full[:2]  # 12 = 3 ranks x 4, as DistributedSampler pads
    assert shards == [padded[0::3], padded[1::3], padded[2::3]]
    assert isinstance(sampler, DistributedSampler)  # Lightning does not wrap it under DDP


def test_item_seeds_change_with_the_epoch_and_fix_item_randomness():
    sampler = EpochShuffleSampler(6, seed=0, item_seeds=True)
    first = dict(sampler)
    sampler.set_epoch(1)
    second = dict(sampler)
    assert set(first) == set(second) == set(range(6))
    assert all(first[i] != second[i] for i in range(6))

    class Noisy(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return (random.random(), float(np.random.rand()), float(torch.rand(1)))

    data = SeededItems(Noisy())
    state = torch.get_rng_state()
    key = (2, first[2])
    assert data[key] == data[key]  # same (index, seed) -> same draws
    assert data[(2, second[2])] != data[key]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert data[3] != data[3]  # plain indices (evaluation) pass straight through
    plain = EpochShuffleSampler(6, seed=0, item_seeds=False)
    plain.set_epoch(1)
    assert _indices(sampler) == list(plain)  # the same order with or without item seeds
