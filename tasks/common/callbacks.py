"""Lightning callbacks of the pipeline."""

from __future__ import annotations

import lightning as L
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
