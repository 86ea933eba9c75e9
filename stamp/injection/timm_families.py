"""timm attention classes beyond ViT's ``Attention``: EVA's ``EvaAttention`` (rotary position
embeddings) and Swin's ``WindowAttention`` (attention inside local windows, relative position
bias, the shifted windows' mask). As ``StampTimmAttention`` for ViT / DeiT, ``stamp.inject``
turns the module's class into a subclass whose forward is timm's with the attention product
run by ``module.stamp`` (weights and names unchanged).

Swin: the generator reads the tokens of one window (the module's input is (windows x B, N, C))
and M is (N, N) over that window's positions, so ``n_max`` is the window area (Wh x Ww); every
window of a layer shares that layer's generator. M enters before the relative position bias
and the shift mask (``mask.fusion_order=mask_first``), which are added as the additive bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.attention import resolve_self_attn_mask
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.eva import EvaAttention
from timm.models.swin_transformer import WindowAttention
from torch import Tensor

from stamp.injection.adapter import InjectedStamp


class StampEvaAttention(EvaAttention):
    """timm's ``EvaAttention.forward`` (fused or separate q/k/v, q/k norm, rotary embeddings
    after the prefix tokens, scale norm, gate) with the product on ``self.stamp``."""

    stamp: InjectedStamp

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        rope: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
                if self.qkv_bias_separate:
                    qkv = self.qkv(x) + qkv_bias
                else:
                    qkv = F.linear(x, weight=self.qkv.weight, bias=qkv_bias)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (
                proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
                for proj in (self.q_proj, self.k_proj, self.v_proj)
            )
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
            q, k = q.type_as(v), k.type_as(v)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)  # timm's own convention
        out, _ = self.stamp(
            q,
            k,
            v,
            hidden=x,
            attn_bias=None if bias is None else bias.to(q.dtype),
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )
        out = self.norm(out.transpose(1, 2).reshape(B, N, -1))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


class StampWindowAttention(WindowAttention):
    """timm's Swin ``WindowAttention.forward`` with the product on ``self.stamp``: x is
    (windows x B, N, C), ``mask`` the shifted windows' (windows, N, N) 0 / -100 mask."""

    stamp: InjectedStamp

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias()  # (1, H, N, N)
        if mask is not None:
            num_win = mask.shape[0]
            mask = mask.view(1, num_win, 1, N, N).expand(B_ // num_win, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, N, N)
        out, _ = self.stamp(
            q,
            k,
            v,
            hidden=x,
            attn_bias=bias.to(q.dtype),
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B_, N, -1)))


STAMP_CLASSES: dict[type, type] = {
    EvaAttention: StampEvaAttention,
    WindowAttention: StampWindowAttention,
}
