"""Segment-level accuracy on AVE, as the official evaluation computes it (LAVISH
``AVE/main_trans.py`` ``eval``; MA-AVT reports the same number): every one-second segment of
every video is one sample, the prediction is the argmax over the 29 classes (28 events +
background), the target the argmax of the labels.h5 row, and accuracy is correct / segments.

That is torchmetrics' micro-averaged multiclass accuracy over the flattened segments;
tests/ave/test_metrics.py checks the two against the official formula.
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from tasks.ave.data import NUM_CLASSES


def segment_targets(labels: Tensor) -> Tensor:
    """(B, T, 29) one-hot labels -> (B * T,) class indices (argmax, as the official eval)."""
    return labels.argmax(dim=-1).reshape(-1)


def segment_predictions(logits: Tensor) -> Tensor:
    """(B, T, 29) logits -> (B * T,) predicted classes."""
    return logits.argmax(dim=-1).reshape(-1)


class SegmentAccuracy(MulticlassAccuracy):
    """Accuracy over all segments (micro average), in [0, 1]; ``update(logits, labels)`` with
    (B, T, 29) tensors, or (N,) predicted / target class indices."""

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs) -> None:
        super().__init__(num_classes=num_classes, average="micro", **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.ndim == 3:
            preds = segment_predictions(preds)
        if target.ndim == 3:
            target = segment_targets(target)
        super().update(preds.reshape(-1), target.reshape(-1))
