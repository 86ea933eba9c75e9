"""Transformer layers and the encoder stack shared by every task.

``StampEncoder`` implements every ``mask=`` mode of the paper:

* ``none``         full attention;
* ``global``       one generator computed once from the encoder input, M shared by all layers
                   (``mask.global_input=layer``: the same generator re-applied to each layer's
                   input, the rebuttal's reading);
* ``multilayer``   one generator per layer, computed from that layer's input (paper's model);
* ``sparse``       SwinBERT's static learnable mask (additive bias) + its sparsity loss;
* ``extra_linear`` control: extra Linear(D, D) layers after each attention module;
* ``extra_layers`` control: extra transformer layers;

the controls sized to the parameter count of a multi-layer STAMP of the same ``mask.depth``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from stamp.attention import SDPA_MUL_ERROR, StampAttention
from stamp.config import (
    AttentionConfig,
    Backend,
    Fusion,
    LinearControl,
    MaskConfig,
    MaskType,
    as_attention_config,
    as_mask_config,
)
from stamp.mask import (
    MaskGenerator,
    SparseMask,
    generator_parameters,
    matched_layer_count,
    matched_linear_count,
    mlp_stack,
)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "prelu": nn.PReLU,
    "glu": lambda: nn.GLU(),
}


def check_mask_backend(mask: MaskConfig, attention: AttentionConfig) -> None:
    """Stop at construction when the backend cannot run the mask (SDPA x multiplicative M)."""
    if attention.backend is Backend.sdpa and mask.uses_generator and mask.fusion is Fusion.mul:
        raise ValueError(SDPA_MUL_ERROR)


def layer_mask_modules(
    mask: MaskConfig,
    dim: int,
    n_max: int | None,
    own_generator: bool,
    extra_linear: int,
    *,
    num_heads: int = 1,
    context_dim: int | None = None,
) -> tuple[MaskGenerator | None, nn.Module | None]:
    """A layer's own generator (multi-layer STAMP: ``n_max`` key columns for the MLP form, one
    mask per head of ``num_heads`` with ``mask.per_head``) and its +Linear control
    (``extra_linear`` Linear(D, D) after the attention), either of which may be None."""
    generator = None
    if own_generator:
        generator = MaskGenerator.from_config(
            mask, dim, n_max, num_heads=num_heads, context_dim=context_dim
        )
    extra = None
    if extra_linear > 0:
        residual = mask.linear_control is LinearControl.residual
        extra = mlp_stack(dim, extra_linear, residual=residual)
        extra.is_mask_control = True  # type: ignore[attr-defined]
    return generator, extra


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class _Residual(nn.Module):
    """attention/FFN sub-block with pre- or post-norm residual."""

    def __init__(
        self, dim: int, norm_first: bool, norm_eps: float, dropout: float, drop_path: float
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.norm_first = norm_first
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        if self.norm_first:
            return x + self.drop_path(self.drop(fn(self.norm(x))))
        return self.norm(x + self.drop_path(self.drop(fn(x))))


class StampLayer(nn.Module):
    """Attention + FFN, the build and forward shared by ``StampEncoderLayer`` (self-attention)
    and ``StampCrossAttentionLayer`` (``context_dim`` set: the queries attend to a context).

    M comes from outside (``mask=global``) or from the layer's own generator (``own_generator``,
    multi-layer STAMP), computed from the layer input before any norm, as in the paper's formula;
    a cross-attention's generator has ``n_max`` key columns and reads the context too (low-rank).
    ``extra_linear`` > 0 adds that many Linear(D, D) after the attention (the +Linear control).
    ``ffn_dropout`` is the dropout between the FFN's two linears (default ``dropout``; BERT: 0.0).

    ``official_t2v`` is QD-DETR's ``T2V_TransformerEncoderLayer`` (post-norm variant), whose FFN
    reads the normalised x1 but whose residual adds the un-normalised x1::

        x1 = x + dropout1(attention(x));  x = norm2(x1 + dropout2(ffn(norm1(x1))))

    (its modules keep the official names ``norm1``, ``norm2``, ``dropout1``, ``dropout2``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int | None = None,
        *,
        context_dim: int | None = None,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        n_max: int | None = None,
        own_generator: bool = False,
        extra_linear: int = 0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        ffn_dropout: float | None = None,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        official_t2v: bool = False,
    ) -> None:
        super().__init__()
        mask = as_mask_config(mask)
        if official_t2v and (norm_first or drop_path):
            raise ValueError("official_t2v is QD-DETR's post-norm layer: no norm_first, drop_path")
        self.official_t2v = official_t2v
        self.attn = StampAttention(
            dim,
            num_heads,
            context_dim=context_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_dropout,
            fusion=mask.fusion,
            fusion_order=mask.fusion_order,
            attention=as_attention_config(attention),
        )
        self.mask_generator, self.extra = layer_mask_modules(
            mask,
            dim,
            n_max,
            own_generator,
            extra_linear,
            num_heads=num_heads,
            context_dim=context_dim,
        )
        ffn = (dim, ffn_dim or 4 * dim, dropout if ffn_dropout is None else ffn_dropout, activation)
        if official_t2v:
            self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
            self.ffn = FeedForward(*ffn)
        else:
            self.attn_block = _Residual(dim, norm_first, norm_eps, dropout, drop_path)
            self.ffn = FeedForward(*ffn)
            self.ffn_block = _Residual(dim, norm_first, norm_eps, dropout, drop_path)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: the query-side tokens (B, Nq, D).
            context: the key-side tokens (B, Nk, D_context) of a cross-attention; None: x.
            pos, context_pos: position embeddings of each, added to queries / keys only.
            key_padding_mask: (B, Nk) bool, True at padded keys.
            mask: M from outside (B, [H,] Nq, Nk), ignored with an own generator.
            attn_bias: an additive bias broadcastable to (B, H, Nq, Nk).

        Returns:
            (B, Nq, D).
        """
        if context is not None and not self.attn.cross:
            raise ValueError("a self-attention layer takes no context (StampCrossAttentionLayer)")
        if self.mask_generator is not None:
            if context is None:
                mask = self.mask_generator(x)
            else:  # (the low-rank generator reads the context tokens too)
                mask = self.mask_generator(x, n_keys=context.shape[1], context=context)

        def attend(h: Tensor) -> Tensor:
            out = self.attn(
                h,
                context,
                mask=mask,
                key_padding_mask=key_padding_mask,
                attn_bias=attn_bias,
                pos=pos,
                context_pos=context_pos,
            )
            return out if self.extra is None else self.extra(out)

        if self.official_t2v:
            x = x + self.dropout1(attend(x))
            return self.norm2(x + self.dropout2(self.ffn(self.norm1(x))))
        x = self.attn_block(x, attend)
        return self.ffn_block(x, self.ffn)


class StampEncoderLayer(StampLayer):
    """Self-attention + FFN (``StampLayer`` without a context)."""


class StampCrossAttentionLayer(StampLayer):
    """Cross-attention + FFN: queries attend to a context (e.g. video clips to text tokens).

    M is (B, Nq, Nk) (or per head), generated from the query-side tokens; the MLP generator's
    last layer is Linear(D -> n_max_keys), the low-rank one also reads the context tokens.
    ``forward(x, context, context_padding_mask=...)``: ``StampLayer.forward``'s key padding.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int | None = None,
        *,
        context_dim: int | None = None,
        n_max_keys: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            dim, num_heads, ffn_dim, context_dim=context_dim or dim, n_max=n_max_keys, **kwargs
        )

    def forward(  # type: ignore[override]
        self, x: Tensor, context: Tensor, *, context_padding_mask: Tensor | None = None, **kwargs
    ) -> Tensor:
        return super().forward(x, context, key_padding_mask=context_padding_mask, **kwargs)


