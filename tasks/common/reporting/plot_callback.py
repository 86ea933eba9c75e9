"""A Lightning callback that plots a sample's STAMP mask during validation (Figs. S6 / S8 / S9).

On in every run (``callbacks.mask_plot`` in configs/callbacks/default.yaml; ``callbacks.
mask_plot=null`` turns it off). At the first validation batch of every ``every_n_epochs``-th epoch
the attention modules are recorded (``stamp.record_attention``, which routes them through the
eager path for that batch only); the mask of ``sample`` at the ``layer``-th masked attention call
is saved as ``<dirpath>/mask_epoch<NNN>.png`` and logged to every W&B logger as an image:
``style=image`` (default) draws it pixel by pixel in a few ms (``render_mask_image``: values,
padding, modality lines, colour scale), ``style=figure`` as a matplotlib figure with axes (about
half a second a validation; ``plot_mask_heatmap``). Runs
without a generated mask (mask=none, sparse, the controls: no ``MaskGenerator`` in the model)
record and plot nothing.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lightning as L

from stamp import MaskGenerator, record_attention

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
        style: str = "image",
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if style not in ("image", "figure"):
            raise ValueError(f"callbacks.mask_plot.style must be image or figure, got {style!r}")
        self.style = style
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.sample, self.layer = sample, layer
        self.boundaries = list(boundaries) if boundaries else None
        self.log_key = log_key
        self._recording: AbstractContextManager | None = None
        self._records: list[dict] = []
        self.saved: list[Path] = []
        self.active = True  # False for a model without a mask generator (set at setup)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.active = any(isinstance(m, MaskGenerator) for m in pl_module.modules())

    @staticmethod
    def _epoch(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """The epoch of the weights shown: after fit, ``current_epoch`` is the epoch count, so the
        re-validation of the best checkpoint wrote an extra ``mask_epoch001.png`` after one epoch;
        the module knows the loaded checkpoint's epoch (``weights_epoch``)."""
        return int(getattr(pl_module, "weights_epoch", trainer.current_epoch))

    def _due(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> bool:
        return (
            self.active
            and batch_idx == 0
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
        if self._recording is not None or not self._due(trainer, pl_module, batch_idx):
            return
        drawn = self._path(trainer, pl_module)
        if drawn in self.saved:
            # the best checkpoint's re-validation shows the weights of a validation already
            # drawn: log that heatmap again (W&B keeps one per validation), skip recording
            if trainer.is_global_zero:
                self._log(trainer, drawn)
            return
        self._recording = record_attention(pl_module, keep=self._keep)
        self._records = self._recording.__enter__()

    def _keep(self, rec: dict) -> dict:
        """The masks and padding up to the plotted sample, on the CPU: not every layer's
        probabilities of the whole batch."""
        i = slice(0, self.sample + 1)
        mask, pad = rec.get("mask"), rec.get("key_padding_mask")
        return {
            "mask": None if mask is None else mask[i].cpu(),
            "key_padding_mask": None if pad is None else pad[i].cpu(),
        }

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

    def _path(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "plots")
        return out / f"mask_epoch{self._epoch(trainer, pl_module):03d}.png"

    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule, records: list[dict]) -> None:
        from tasks.common.reporting.plots import first_calls, modality_boundaries, plot_run_mask

        boundaries = self.boundaries or modality_boundaries(pl_module)
        epoch = self._epoch(trainer, pl_module)
        path = plot_run_mask(
            first_calls(records),
            self._path(trainer, pl_module),
            self.sample,
            self.layer,
            boundaries,
            f"epoch {epoch}",
            style=self.style,
        )
        if path is None:
            return
        self.saved.append(path)
        self._log(trainer, path)

    def _log(self, trainer: L.Trainer, path: Path) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(key=self.log_key, images=[str(path)], step=trainer.global_step)
