"""Segment accuracy against the official formula (LAVISH AVE/main_trans.py ``eval``):
``(output.argmax(-1) == rearrange(gt, 'b t c -> (b t) c').argmax(-1)).sum() / (B * T)``,
accumulated over batches."""

from __future__ import annotations

import pytest
import torch

from tasks.ave.metrics import SegmentAccuracy


def official_accuracy(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    total_acc, total_num = 0, 0
    for output, gt in batches:
        flat = output.reshape(-1, output.shape[-1])
        total_acc += (flat.argmax(dim=-1) == gt.reshape(-1, gt.shape[-1]).argmax(dim=-1)).sum()
        total_num += flat.size(0)
    return float(total_acc / total_num)


def _batch(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(b, 10, 29, generator=gen)
    classes = torch.randint(0, 29, (b, 10), generator=gen)
    # make about half the segments right
    right = torch.rand(b, 10, generator=gen) < 0.5
    logits[right] = logits[right] + 10 * torch.nn.functional.one_hot(classes[right], 29)
    return logits, torch.nn.functional.one_hot(classes, 29).float()


def test_segment_accuracy_equals_the_official_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(b, gen) for b in (4, 3, 7)]  # unequal batches: averaged over segments
    metric = SegmentAccuracy()
    for logits, labels in batches:
        metric.update(logits, labels)
    expected = official_accuracy(batches)
    assert 0.3 < expected < 0.8
    assert float(metric.compute()) == pytest.approx(expected)


def test_all_background_prediction() -> None:
    labels = torch.zeros(2, 10, 29)
    labels[..., 28] = 1
    labels[0, 3:6, 28], labels[0, 3:6, 5] = 0, 1
    logits = torch.zeros(2, 10, 29)
    logits[..., 28] = 1  # always background: right on 17 of the 20 segments
    metric = SegmentAccuracy()
    metric.update(logits, labels)
    assert float(metric.compute()) == pytest.approx(17 / 20)
