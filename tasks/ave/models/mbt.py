"""MBT (Nagrani et al., NeurIPS 2021) as the ``MBT`` class of enyac-group/MA-AVT
``models/all_nets.py``, the baseline of Table 9.

Two ViTs of the same size (``AViT`` audio, ``IViT`` visual), both from the same checkpoint.
Five learnable bottleneck tokens (``shared_tokens``) are appended to each stream after the
position embedding; each stream then runs its own blocks. The official class never exchanges
the bottleneck tokens between the streams (``fusion_layer=None``, the default here); with
``fusion_layer=L`` the MBT paper's fusion is used instead: from block L on, after every block
both streams' bottleneck tokens are replaced by their average. Each ViT's final norm gives its
[CLS]; (audio, visual) -> Linear(2D, 512) -> Linear(512, C).

The official class averages the [CLS] tokens over the T segments (one prediction per clip: the
datasets it ran on have T = 1); on AVE's segment labels this port keeps one prediction per
segment, as LAVISH and MA-AVT do. Trainable as the official script without ``--full_tune``:
the [CLS] tokens, bottleneck tokens and the head; ``full_tune=True`` trains everything (the
"fully-tuned MBT" the supplement's Table 9 text describes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tasks.ave.losses import segment_ce_loss
from tasks.ave.models.backbone import FrozenViT
from tasks.ave.models.base import AVEModel, AVEOutput, as_three_channels


class MBT(AVEModel):
    """MBT with two timm ViTs.

    Args:
        audio_vit / visual_vit: the two ``FrozenViT`` (same size).
        num_classes: C. bottleneck_tokens: the official 5. head_hidden: ``mlp_class`` width.
        fusion_layer: None (official: no exchange) or the first block whose bottleneck tokens
            are averaged across the streams (MBT paper).
        full_tune: train the ViTs too.
    """

    frozen_prefixes = ("AViT.", "IViT.")

    def __init__(
        self,
        audio_vit: FrozenViT,
        visual_vit: FrozenViT,
        *,
        num_classes: int = 29,
        bottleneck_tokens: int = 5,
        head_hidden: int = 512,
        fusion_layer: int | None = None,
        full_tune: bool = False,
    ) -> None:
        super().__init__()
        if audio_vit.dim != visual_vit.dim or len(audio_vit.v.blocks) != len(visual_vit.v.blocks):
            raise ValueError("MBT: the audio and visual ViTs must have the same size")
        self.AViT, self.IViT = audio_vit, visual_vit
        self.dim = dim = audio_vit.dim
        self.total_layers = len(audio_vit.v.blocks)
        if fusion_layer is not None and not 0 <= fusion_layer < self.total_layers:
            raise ValueError(
                f"model.fusion_layer={fusion_layer} outside 0..{self.total_layers - 1}"
            )
        self.fusion_layer, self.full_tune = fusion_layer, full_tune
        self.n_bottleneck = bottleneck_tokens
        self.mlp_class = nn.Linear(dim * 2, head_hidden)
        self.mlp_class_2 = nn.Linear(head_hidden, num_classes)
        self.shared_tokens = nn.Parameter(torch.randn(bottleneck_tokens, dim))
        self.freeze()

    def forward(self, audio: Tensor, frames: Tensor) -> AVEOutput:
        """audio (B, T, H, W), frames (B, T, 3, H, W) -> segment logits (B, T, C)."""
        b, t = frames.shape[:2]
        f_a = self.AViT.embed(as_three_channels(audio))
        f_v = self.IViT.embed(frames.flatten(0, 1))
        shared = self.shared_tokens.expand(f_v.shape[0], -1, -1)
        f_a, f_v = torch.cat([f_a, shared], dim=1), torch.cat([f_v, shared], dim=1)
        mask_a = mask_v = None
        n = self.n_bottleneck
        for i in range(self.total_layers):
            mask_a = self.AViT.layer_mask(i, f_a, mask_a)
            mask_v = self.IViT.layer_mask(i, f_v, mask_v)
            f_v = self.IViT.block(i, f_v, mask_v)
            f_a = self.AViT.block(i, f_a, mask_a)
            if self.fusion_layer is not None and i >= self.fusion_layer:
                fused = (f_a[:, -n:] + f_v[:, -n:]) / 2
                f_a = torch.cat([f_a[:, :-n], fused], dim=1)
                f_v = torch.cat([f_v[:, :-n], fused], dim=1)
        f_v, f_a = self.IViT.v.norm(f_v), self.AViT.v.norm(f_a)
        logits = self.mlp_class_2(self.mlp_class(torch.cat((f_a[:, 0], f_v[:, 0]), dim=-1)))
        return AVEOutput(logits=logits.view(b, t, -1))

    def losses(self, out: AVEOutput, labels: Tensor) -> dict[str, Tensor]:
        """Cross-entropy per segment (``train_baseline_vit.py``) = ``total``."""
        loss = segment_ce_loss(out.logits, labels)
        return {"ce": loss, "total": loss}
