"""MA-AVT (Mahmud et al., CVPRW 2024) as the ``MA_AVT`` class of enyac-group/MA-AVT
``models/all_nets.py`` runs with the README's flags (``--LSA --bg_cls --unimodal_token
--multimodal_token --contrastive blockwise_sep``, 5 tokens per group).

One frozen ViT embeds both streams: the 1-channel fbank repeated to 3 channels, and the frames.
A background class token is appended after the patches of both streams (before the position
embedding, which is interpolated to the longer sequence). Before block 0, learnable audio /
visual tokens and shared tokens, each refined by its own 8-head self-attention (LSA, no
residual), are appended to their stream (the shared ones to both); with the official
``layerwise_token=None`` they then flow through every block. After each block the shared
tokens of each stream are averaged, projected by that block's own Linear(D, 512) and compared
across the modalities (the blockwise contrastive loss). The final norm's [CLS] tokens
(visual, audio) feed the foreground head Linear(2D, C); the background tokens feed
Linear(2D, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.ave.losses import (
    TEMPERATURE,
    background_loss,
    contrastive_loss,
    foreground_loss,
    segment_targets,
)
from tasks.ave.models.backbone import FrozenViT
from tasks.ave.models.base import AVEModel, AVEOutput, as_three_channels

CONTRASTIVE = (None, "blockwise_sep", "blockwise_cmn", "final")


class SelfAttention(nn.Module):
    """The LSA of the official code: plain multi-head self-attention, no norm, no residual."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LSA: dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class MAAVT(AVEModel):
    """MA-AVT on a frozen timm ViT.

    Args:
        vit: the ``FrozenViT`` (shared by both streams; its parameters stay frozen).
        num_classes: C (29 on AVE: 28 events + background).
        num_tokens: tokens per group (audio, visual, shared), Table 8: 2 / 5 / 10 / 15.
        lsa / lsa_heads: refine each group by its own self-attention (``--LSA``, 8 heads).
        bg_cls: background class token + head (``--bg_cls``); ``bg_label`` is its class.
        contrastive: ``blockwise_sep`` (a projector per block), ``blockwise_cmn`` (one
            projector), ``final`` (last block only) or None.
        layerwise_token: None (official run: tokens appended once) or ``common`` (stripped
            after each block and appended again, refined by the same LSA).
    """

    projector_prefixes = ("audio_proj", "vis_proj")

    def __init__(
        self,
        vit: FrozenViT,
        *,
        num_classes: int = 29,
        num_tokens: int = 5,
        lsa: bool = True,
        lsa_heads: int = 8,
        bg_cls: bool = True,
        bg_label: int = 28,
        contrastive: str | None = "blockwise_sep",
        temperature: float = TEMPERATURE,
        proj_dim: int = 512,
        layerwise_token: str | None = None,
        unimodal_token: bool = True,
        multimodal_token: bool = True,
    ) -> None:
        super().__init__()
        if contrastive not in CONTRASTIVE:
            raise ValueError(f"model.contrastive={contrastive!r}; choose one of: {CONTRASTIVE}")
        if layerwise_token not in (None, "common"):
            raise ValueError(f"model.layerwise_token={layerwise_token!r}; choose null or common")
        if contrastive is not None and not multimodal_token:
            raise ValueError("the contrastive loss reads the shared tokens: multimodal_token")
        self.ViT = vit
        dim = vit.dim
        self.dim = dim
        self.total_layers = len(vit.v.blocks)
        self.num_classes, self.bg_label, self.temperature = num_classes, bg_label, temperature
        self.contrastive, self.layerwise_token = contrastive, layerwise_token
        self.fg_class = nn.Linear(dim * 2, num_classes)
        n_proj = self.total_layers if contrastive == "blockwise_sep" else 1
        if contrastive is not None:
            self.audio_proj = nn.ModuleList(nn.Linear(dim, proj_dim) for _ in range(n_proj))
            self.vis_proj = nn.ModuleList(nn.Linear(dim, proj_dim) for _ in range(n_proj))
        self.n_modal = num_tokens if unimodal_token else 0
        self.n_shared = num_tokens if multimodal_token else 0
        if unimodal_token:
            self.audio_tokens = nn.Parameter(torch.randn(num_tokens, dim))
            self.visual_tokens = nn.Parameter(torch.randn(num_tokens, dim))
        if multimodal_token:
            self.shared_tokens = nn.Parameter(torch.randn(num_tokens, dim))
        identity = nn.Identity()
        self.audio_attn = SelfAttention(dim, lsa_heads) if lsa and unimodal_token else identity
        self.visual_attn = SelfAttention(dim, lsa_heads) if lsa and unimodal_token else identity
        self.shared_attn = SelfAttention(dim, lsa_heads) if lsa and multimodal_token else identity
        self.is_bg_cls = bg_cls
        if bg_cls:
            self.bg_cls_token = nn.Parameter(torch.randn(1, dim))
            self.bg_class = nn.Linear(dim * 2, 1)
        self.freeze()

    @staticmethod
    def sequence_length(num_patches: int, num_tokens: int, bg_cls: bool = True) -> int:
        """Tokens per stream inside the blocks: [CLS] + patches (+ bg) + 2 groups of tokens."""
        return 1 + num_patches + int(bg_cls) + 2 * num_tokens

    def _append_tokens(self, f_a: Tensor, f_v: Tensor) -> tuple[Tensor, Tensor]:
        b = f_a.shape[0]
        if self.n_modal:
            audio = self.audio_attn(self.audio_tokens.expand(b, -1, -1))
            visual = self.visual_attn(self.visual_tokens.expand(b, -1, -1))
            f_a, f_v = torch.cat([f_a, audio], dim=1), torch.cat([f_v, visual], dim=1)
        if self.n_shared:
            shared = self.shared_attn(self.shared_tokens.expand(b, -1, -1))
            f_a, f_v = torch.cat([f_a, shared], dim=1), torch.cat([f_v, shared], dim=1)
        return f_a, f_v

    def forward(self, audio: Tensor, frames: Tensor) -> AVEOutput:
        """audio (B, T, H, W) fbank per segment, frames (B, T, 3, H, W) -> segment logits."""
        b, t = frames.shape[:2]
        audio = as_three_channels(audio)
        bg = self.bg_cls_token if self.is_bg_cls else None
        f_a = self.ViT.embed(audio, bg_cls_token=bg)
        f_v = self.ViT.embed(frames.flatten(0, 1), bg_cls_token=bg)
        n_extra = self.n_modal + self.n_shared
        shared: list[tuple[Tensor, Tensor]] = []
        mask_a = mask_v = None
        for i in range(self.total_layers):
            if i == 0 or self.layerwise_token is not None:
                f_a, f_v = self._append_tokens(f_a, f_v)
            mask_a = self.ViT.layer_mask(i, f_a, mask_a)  # mask=global: M per stream
            mask_v = self.ViT.layer_mask(i, f_v, mask_v)
            f_v = self.ViT.block(i, f_v, mask_v)
            f_a = self.ViT.block(i, f_a, mask_a)
            wanted = self.contrastive in ("blockwise_sep", "blockwise_cmn") or (
                self.contrastive == "final" and i == self.total_layers - 1
            )
            if wanted:
                aud = f_a[:, -self.n_shared :].mean(dim=1)
                vis = f_v[:, -self.n_shared :].mean(dim=1)
                shared.append((aud, vis))
            if self.layerwise_token is not None and n_extra and i != self.total_layers - 1:
                f_a, f_v = f_a[:, :-n_extra], f_v[:, :-n_extra]
        f_v, f_a = self.ViT.v.norm(f_v), self.ViT.v.norm(f_a)
        fg = self.fg_class(torch.cat((f_v[:, 0], f_a[:, 0]), dim=-1))
        bg_logits = None
        logits = fg
        if self.is_bg_cls:
            at = -(1 + n_extra)
            bg_logits = self.bg_class(torch.cat((f_v[:, at], f_a[:, at]), dim=-1)).squeeze(-1)
            logits = official_decision(fg, bg_logits, self.bg_label)
        return AVEOutput(
            logits=logits.view(b, t, -1), fg_logits=fg, bg_logits=bg_logits, shared=shared
        )

    def contrastive_terms(self, out: AVEOutput, is_bg: Tensor | None) -> Tensor:
        """The (blockwise) contrastive loss: mean over blocks (``blockwise_*``), last block
        alone (``final``)."""
        losses = []
        for k, (aud, vis) in enumerate(out.shared):
            j = k if self.contrastive == "blockwise_sep" else 0
            audio_feat = F.normalize(self.audio_proj[j](aud), dim=1).float()
            image_feat = F.normalize(self.vis_proj[j](vis), dim=1).float()
            losses.append(contrastive_loss(image_feat, audio_feat, is_bg, self.temperature))
        total = torch.stack(losses).sum()
        return total / self.total_layers if self.contrastive != "final" else total

    def losses(self, out: AVEOutput, labels: Tensor) -> dict[str, Tensor]:
        """``fg`` + ``bg`` + ``contrastive`` = ``total`` (unweighted, as ``MA_AVT.forward_vit``)."""
        target = segment_targets(labels)
        is_bg = target == self.bg_label if self.is_bg_cls else None
        result = {"fg": foreground_loss(out.fg_logits, target, is_bg)}
        total = result["fg"]
        if self.is_bg_cls:
            result["bg"] = background_loss(out.bg_logits, is_bg)
            total = total + result["bg"]
        if self.contrastive is not None:
            result["contrastive"] = self.contrastive_terms(out, is_bg)
            total = total + result["contrastive"]
        result["total"] = total
        return result


def official_decision(fg_logits: Tensor, bg_logits: Tensor, bg_label: int) -> Tensor:
    """Scores whose argmax is ``train_avm_vit.total_accuracy``'s prediction: ``bg_label`` when
    sigmoid(bg) > 0.5, else argmax(fg). Column ``bg_label`` is raised above the row's maximum
    for background segments; the other rows are the foreground logits unchanged."""
    top = fg_logits.detach().max(dim=-1).values + 1.0
    column = torch.where(bg_logits > 0, top, fg_logits[:, bg_label])
    return torch.cat(
        (fg_logits[:, :bg_label], column[:, None], fg_logits[:, bg_label + 1 :]), dim=-1
    )
