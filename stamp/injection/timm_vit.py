"""timm ViTs: ``stamp_timm_attention`` makes a timm ``Attention`` STAMP's in place (same weights
and names, still an ``Attention``); ``stamp.inject`` and ``tasks.imagenet.model.StampBlock``
(ImageNet, MAE, AVE) both enter timm through it. ``stamp.inject`` also reaches EVA's and Swin's
attention classes (``stamp.injection.timm_families``) through this module."""

from __future__ import annotations

from timm.layers import Attention
from timm.layers.attention import resolve_self_attn_mask
from torch import Tensor, nn

from stamp.attention import RecordsAttention
from stamp.config import AttentionConfig, Fusion, FusionOrder
from stamp.injection.adapter import InjectedStamp


class StampTimmAttention(RecordsAttention, Attention):
    """timm's forward, the product on the STAMP core: x (B, N, D), M (B, [H,] N, N) given as
    ``mask`` (None: none), or from ``self.stamp`` after ``stamp.inject``."""

    stamp: InjectedStamp | None  # set by stamp_timm_attention

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        mask: Tensor | None = None,
    ) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)  # timm's own convention
        if bias is not None:
            bias = bias.to(q.dtype)
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.stamp is not None:
            out, _ = self.stamp(q, k, v, hidden=x, attn_bias=bias, dropout_p=dropout_p)
        else:
            out, _ = self.masked_attention(q, k, v, mask=mask, attn_bias=bias, dropout_p=dropout_p)
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def stamp_timm_attention(
    module: Attention,
    *,
    fusion: Fusion | str = Fusion.mul,
    fusion_order: FusionOrder | str = FusionOrder.mask_first,
    attention: AttentionConfig | None = None,
    stamp: InjectedStamp | None = None,
) -> StampTimmAttention:
    """Make timm's ``module`` (plain ``Attention``) a ``StampTimmAttention`` in place.

    Args: ``fusion`` / ``fusion_order`` / ``attention``: how a given M is fused, the backend;
    ``stamp``: ``stamp.inject``'s generator and core (then M and the product come from it).
    """
    module.__class__ = StampTimmAttention
    module.init_core(fusion, fusion_order, attention or AttentionConfig())
    module.stamp = stamp
    return module  # type: ignore[return-value]


def _other_classes() -> dict[type, type]:
    """timm class -> its STAMP subclass for EVA and Swin (``stamp.injection.timm_families``)."""
    from stamp.injection.timm_families import STAMP_CLASSES

    return STAMP_CLASSES


def is_timm_attention(module: nn.Module) -> bool:
    """timm's standard ``Attention`` (ViT, DeiT), EVA's ``EvaAttention``, Swin's
    ``WindowAttention``, or one ``stamp.inject`` already injected."""
    others = _other_classes()
    return (
        type(module) is Attention
        or type(module) in others
        or (isinstance(module, StampTimmAttention) and module.stamp is not None)
        or isinstance(module, tuple(others.values()))
    )


def dims(module: nn.Module) -> tuple[int, int]:
    """(width of the module's input tokens, heads)."""
    return module.proj.out_features, module.num_heads


def source_implementation(module: nn.Module) -> str:
    return "sdpa" if getattr(module, "fused_attn", False) else "eager"


def default_n_max(model: nn.Module, name: str) -> int | None:
    """Patches + prefix tokens of the ViT (DeiT, EVA) that holds the attention module ``name``;
    a Swin window's area (Wh x Ww) for Swin's window attention."""
    window_area = getattr(model.get_submodule(name), "window_area", None)
    if window_area is not None:
        return int(window_area)
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
    """Make ``module`` STAMP's; the stamp runs the product with its own core."""
    other = _other_classes().get(type(module))
    if other is None:
        stamp_timm_attention(module, stamp=stamp)
        return
    module.__class__ = other
    module.stamp = stamp
