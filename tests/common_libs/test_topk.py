"""Top-k accuracy through torchmetrics: the same values as the hand-written top-k it replaced
(kept here as the reference) and as hand-counted examples."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy

from tasks.imagenet.module import topk_accuracy


def reference_topk(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[float]:
    """The replaced hand-written version: a hit when the target is among the k largest."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == targets[:, None]
    return [float(hits[:, : min(k, logits.shape[-1])].any(-1).float().mean() * 100) for k in ks]


@pytest.mark.parametrize("num_classes", [3, 5, 10, 1000])
def test_topk_equals_the_hand_written_version(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(257, num_classes, generator=generator)  # no ties
    targets = torch.randint(0, num_classes, (257,), generator=generator)
    got = [float(v) for v in topk_accuracy(logits, targets)]
    assert got == pytest.approx(reference_topk(logits, targets), abs=1e-4)
    for k, value in zip((1, 5), got, strict=True):  # the library called directly
        k = min(k, num_classes)
        direct = multiclass_accuracy(logits, targets, num_classes, average="micro", top_k=k)
        assert value == pytest.approx(float(direct) * 100, abs=1e-4)


def test_topk_hand_counted():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.3, 0.2, 0.5, 0.4],  # target 1: rank 1
            [0.9, 0.1, 0.0, 0.3, 0.2, 0.5, 0.4],  # target 5: rank 2
            [0.9, 0.1, 0.0, 0.3, 0.2, 0.5, 0.4],  # target 2: rank 7
            [0.9, 0.1, 0.0, 0.3, 0.2, 0.5, 0.4],  # target 1: rank 6
        ]
    )
    top1, top5 = topk_accuracy(logits, torch.tensor([1, 5, 2, 1]))
    assert float(top1) == pytest.approx(25.0) and float(top5) == pytest.approx(50.0)
    (top3,) = topk_accuracy(logits[:, :3], torch.tensor([1, 0, 2, 1]), ks=(5,))  # k capped at 3
    assert float(top3) == pytest.approx(100.0)
