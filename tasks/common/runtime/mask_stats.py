"""Mask diagnostics at every validation: is each STAMP layer doing anything?

Records ``stamp.diagnostics.MaskStatistics`` over the first ``num_batches`` validation batches,
adds the generator gradient norms of the last training step, logs them to every logger as
``mask/<layer>/<stat>`` (W&B curves) and keeps them on the LightningModule as ``mask_stats``;
the pipeline writes the last ones into ``results.json`` under ``mask_stats``.

Where a validation batch carries ``key_relevance`` (per-key category codes) and the datamodule
says what they mean (``key_relevance_categories``, a ``stamp.diagnostics.KeyCategories``), the
statistics include where the mask puts its weight: M and the attention with and without M on
relevant vs irrelevant keys (``M_relevant``, ``attn_relevant_noM``, ...).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from stamp.diagnostics import KEY_RELEVANCE, KeyCategories, MaskStatistics, generator_grad_norms


def batch_key_relevance(batch: Any) -> Tensor | None:
    """The ``key_relevance`` codes a batch carries (a dict entry or an attribute), or None."""
    if isinstance(batch, dict):
        return batch.get(KEY_RELEVANCE)
    return getattr(batch, KEY_RELEVANCE, None)


def key_categories(datamodule: Any) -> KeyCategories | None:
    """What a datamodule's ``key_relevance`` codes mean (None: its batches carry none)."""
    return getattr(datamodule, "key_relevance_categories", None)


class MaskDiagnostics(L.Callback):
    def __init__(self, num_batches: int = 2) -> None:
        if num_batches < 1:
            raise ValueError(
                f"callbacks.mask_diagnostics.num_batches must be >= 1, got {num_batches}"
            )
        self.num_batches = num_batches
        self.grad_norms: dict[str, float] = {}
        self._stats: MaskStatistics | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grad_norms = generator_grad_norms(pl_module)

    def _recording(self, trainer: L.Trainer) -> bool:
        return self._stats is not None and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._stats = MaskStatistics(pl_module)
        if not self._stats._attention:  # a model without STAMP attention modules
            self._stats = None
            return
        self._stats.start()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not self._recording(trainer) or not self._stats.active:
            return
        codes = batch_key_relevance(batch)
        categories = key_categories(getattr(trainer, "datamodule", None))
        if codes is None or categories is None:  # the task does not label its keys
            codes = categories = None
        self._stats.set_key_relevance(codes, categories)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if self._recording(trainer) and batch_idx + 1 >= self.num_batches:
            self._stats.stop()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._recording(trainer):
            return
        self._stats.stop()
        summary = self._stats.summary(self.grad_norms)
        self._stats = None
        # names relative to the task's network (the LightningModule holds it as ``net``)
        summary = {name.removeprefix("net."): row for name, row in summary.items()}
        pl_module.mask_stats = summary
        if not summary or not trainer.is_global_zero:
            return
        flat = {
            f"mask/{layer}/{key}": value
            for layer, row in summary.items()
            for key, value in row.items()
            if value is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._stats is not None:
            self._stats.stop()
            self._stats = None