def layer_mask_kwargs(mask: MaskConfig, dim: int, n_max: int, num_heads: int = 1) -> dict:
    """Per-layer keyword arguments that a mask mode asks of a layer (generator / +Linear). The
    +Linear control matches the generator form that ``mask`` describes (mlp / lowrank, heads)."""
    if mask.type is MaskType.multilayer:
        return {"own_generator": True}
    if mask.type is MaskType.extra_linear:
        reference = generator_parameters(mask, dim, n_max, num_heads)
        return {"extra_linear": matched_linear_count(dim, n_max, mask.depth, reference=reference)}
    return {}


class StampEncoder(nn.Module):
    """A stack of ``StampEncoderLayer`` with the mask mode of ``mask.type``.

    ``n_max`` is the longest token sequence the encoder accepts (the generators' output width).
    ``mask.type=extra_layers`` appends ``num_extra_layers`` layers (default: as many as match the
    multi-layer STAMP's generator parameters), zero-initialised so they start as the identity.
    ``aux_loss()`` returns the weighted sparsity loss for ``mask=sparse`` (zero otherwise).
    """

    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_heads: int,
        ffn_dim: int | None = None,
        *,
        n_max: int,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        final_norm: bool = False,
        drop_path: float = 0.0,
        num_extra_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.mask_cfg = mask = as_mask_config(mask)
        attention = as_attention_config(attention)
        check_mask_backend(mask, attention)
        self.n_max = n_max
        layer_kwargs = dict(
            mask=mask,
            attention=attention,
            n_max=n_max,
            dropout=dropout,
            attn_dropout=attn_dropout,
            activation=activation,
            norm_first=norm_first,
            norm_eps=norm_eps,
        )
        per_layer = layer_mask_kwargs(mask, dim, n_max, num_heads)

        def make_layer(i: int, total: int, **extra) -> StampEncoderLayer:
            dp = drop_path * i / max(1, total - 1)
            return StampEncoderLayer(dim, num_heads, ffn_dim, drop_path=dp, **layer_kwargs, **extra)

        self.num_extra_layers = 0
        if mask.type is MaskType.extra_layers and num_extra_layers is not None:
            if num_extra_layers < 1:
                raise ValueError(f"num_extra_layers must be >= 1, got {num_extra_layers}")
            self.num_extra_layers = num_extra_layers
        elif mask.type is MaskType.extra_layers:
            reference = generator_parameters(mask, dim, n_max, num_heads)
            probe = make_layer(0, 1)
            layer_params = sum(p.numel() for p in probe.parameters())
            self.num_extra_layers = matched_layer_count(num_layers * reference, layer_params)
        total = num_layers + self.num_extra_layers
        self.layers = nn.ModuleList([make_layer(i, total, **per_layer) for i in range(num_layers)])
        for i in range(num_layers, total):
            layer = make_layer(i, total)
            # start at the base model's function: both residual branches output zero (exact
            # identity for pre-norm layers; a post-norm layer then only re-normalises its input)
            for linear in (layer.attn.proj, layer.ffn.fc2):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            layer.is_mask_control = True  # type: ignore[attr-defined]
            self.layers.append(layer)

        self.mask_generator: MaskGenerator | None = None
        if mask.type is MaskType.global_:
            self.mask_generator = MaskGenerator.from_config(mask, dim, n_max, num_heads=num_heads)
        self.sparse_mask: SparseMask | None = None
        if mask.type is MaskType.sparse:
            self.sparse_mask = SparseMask(n_max)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        *,
        pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        shared_mask = self.mask_generator(x) if self.mask_generator is not None else None
        if self.sparse_mask is not None:
            sparse_bias = self.sparse_mask(x.shape[1]).to(x.dtype)
            attn_bias = sparse_bias if attn_bias is None else attn_bias + sparse_bias
        for i, layer in enumerate(self.layers):
            if i > 0 and self.mask_cfg.global_per_layer and self.mask_generator is not None:
                shared_mask = self.mask_generator(x)  # the shared generator on this layer's input
            x = layer(
                x, pos=pos, key_padding_mask=key_padding_mask, mask=shared_mask, attn_bias=attn_bias
            )
        return self.norm(x)

    def aux_loss(self) -> Tensor:
        if self.sparse_mask is None:
            return torch.zeros(())
        return self.mask_cfg.sparse_loss_weight * self.sparse_mask.sparsity_loss()


def collect_aux_loss(model: nn.Module) -> Tensor | None:
    """Sum of ``aux_loss()`` over every sub-module that defines one (None if none does)."""
    losses = [m.aux_loss() for m in model.modules() if callable(getattr(m, "aux_loss", None))]
    losses = [loss for loss in losses if loss is not None]
    if not losses:
        return None
    return torch.stack([loss.to(losses[0].device) for loss in losses]).sum()
