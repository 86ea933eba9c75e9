"""The warm-up + cosine schedule is transformers' ``get_cosine_with_min_lr_schedule_with_warmup``:
per parameter group and at every step, the lr of MAE's ``adjust_learning_rate`` (also tested
per layer in tests/imagenet/test_lr_decay.py) and, after warm-up, of the hand-written schedule
it replaced."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.common.runtime.schedules import warmup_cosine


def replaced_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The hand-written schedule that was replaced: it warmed up one step ahead of MAE."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def mae_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """MAE's util/lr_sched.adjust_learning_rate in optimiser steps, over the peak lr."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lrs(total: int, warmup: int, min_ratio: float, base=(1.0, 0.25)) -> list[list[float]]:
    """Each group's lr at every step (groups with different peaks: layer-wise decay)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, base, strict=True)]
    optimizer = torch.optim.SGD(groups)
    scheduler = warmup_cosine(optimizer, total, warmup_steps=warmup, min_lr_ratio=min_ratio)
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    ("total", "warmup", "min_ratio"), [(60, 20, 0.002), (37, 0, 0.0), (9, 3, 0.1)]
)
def test_every_step_is_maes_and_after_warmup_the_replaced_schedules(total, warmup, min_ratio):
    for step, groups in enumerate(lrs(total, warmup, min_ratio)):
        for base, lr in zip((1.0, 0.25), groups, strict=True):
            assert lr == pytest.approx(base * mae_factor(step, total, warmup, min_ratio), rel=1e-12)
            if step >= warmup:
                replaced = replaced_factor(step, total, warmup, min_ratio)
                assert lr == pytest.approx(base * replaced, rel=1e-12)
            else:  # one step later than the replaced schedule: lr 0 at the first step, as MAE
                replaced = replaced_factor(step - 1, total, warmup, min_ratio) if step else 0.0
                assert lr == pytest.approx(base * replaced, rel=1e-12)


def test_warmup_ratio_and_floor():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=2.0)
    scheduler = warmup_cosine(optimizer, 100, warmup_ratio=0.1, min_lr_ratio=0.05)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == 0.0 and seen[5] == pytest.approx(1.0) and seen[10] == pytest.approx(2.0)
    last = 2.0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))  # step 99 of 10 + 90
    assert min(seen[10:]) > 2.0 * 0.05 and seen[-1] == pytest.approx(last, rel=1e-12)
