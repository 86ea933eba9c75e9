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


class KillAtJob(L.Callback):
    """SIGKILL the whole process when job ``job`` of a multirun starts training: a sweep
    interrupted as by the OOM killer or a node failure."""

    def __init__(self, job: int) -> None:
        self.job = job

    def on_fit_start(self, trainer, pl_module) -> None:
        import os
        import signal

        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().job.num == self.job:
            os.kill(os.getpid(), signal.SIGKILL)


class WaitForFile(L.Callback):
    """At the start of training write ``<path>.waiting``, then wait until ``path`` exists (at
    most ``timeout`` seconds): holds a run in the middle of its life while a test does something
    beside it."""

    def __init__(self, path: str, timeout: float = 300.0) -> None:
        self.path, self.timeout = path, timeout

    def on_train_start(self, trainer, pl_module) -> None:
        from pathlib import Path

        Path(f"{self.path}.waiting").touch()
        deadline = time.time() + self.timeout
        while not Path(self.path).exists() and time.time() < deadline:
            time.sleep(0.1)
