"""timm ViTs: STAMP in ``timm.layers.Attention`` (the attention of ``VisionTransformer``).

Injection switches the module's class to ``StampTimmAttention``, a subclass whose forward is
timm's with the attention product replaced by a STAMP backend: the same ``qkv``, ``q_norm`` /
``k_norm``, ``norm``, ``gate`` and ``proj`` weights, under the same names, so timm checkpoints
still load and ``isinstance(module, Attention)`` still holds.
"""

from __future__ import annotations

from timm.layers import Attention
from timm.layers.attention import resolve_self_attn_mask
from torch import Tensor, nn

from stamp.injection.adapter import InjectedStamp


class StampTimmAttention(Attention):
    """timm's ``Attention`` whose logits take the soft mask of ``self.stamp``."""

    stamp: InjectedStamp

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)  # timm's own convention
        if bias is not None:
            bias = bias.to(q.dtype)
        out, _ = self.stamp(
            q, k, v, hidden=x, attn_bias=bias, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def is_timm_attention(module: nn.Module) -> bool:
    """timm's standard ``Attention`` (subclasses with their own forward are not supported)."""
    return type(module) in (Attention, StampTimmAttention)


def dims(module: nn.Module) -> tuple[int, int]:
    return module.qkv.in_features, module.num_heads


def source_implementation(module: nn.Module) -> str:
    return "sdpa" if getattr(module, "fused_attn", False) else "eager"


def default_n_max(model: nn.Module, name: str) -> int | None:
    """Patches + prefix tokens of the ViT that holds the attention module ``name``."""
    best, best_len = None, -1
    for owner_name, owner in model.named_modules():
        inside = owner_name == "" or name.startswith(owner_name + ".")
        embed = getattr(owner, "patch_embed", None)
        if inside and embed is not None and len(owner_name) > best_len:
            best, best_len = owner, len(owner_name)
    if best is None or getattr(best.patch_embed, "num_patches", None) is None:
        return None
    return int(best.patch_embed.num_patches) + int(getattr(best, "num_prefix_tokens", 1))


def attach(module: nn.Module, stamp: InjectedStamp) -> None:
    module.stamp = stamp
    module.__class__ = StampTimmAttention
