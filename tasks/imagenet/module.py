"""LightningModule of ImageNet fine-tuning: MAE's loss, optimiser groups and schedule.

* Loss: soft-target cross-entropy on mixup / cutmix targets (label smoothing folded into them by
  timm's ``Mixup``), plain label-smoothing cross-entropy when mixing is off; cross-entropy at
  evaluation (MAE's ``engine_finetune.evaluate``). Metrics: top-1 / top-5 accuracy (%).
* lr: ``blr * effective batch / 256`` with effective batch = batch size x gradient accumulation x
  devices (MAE's ``main_finetune.py``), unless ``lr`` is given.
* AdamW groups with layer-wise lr decay (``tasks.imagenet.lr_decay``); the schedule (a
  ``tasks.common.runtime.schedules.warmup_cosine`` partial) gets ``warmup_epochs`` turned into
  optimiser steps and the floor ``min_lr / lr``, which reproduces MAE's per-step
  ``adjust_learning_rate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

from tasks.common.runtime.module import TaskModule
from tasks.imagenet.lr_decay import layer_decay_param_groups

log = logging.getLogger(__name__)


def topk_accuracy(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Top-k accuracies in percent of ``logits`` (batch, classes) for ``targets`` (batch,), one
    per k in ``ks`` (capped at the class count): torchmetrics' micro-averaged accuracy."""
    n = logits.shape[-1]
    return [multiclass_accuracy(logits, targets, n, "micro", min(k, n)) * 100 for k in ks]


class ImageNetModule(TaskModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "step",
        *,
        blr: float = 5e-4,
        lr: float | None = None,
        layer_decay: float = 0.65,
        mask_layer_decay: bool = True,
        warmup_epochs: float = 5,
        min_lr: float = 1e-6,
        smoothing: float = 0.1,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.blr, self.lr = blr, lr
        self.layer_decay, self.mask_layer_decay = layer_decay, mask_layer_decay
        self.warmup_epochs, self.min_lr = warmup_epochs, min_lr
        self.smoothing = smoothing

    def learning_rate(self) -> float:
        """Absolute peak lr: ``lr`` if set, else ``blr * effective batch / 256``."""
        if self.lr is not None:
            return self.lr
        trainer = self.trainer
        eff_batch = (
            trainer.datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        )
        lr = self.blr * eff_batch / 256
        log.info(
            "effective batch %d: lr = blr %.2e x %d / 256 = %.2e",
            eff_batch,
            self.blr,
            eff_batch,
            lr,
        )
        return lr

    def param_groups(self) -> list[dict]:
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        return layer_decay_param_groups(
            self.net,
            lr=self.learning_rate(),
            weight_decay=weight_decay,
            layer_decay=self.layer_decay,
            no_weight_decay=self.net.no_weight_decay(),
            mask_layer_decay=self.mask_layer_decay,
        )

    def configure_optimizers(self):
        lr = self.learning_rate()
        optimizer = self.optimizer_factory(params=self.param_groups(), lr=lr)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if (self.trainer.max_epochs or 0) > 0 else 1
        scheduler = self.scheduler_factory(
            optimizer=optimizer,
            num_training_steps=total,
            warmup_steps=round(self.warmup_epochs * total / epochs),
            min_lr_ratio=self.min_lr / lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self.net(images)
        if targets.dim() == 2:  # mixup / cutmix soft targets
            loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, targets, label_smoothing=self.smoothing)
        aux = self.aux_loss()
        if aux is not None:
            loss = loss + aux
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images)
        )
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        images, targets = batch
        logits = self.net(images)
        top1, top5 = topk_accuracy(logits, targets)
        metrics = {"loss": F.cross_entropy(logits, targets), "top1": top1, "top5": top5}
        for name, value in metrics.items():
            self.log(
                f"{split}/{name}",
                value,
                prog_bar=name == "top1",
                on_epoch=True,
                batch_size=len(images),
                sync_dist=True,
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")
