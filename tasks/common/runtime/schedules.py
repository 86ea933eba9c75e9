"""Learning-rate schedules built per optimizer step (Lightning ``interval: step``)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps`` (else ``warmup_ratio`` x the steps), then
    half-cosine decay to ``min_lr_ratio`` x each group's peak lr: transformers'
    ``get_cosine_with_min_lr_schedule_with_warmup``, MAE's per-step ``adjust_learning_rate``."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup, num_training_steps, min_lr_rate=min_lr_ratio
    )


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
