"""LightningModule of the AVE task (MA-AVT / LAVISH / LAVISH* / MBT, MA-AVT supplement Tables
7-9): the model's own losses in training (``model.losses``: what the official script
optimises, every entry logged), segment-level accuracy in validation / test
(``tasks.ave.metrics``), the parameters the official optimiser updates, and an optional
throughput measurement (Table 9) at the start of the test split."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig
from tasks.ave.metrics import SegmentAccuracy
from tasks.common.runtime.module import TaskModule

log = logging.getLogger(__name__)


def build_net(
    mask: MaskConfig | None = None, attention: AttentionConfig | None = None, **model: Any
) -> nn.Module:
    """The ``model`` node of the config as ``tasks.ave.models.build_model`` takes it (the
    pipeline instantiates ``cfg.model`` with ``mask=`` / ``attention=`` keyword arguments)."""
    from tasks.ave.models import build_model

    node = OmegaConf.create(
        {
            k: (OmegaConf.to_container(v) if isinstance(v, DictConfig) else v)
            for k, v in model.items()
        }
    )
    return build_model(node, mask_cfg=mask, attention_cfg=attention)


class AVEModule(TaskModule):
    """Trains one AVE model and scores segment accuracy (``val/acc``, ``test/acc`` in %).

    Args:
        net: an ``AVEModel`` (``tasks.ave.models``): ``net(audio, frames).logits`` (B, T, 29),
            ``net.losses(out, labels)`` -> {"total", ...}, ``net.trainable_parameters()``.
        optimizer: partial optimiser (official: Adam, weight decay 0).
        scheduler: partial scheduler or None (the official run's lr is constant, see docs/ave.md).
        throughput_batch: when > 0, at test start time ``throughput_steps`` forward passes of a
            batch of that many videos (inputs of the official shapes) and log
            ``test/samples_per_s`` (Table 9; compare runs on one device only).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        throughput_batch: int = 0,
        throughput_steps: int = 10,
        throughput_warmup: int = 3,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.val_acc = SegmentAccuracy()
        self.test_acc = SegmentAccuracy()
        self.throughput_batch = throughput_batch
        self.throughput_steps, self.throughput_warmup = throughput_steps, throughput_warmup

    def param_groups(self) -> list[nn.Parameter]:
        """The parameters the official optimiser updates (MA-AVT's loop also trains the frozen
        ViT's ``cls_token``); the net decides."""
        return list(self.net.trainable_parameters())

    def forward(self, batch: dict[str, Tensor]) -> Any:
        return self.net(batch["audio"], batch["frames"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        losses = self.net.losses(out, batch["labels"])
        loss = losses["total"]
        aux = self.aux_loss()
        if aux is not None:
            loss = loss + aux
            self.log("train/aux_loss", aux.detach(), batch_size=len(batch["labels"]))
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=len(batch["labels"]))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, metric: SegmentAccuracy) -> None:
        out = self(batch)
        losses = self.net.losses(out, batch["labels"])
        metric.update(out.logits.detach(), batch["labels"])
        size = len(batch["labels"])
        self.log(f"{split}/loss", losses["total"].detach(), batch_size=size, sync_dist=True)

    def _log_accuracy(self, split: str, metric: SegmentAccuracy) -> None:
        """Accuracy in % (as the tables), over every segment of the split (all ranks)."""
        self.log(f"{split}/acc", 100.0 * metric.compute())
        metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", self.val_acc)

    def on_test_start(self) -> None:
        if self.throughput_batch > 0:
            self.log_throughput()

    @torch.no_grad()
    def log_throughput(self) -> float:
        """Samples (videos of 10 segments) per second of the forward pass at inference."""
        was_training = self.net.training
        self.net.eval()
        b, device = self.throughput_batch, self.device
        audio = torch.randn(b, 10, 224, 224, device=device)
        frames = torch.randn(b, 10, 3, 224, 224, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(self.throughput_warmup):
            self.net(audio, frames)
        sync()
        start = time.perf_counter()
        for _ in range(self.throughput_steps):
            self.net(audio, frames)
        sync()
        rate = b * self.throughput_steps / (time.perf_counter() - start)
        self.net.train(was_training)
        self.test_throughput = rate
        log.info("throughput: %.1f samples/s (batch %d, %s)", rate, b, device)
        return rate

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", self.test_acc)
        if self.throughput_batch > 0:
            self.log("test/samples_per_s", float(self.test_throughput))
