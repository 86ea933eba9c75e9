"""A Lightning callback that plots a sample's STAMP mask during validation (Figs. S6 / S8 / S9).

Add it to a run with ``callbacks=mask_plot`` (configs/callbacks/mask_plot.yaml: the default
callbacks plus this one). At the first validation batch of every ``every_n_epochs``-th epoch the
attention modules are recorded (``stamp.record_attention``, which routes them through the eager
path for that batch only); the mask of ``sample`` at the ``layer``-th masked attention call is
saved as ``<dirpath>/mask_epoch<NNN>.png`` and logged to every W&B logger as an image.
Runs without a generated mask (mask=none, sparse, the controls) log nothing.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lightning as L

from stamp import record_attention

log = logging.getLogger(__name__)


class MaskHeatmapCallback(L.Callback):
    def __init__(
        self,
        dirpath: str | None = None,
        every_n_epochs: int = 1,
        sample: int = 0,
        layer: int = 0,
        boundaries: list[int] | None = None,
        log_key: str = "val/mask",
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.sample, self.layer = sample, layer
        self.boundaries = list(boundaries) if boundaries else None
        self.log_key = log_key
        self._recording: AbstractContextManager | None = None
        self._records: list[dict] = []
        self.saved: list[Path] = []

    @staticmethod
    def _epoch(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """The epoch of the weights shown: after fit, ``current_epoch`` is the epoch count, so the
        re-validation of the best checkpoint wrote an extra ``mask_epoch001.png`` after one epoch;
        the module knows the loaded checkpoint's epoch (``weights_epoch``)."""
        return int(getattr(pl_module, "weights_epoch", trainer.current_epoch))

    def _due(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> bool:
        return (
            batch_idx == 0
            and not trainer.sanity_checking
            and self._epoch(trainer, pl_module) % self.every_n_epochs == 0
        )

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._recording is None and self._due(trainer, pl_module, batch_idx):
            self._recording = record_attention(pl_module)
            self._records = self._recording.__enter__()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._recording is None:
            return
        records = self._stop()
        if trainer.is_global_zero:
            self._plot(trainer, pl_module, records)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()  # never leave the model recording (e.g. an empty validation loader)

    def _stop(self) -> list[dict]:
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording = None
        records, self._records = self._records, []
        return records

    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule, records: list[dict]) -> None:
        from tasks.common.reporting.plots import first_calls, modality_boundaries, plot_run_mask

        out = Path(self.dirpath or Path(trainer.default_root_dir) / "plots")
        boundaries = self.boundaries or modality_boundaries(pl_module)
        epoch = self._epoch(trainer, pl_module)
        path = plot_run_mask(
            first_calls(records),
            out / f"mask_epoch{epoch:03d}.png",
            self.sample,
            self.layer,
            boundaries,
            f"epoch {epoch}",
        )
        if path is None:
            return
        self.saved.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key=self.log_key, images=[str(path)], step=trainer.global_step)
