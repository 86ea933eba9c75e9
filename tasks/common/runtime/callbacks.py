"""Lightning callbacks of the pipeline."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything


class EpochSeed(L.Callback):
    """Reseed Python, NumPy and torch at every epoch start and before every training batch with
    a seed derived from ``(seed, epoch, batch, rank)``.

    Lightning checkpoints do not store RNG states, and how much of the global RNG is consumed
    between an epoch start and its first batch differs between a fresh and a resumed run (data
    loader iterators draw from it). Reseeding per batch makes the dropout of every step the same
    whether the run was resumed or not. Shuffling goes through ``EpochShuffleSampler``.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def _reseed(self, trainer: L.Trainer, batch_idx: int) -> None:
        seed = self.seed + 1_000_003 * trainer.current_epoch + 7919 * (batch_idx + 1)
        seed_everything(seed + trainer.global_rank, workers=True, verbose=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run: Lightning builds the training loader's iterator before it restores the
        epoch (``estimated_stepping_batches`` in ``configure_optimizers`` does), and loader
        workers fetch their first indices at once, from the sampler's epoch 0. Rebuild the
        iterator for the restored epoch."""
        loop = trainer.fit_loop
        fetcher = getattr(loop, "_data_fetcher", None)
        loaders = getattr(loop, "_combined_loader", None)
        if trainer.current_epoch == 0 or fetcher is None or loaders is None:
            return
        for loader in loaders.flattened:
            batch_sampler = getattr(loader, "batch_sampler", None)
            for sampler in (
                getattr(loader, "sampler", None),
                getattr(batch_sampler, "sampler", None),
            ):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(trainer.current_epoch)
        iter(fetcher)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reseed(trainer, 0)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._reseed(trainer, batch_idx)


class SimulatedInterruption(RuntimeError):
    pass


class InterruptAtEpoch(L.Callback):
    """Raise when epoch ``epoch`` starts (after the previous epoch's checkpoint was written);
    used to test that ``ckpt_path=last`` resumes to the same result."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedInterruption(
                f"simulated interruption at the start of epoch {self.epoch}"
            )


class ModelConfigInCheckpoint(L.Callback):
    """Store the run's resolved model config in every checkpoint (key ``stamp_model_config``),
    so that eval.py and resuming can compare it with the requested one; and ``run_config``
    (key ``stamp_run_config``: group choices, data and attention settings), so that eval.py
    ckpt_path=<file> rebuilds the model from the checkpoint alone."""

    def __init__(self, model_config: dict, run_config: dict | None = None) -> None:
        self.model_config = model_config
        self.run_config = run_config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        from tasks.common.runtime.checkpoints import CONFIG_KEY

        checkpoint[CONFIG_KEY] = self.model_config
        if self.run_config is not None:
            from tasks.common.runtime.checkpoints import RUN_KEY

            checkpoint[RUN_KEY] = self.run_config


class FailAtStep(L.Callback):
    """Raise before training batch ``step`` (global batch count) of a run: fault injection for the
    resume tests (an interruption in the middle of an epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        seen = trainer.fit_loop.epoch_loop.total_batch_idx
        if seen >= self.step:
            raise SimulatedInterruption(f"simulated interruption at training batch {seen}")


class RunDiverged(RuntimeError):
    """A loss or metric became NaN / inf: the run is recorded as ``status: diverged``.

    ``step`` is the global training step (optimizer steps done), ``name`` / ``value`` the
    non-finite quantity and ``last_finite`` the last finite value of every watched quantity.
    """

    def __init__(self, step: int, name: str, value: float, last_finite: dict[str, float]):
        self.step, self.name, self.value = step, name, value
        self.last_finite = dict(last_finite)
        last = ", ".join(f"{k}={v:.6g}" for k, v in sorted(last_finite.items())) or "none"
        super().__init__(
            f"the run diverged at step {step}: {name} = {value} (last finite values: {last}). "
            "Lower the learning rate (module.optimizer.lr) or check the data."
        )


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


class StopOnDivergence(L.Callback):
    """End the run at the step where the training loss, a logged loss or the monitored metric
    is NaN or infinite (Lightning would train on, and the run would end ``ok`` with NaN
    metrics): raises ``RunDiverged`` with the step and the last finite values. Other metrics
    may be undefined (NaN) on a healthy run and are not watched."""

    def __init__(self, monitor: str | None = None) -> None:
        self.monitor = monitor
        self.last_finite: dict[str, float] = {}

    def _watched(self, name: str) -> bool:
        return name == self.monitor or "loss" in name

    def _check(self, trainer: L.Trainer, values: dict[str, Any]) -> None:
        for name, raw in values.items():
            value = _scalar(raw) if self._watched(name) else None
            if value is None:
                continue
            if not math.isfinite(value):
                raise RunDiverged(trainer.global_step, name, value, self.last_finite)
            self.last_finite[name] = value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # one value a step (one device sync); the logged metrics at epoch / validation ends
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._check(trainer, {"train/step_loss": loss})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, dict(trainer.callback_metrics))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, dict(trainer.callback_metrics))
