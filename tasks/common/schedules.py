"""Learning-rate schedules built per optimizer step (Lightning ``interval: step``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up then half-cosine decay to ``min_lr_ratio`` x the base lr."""
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, num_training_steps - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return LambdaLR(optimizer, factor)


def warmup_linear(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up then linear decay to zero (BERT / SwinBERT)."""
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

    return LambdaLR(optimizer, factor)
