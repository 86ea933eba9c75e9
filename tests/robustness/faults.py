"""Fault-injection callbacks for the robustness tests (instantiated by Hydra in subprocesses)."""

from __future__ import annotations

import time

import lightning as L


class SlowSteps(L.Callback):
    """Sleep after every training batch, so that a kill -9 lands in the middle of an epoch."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        time.sleep(self.seconds)
