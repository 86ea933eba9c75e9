"""LightningModule of the demo task: cross-entropy, accuracy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tasks.common.runtime.module import TaskModule
from tasks.demo.data import DemoBatch


class DemoModule(TaskModule):
    def _step(self, batch: DemoBatch, split: str) -> Tensor:
        logits = self.net(batch.visual, batch.audio, batch.visual_pad, batch.audio_pad)
        loss = F.cross_entropy(logits, batch.label)
        aux = self.aux_loss()
        if aux is not None:
            self.log(f"{split}/aux_loss", aux, batch_size=len(batch.label))
            loss = loss + aux
        acc = (logits.argmax(-1) == batch.label).float().mean()
        on_step = split == "train"
        self.log(
            f"{split}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=len(batch.label),
            sync_dist=not on_step,
        )
        self.log(
            f"{split}/acc",
            acc,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(batch.label),
            sync_dist=not on_step,
        )
        return loss

    def training_step(self, batch: DemoBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: DemoBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: DemoBatch, batch_idx: int) -> None:
        self._step(batch, "test")
