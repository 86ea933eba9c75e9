"""Transformer layers and the encoder stack shared by every task.

``StampEncoder`` implements every ``mask=`` mode of the paper through its ``MaskPlan``
(``stamp.plan``: which parts a mode places, and which M each layer gets): ``none``, ``global``
(``mask.global_input=layer``: the shared generator re-applied to each layer's input),
``multilayer``, ``sparse`` and the Table 3 controls ``extra_linear`` / ``extra_layers``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from stamp.attention import StampAttention
from stamp.config import AttentionConfig, MaskConfig
from stamp.plan import MaskPlan

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "prelu": nn.PReLU,
    "glu": lambda: nn.GLU(),
}


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

    The layer takes its mask parts from ``plan`` (``MaskPlan``, already checked): its own
    generator (``multilayer``), computed from the layer input before any norm as in the paper's
    formula (a cross-attention's low-rank generator reads the context too), and the +Linear
    control after the attention (``extra_linear``); otherwise M comes from outside (``mask``
    of ``forward``). ``ffn_dropout`` is the dropout between the FFN's two linears (default
    ``dropout``; BERT: 0.0).

    ``official_t2v`` is QD-DETR's ``T2V_TransformerEncoderLayer`` (post-norm variant), whose FFN
    reads the normalised x1 but whose residual adds the un-normalised x1::

        x1 = x + dropout1(attention(x));  x = norm2(x1 + dropout2(ffn(norm1(x1))))

    (its modules keep the official names ``norm1``, ``norm2``, ``dropout1``, ``dropout2``).

    Args:
        dim: token width D; num_heads: attention heads; ffn_dim: FFN width (default 4 D).
        plan: the mask plan of the network this layer belongs to (None: full attention, eager).
        context_dim: width of the key tokens of a cross-attention (None: self-attention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int | None = None,
        *,
        plan: MaskPlan | None = None,
        context_dim: int | None = None,
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
        plan = plan or MaskPlan()
        if official_t2v and (norm_first or drop_path):
            raise ValueError("official_t2v is QD-DETR's post-norm layer: no norm_first, drop_path")
        self.official_t2v = official_t2v
        self.attn = StampAttention(
            dim,
            num_heads,
            context_dim=context_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_dropout,
            fusion=plan.mask.fusion,
            fusion_order=plan.mask.fusion_order,
            attention=plan.attention,
        )
        self.mask_generator, self.extra = plan.layer_parts()
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
    last layer is Linear(D -> plan.n_max key columns), the low-rank one also reads the context
    tokens (width ``plan.context_dim``). ``context_dim`` defaults to the plan's, else ``dim``.
    ``forward(x, context, context_padding_mask=...)``: ``StampLayer.forward``'s key padding.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int | None = None,
        *,
        plan: MaskPlan | None = None,
        context_dim: int | None = None,
        **kwargs,
    ) -> None:
        context_dim = context_dim or (plan.context_dim if plan is not None else None) or dim
        super().__init__(dim, num_heads, ffn_dim, plan=plan, context_dim=context_dim, **kwargs)

    def forward(  # type: ignore[override]
        self, x: Tensor, context: Tensor, *, context_padding_mask: Tensor | None = None, **kwargs
    ) -> Tensor:
        return super().forward(x, context, key_padding_mask=context_padding_mask, **kwargs)


class StampEncoder(nn.Module):
    """A stack of ``StampEncoderLayer`` with the mask mode of ``mask.type`` (its ``plan``).

    ``mask.type=extra_layers`` appends ``num_extra_layers`` layers (default: as many as match
    the multi-layer STAMP's generator parameters), zero-initialised so they start as the
    identity. ``aux_loss()`` returns the weighted sparsity loss for ``mask=sparse`` (zero
    otherwise).

    Args:
        num_layers: encoder layers (without the ``extra_layers`` control's).
        dim, num_heads, ffn_dim: layer sizes (``ffn_dim`` default 4 D).
        n_max: the longest token sequence the encoder accepts (the generators' output width).
        mask, attention: the typed settings (or mappings), converted and checked here once.
        num_extra_layers: the ``extra_layers`` count (None: matched), ignored by other types.
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
        self.plan = plan = MaskPlan(
            mask,
            attention,
            dim=dim,
            num_heads=num_heads,
            n_max=n_max,
            num_extra_layers=num_extra_layers,
        )
        self.mask_cfg = plan.mask
        self.n_max = n_max
        layer_kwargs = dict(
            plan=plan,
            dropout=dropout,
            attn_dropout=attn_dropout,
            activation=activation,
            norm_first=norm_first,
            norm_eps=norm_eps,
        )

        def make_layer(i: int, total: int) -> StampEncoderLayer:
            dp = drop_path * i / max(1, total - 1)
            return StampEncoderLayer(dim, num_heads, ffn_dim, drop_path=dp, **layer_kwargs)

        self.num_extra_layers = plan.extra_layer_count(num_layers, lambda: make_layer(0, 1))
        total = num_layers + self.num_extra_layers
        self.layers = nn.ModuleList([make_layer(i, total) for i in range(num_layers)])
        for i in range(num_layers, total):
            self.layers.append(plan.init_extra_layer(make_layer(i, total)))
        self.mask_generator = plan.shared_generator()
        self.sparse_mask = plan.sparse_mask()
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        *,
        pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: tokens (B, N, D), N <= ``n_max`` for position-tied parts.
            pos: position embeddings (B, N, D) added to queries / keys only.
            key_padding_mask: (B, N) bool, True at padded tokens.
            attn_bias: an additive bias broadcastable to (B, H, N, N).

        Returns:
            (B, N, D).
        """
        if self.sparse_mask is not None:
            sparse_bias = self.sparse_mask(x.shape[1]).to(x.dtype)
            attn_bias = sparse_bias if attn_bias is None else attn_bias + sparse_bias
        mask = None
        for i, layer in enumerate(self.layers):
            mask = self.plan.layer_mask(i, x, mask, shared=self.mask_generator)
            x = layer(x, pos=pos, key_padding_mask=key_padding_mask, mask=mask, attn_bias=attn_bias)
        return self.norm(x)

    def aux_loss(self) -> Tensor:
        loss = self.plan.aux_loss(self.sparse_mask)
        return torch.zeros(()) if loss is None else loss


def collect_aux_loss(model: nn.Module) -> Tensor | None:
    """Sum of ``aux_loss()`` over every sub-module that defines one (None if none does)."""
    losses = [m.aux_loss() for m in model.modules() if callable(getattr(m, "aux_loss", None))]
    losses = [loss for loss in losses if loss is not None]
    if not losses:
        return None
    return torch.stack([loss.to(losses[0].device) for loss in losses]).sum()
