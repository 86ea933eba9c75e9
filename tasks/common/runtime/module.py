"""Base LightningModule shared by the tasks: optimizer/scheduler from config partials, the
auxiliary mask losses, and parameter-count logging."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import Tensor, nn

from stamp import collect_aux_loss, mask_parameter_count


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Total / trainable / mask parameters; a net with ``parameter_report()`` (the AVE models:
    the supplement's counting rule) adds its entries as ``params/report_<name>``."""
    counts = {
        "params/total": sum(p.numel() for p in net.parameters()),
        "params/trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "params/mask": mask_parameter_count(net),
    }
    report = getattr(net, "parameter_report", None)
    if callable(report):
        counts.update({f"params/report_{k}": int(v) for k, v in report().items()})
    return counts


class TaskModule(L.LightningModule):
    """Subclass per task; implement ``training_step`` / ``validation_step`` (and ``test_step``).

    ``optimizer`` is a partial taking ``params``; ``scheduler`` a partial taking ``optimizer`` (and
    ``num_training_steps`` when its signature has it), stepped every ``scheduler_interval``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def param_groups(self) -> Iterable[nn.Parameter] | list[dict]:
        """Parameters handed to the optimizer; override for layer decay / per-module lr."""
        return [p for p in self.net.parameters() if p.requires_grad]

    def aux_loss(self) -> Tensor | None:
        """Auxiliary losses of the masks (SwinBERT sparsity loss), already weighted."""
        return collect_aux_loss(self.net)

    @property
    def weights_epoch(self) -> int:
        """The epoch whose weights are being evaluated: the current epoch while fitting, the
        checkpoint's epoch when a checkpoint was loaded for validate / test (after fit,
        ``current_epoch`` is the epoch count, not the best checkpoint's epoch)."""
        loaded = getattr(self, "_loaded_epoch", None)
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        return self.current_epoch if loaded is None or fitting else loaded

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loaded_epoch = checkpoint.get("epoch")

    def on_fit_start(self) -> None:
        self._loaded_epoch = None  # a resumed run's checkpoint: its weights train on
        counts = parameter_counts(self.net)
        for logger in self.loggers:
            logger.log_metrics({k: float(v) for k, v in counts.items()}, step=0)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        target = getattr(self.scheduler_factory, "func", self.scheduler_factory)
        if "num_training_steps" in inspect.signature(target).parameters:
            steps = int(self.trainer.estimated_stepping_batches)
            if self.scheduler_interval == "epoch":
                steps = int(self.trainer.max_epochs)
            kwargs["num_training_steps"] = steps
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
