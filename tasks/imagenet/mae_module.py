"""LightningModule of MAE pre-training: MAE's optimiser, schedule and loss (``main_pretrain.py``,
``engine_pretrain.py``, ``util/lr_sched.py``).

* lr: ``blr * effective batch / 256`` (effective batch = batch size x accumulation x devices),
  unless ``lr`` is given; the paper's 128 x 4 gives 1.5e-4 x 512 / 256 = 3e-4.
* AdamW, betas (0.9, 0.95) and weight decay 0.05 from the config; no weight decay on 1-d
  parameters and biases, as timm's ``add_weight_decay`` that MAE calls without a skip list (so
  ``cls_token`` and ``mask_token`` are decayed; the frozen position embeddings are not trained).
  timm's current name for it, ``param_groups_weight_decay``, builds the groups.
* Schedule: the shared ``warmup_cosine`` per optimiser step, ``warmup_epochs`` (40) of linear
  warm-up then a half cosine to ``min_lr`` (0), MAE's ``adjust_learning_rate``.
* Training loss: the masked-patch reconstruction loss with a fresh masking draw per batch (the
  pipeline's ``EpochSeed`` reseeds per batch, so a resumed run draws the same masks).
  Validation / test: the same loss with masking noise fixed by (``eval_seed``, batch index), so
  ``val/loss`` compares epochs and runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

from tasks.imagenet.module import ImageNetModule


class MAEPretrainModule(ImageNetModule):
    """Masked-autoencoder pre-training of ``tasks.imagenet.mae.MaskedAutoencoderViT``."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "step",
        *,
        blr: float = 1.5e-4,
        lr: float | None = None,
        warmup_epochs: float = 40,
        min_lr: float = 0.0,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(
            net,
            optimizer,
            scheduler,
            scheduler_interval,
            blr=blr,
            lr=lr,
            warmup_epochs=warmup_epochs,
            min_lr=min_lr,
        )
        self.eval_seed = eval_seed

    def param_groups(self) -> list[dict]:
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        return param_groups_weight_decay(self.net, weight_decay)

    def _log_loss(self, split: str, loss: Tensor, batch_size: int) -> None:
        self.log(
            f"{split}/loss",
            loss,
            prog_bar=True,
            on_step=split == "train",
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=split != "train",
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images = batch[0]
        loss, _, _ = self.net(images)
        self._log_loss("train", loss, len(images))
        aux = self.aux_loss()
        return loss if aux is None else loss + aux

    def eval_noise(self, images: Tensor, batch_idx: int) -> Tensor:
        """Masking noise (B, L) fixed by (``eval_seed``, batch index, rank)."""
        generator = torch.Generator().manual_seed(
            self.eval_seed + 7919 * batch_idx + 104_729 * self.global_rank
        )
        n_patches = self.net.patch_embed.num_patches
        return torch.rand(len(images), n_patches, generator=generator).to(images.device)

    def _eval_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int, split: str) -> None:
        images = batch[0]
        loss, _, _ = self.net(images, noise=self.eval_noise(images, batch_idx))
        self._log_loss(split, loss, len(images))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "test")
