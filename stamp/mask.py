"""Mask modules: the STAMP generator, SwinBERT's static sparse mask, and the parameter counts
of the Table 3 controls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stamp.config import Fusion, GeneratorKind, MaskBound, MaskConfig, MaskInit

# token chunks of a checkpointed generator: the backward holds one chunk's depth-1 hidden
# activations at a time (about (depth-1)/CHECKPOINT_CHUNKS times the input's size; 4: measured
# on CPU at depth 32 as the count that keeps both the memory and the time target, BENCHMARKS.md)
CHECKPOINT_CHUNKS = 4


def identity_preactivation(fusion: Fusion | str, bound: MaskBound | str) -> float | None:
    """The generator output (before the bound) at which M is the fusion's identity (1 for
    ``mul``, 0 for ``add``); None where the bound cannot reach it (sigmoid < 1, softplus > 0)."""
    target = 1.0 if Fusion(fusion) is Fusion.mul else 0.0
    bound = MaskBound(bound)
    if bound is MaskBound.none:
        return target
    if bound is MaskBound.softplus and target > 0:
        return math.log(math.expm1(target))  # softplus^-1(1)
    return None


class MaskGenerator(nn.Module):
    """F: tokens X (B, Nq, D) -> soft mask M (B, Nq, Nk), or (B, H, Nq, Nk) with ``heads``.

    ``depth`` linear layers with ReLU between them (depth 1 = a single Linear(D -> n_max)). The
    last layer has ``n_max`` outputs, one per key position of the longest context the model
    accepts; a batch with ``n_keys`` keys uses the first ``n_keys`` columns. ``init`` is one of
    ``MaskInit`` (see there); ``fusion`` tells ``kaiming`` / ``identity`` which M is neutral.
    ``heads`` (``mask.per_head``): the last layer has ``heads x n_max`` outputs, one mask per
    attention head; None = one M shared by the heads (paper).

    Build generators with ``MaskGenerator.from_config``: it returns this MLP generator or the
    length-agnostic ``LowRankMaskGenerator`` (``mask.generator``). Every generator is called as
    ``gen(x, n_keys=None, *, context=None)``; ``context`` (the key-side tokens of a
    cross-attention) matters only to generators that read the keys.

    M has the parameters' dtype whatever the form: float32 under bf16 / fp16 autocast (the
    last bias, or the low-rank offset, is added in float32, so M = 1 + 1e-4 is not rounded to
    1), bf16 under ``trainer.precision=bf16-true``.
    """

    def __init__(
        self,
        dim: int,
        n_max: int,
        depth: int = 2,
        hidden: int | None = None,
        bound: MaskBound | str = MaskBound.none,
        init: MaskInit | str = MaskInit.torch,
        fusion: Fusion | str = Fusion.mul,
        checkpoint: bool = False,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        if n_max < 1:
            raise ValueError(f"MaskGenerator n_max must be >= 1, got {n_max}")
        width = self._build_trunk(dim, depth, hidden, bound, init, fusion, checkpoint, heads)
        self.n_max = n_max
        self.out = nn.Linear(width, self.num_masks * n_max)
        self.reset_parameters()

    def _build_trunk(
        self,
        dim: int,
        depth: int,
        hidden: int | None,
        bound: MaskBound | str,
        init: MaskInit | str,
        fusion: Fusion | str,
        checkpoint: bool,
        heads: int | None,
    ) -> int:
        """Settings and the hidden ReLU stack shared by every generator form; returns its width."""
        if depth < 1:
            raise ValueError(f"mask generator depth must be >= 1, got {depth}")
        if heads is not None and heads < 1:
            raise ValueError(f"mask generator heads must be >= 1 or None, got {heads}")
        hidden = hidden or dim
        self.depth, self.bound = depth, MaskBound(bound)
        self.init, self.fusion = MaskInit(init), Fusion(fusion)
        self.checkpoint, self.heads = checkpoint, heads
        if self.init is MaskInit.identity and identity_preactivation(fusion, bound) is None:
            raise ValueError(
                f"mask.init=identity: mask.bound={self.bound} cannot output the identity of "
                f"fusion={self.fusion} (M={1 if self.fusion is Fusion.mul else 0}); use "
                "mask.init=kaiming or torch, or another bound"
            )
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        return width

    @property
    def num_masks(self) -> int:
        """Masks per token pair: the heads with ``per_head``, else 1."""
        return self.heads or 1

    @classmethod
    def from_config(
        cls,
        mask: MaskConfig,
        dim: int,
        n_max: int | None,
        *,
        num_heads: int = 1,
        context_dim: int | None = None,
    ) -> MaskGenerator:
        """The generator that ``mask`` describes: its form (``generator``: mlp / lowrank),
        depth, hidden width, bound, init, fusion, and one mask per head of ``num_heads`` with
        ``per_head``. ``n_max`` (longest key sequence) is required by the MLP form only;
        ``context_dim`` is the key tokens' width of a cross-attention (lowrank reads them)."""
        common = dict(
            depth=mask.depth,
            hidden=mask.hidden,
            bound=mask.bound,
            init=mask.init,
            fusion=mask.fusion,
            checkpoint=mask.checkpoint,
            heads=num_heads if mask.per_head else None,
        )
        if mask.generator is GeneratorKind.lowrank:
            return LowRankMaskGenerator(
                dim, n_max, rank=mask.rank, context_dim=context_dim, **common
            )
        if n_max is None:
            raise ValueError(
                "mask.generator=mlp needs the longest key sequence n_max (its last layer has one "
                "output per key position); use mask.generator=lowrank for any length"
            )
        return MaskGenerator(dim, n_max, **common)

    @property
    def first_linear(self) -> nn.Linear:
        """The layer that sees the tokens (its gradient norm is a diagnostic)."""
        return self.hidden[0] if len(self.hidden) else self.out

    def _reset_trunk(self) -> list[nn.Linear]:
        """Init the hidden stack (He fan-in keeps E[h^2] through the ReLUs; PyTorch's default
        under ``torch``); returns its Linears."""
        linears = [m for m in self.hidden if isinstance(m, nn.Linear)]
        for layer in linears:
            if self.init is MaskInit.torch:
                layer.reset_parameters()
            else:
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        return linears

    def _neutral(self) -> float:
        """The pre-bound output at which M is the fusion's identity (0 where unreachable)."""
        neutral = identity_preactivation(self.fusion, self.bound)
        return 0.0 if neutral is None else neutral

    def reset_parameters(self) -> None:
        """Apply ``self.init`` (models that re-initialise all their Linears call this after)."""
        self._reset_trunk()
        if self.init is MaskInit.torch:
            self.out.reset_parameters()
            return
        if self.init is MaskInit.identity:
            nn.init.zeros_(self.out.weight)
        else:  # unit gain: the token-dependent part of M has the scale of the hidden features
            nn.init.normal_(self.out.weight, std=self.out.in_features**-0.5)
        nn.init.constant_(self.out.bias, self._neutral())

    @staticmethod
    def num_parameters(
        dim: int, n_max: int, depth: int, hidden: int | None = None, heads: int = 1
    ) -> int:
        """Closed form of the MLP generator's parameter count."""
        h = hidden or dim
        outputs = heads * n_max
        if depth == 1:
            return dim * outputs + outputs
        return (dim * h + h) + (depth - 2) * (h * h + h) + (h * outputs + outputs)

    def activation_count(self, batch_size: int) -> int:
        """Floats kept for the backward at ``batch_size`` x ``n_max`` tokens: every hidden
        layer's output and ReLU mask, and M (0 without a fixed ``n_max``)."""
        tokens = self.n_max or 0
        width = self.first_linear.out_features if self.depth > 1 else 0
        return batch_size * tokens * (2 * width * (self.depth - 1) + self.num_masks * tokens)

    def _hidden(self, x: Tensor) -> Tensor:
        """The hidden ReLU stack; with ``checkpoint`` it runs on chunks of tokens, each under
        ``torch.utils.checkpoint``: only x is kept, and the backward recomputes one chunk's
        activations at a time (tokens are independent here, so the result is identical)."""
        if not (self.checkpoint and len(self.hidden) and torch.is_grad_enabled()):
            return self.hidden(x)
        flat = x.reshape(-1, x.shape[-1])
        rows = math.ceil(flat.shape[0] / min(self.depth - 1, CHECKPOINT_CHUNKS))
        h = torch.cat(
            [
                checkpoint(self.hidden, c, use_reentrant=False, preserve_rng_state=False)
                for c in flat.split(rows)
            ]
        )
        return h.view(*x.shape[:-1], h.shape[-1])

    def _apply_bound(self, m: Tensor) -> Tensor:
        if self.bound is MaskBound.sigmoid:
            return torch.sigmoid(m)
        if self.bound is MaskBound.softplus:
            return F.softplus(m)
        return m

    def forward(
        self, x: Tensor, n_keys: int | None = None, *, context: Tensor | None = None
    ) -> Tensor:
        if n_keys is None:
            n_keys = (x if context is None else context).shape[1]
        if n_keys > self.n_max:
            raise ValueError(
                f"STAMP mask generator: the batch has {n_keys} key tokens but the generator was "
                f"built for n_max={self.n_max}. Raise the model's maximum context length "
                "(the task's max length setting) or shorten the inputs, or use "
                "mask.generator=lowrank (any length); STAMP never truncates."
            )
        h = self._hidden(x)
        # only the first n_keys output columns (of each head) are computed: the values of M[..:n]
        weight = self.out.weight.view(self.num_masks, self.n_max, -1)[:, :n_keys]
        bias = self.out.bias.view(self.num_masks, self.n_max)[:, :n_keys]
        # the bias (the identity of an identity-start mask) is added in the parameters' dtype:
        # under bf16 autocast the product is bf16 but M is float32, as the low-rank form's, so
        # M = 1 + 1e-4 is not rounded to 1 (BENCHMARKS.md "Reduced precision")
        m = F.linear(h, weight.reshape(-1, weight.shape[-1])) + bias.reshape(-1)
        if self.heads is not None:  # (B, Nq, H * Nk) -> (B, H, Nq, Nk)
            m = m.view(*m.shape[:-1], self.heads, n_keys).movedim(-2, 1)
        return self._apply_bound(m)


class LowRankMaskGenerator(MaskGenerator):
    """M = bound(c + f(X_q) g(X_k)^T / sqrt(r)): a length-agnostic generator.

    Query and key tokens go through the same hidden ReLU stack (``depth - 1`` layers, as the MLP
    generator), then two Linear(width -> heads x r) give the rank-``r`` factors f and g; ``c`` is
    a learnt constant per mask (initialised at the fusion's identity under kaiming / identity).
    M depends on the content of both tokens, not on key positions, so there is no ``n_max``: any
    sequence length is accepted and the parameter count does not depend on N. In a
    cross-attention the key side is ``context`` (width ``context_dim``, mapped to ``dim`` by
    one Linear when the widths differ).

    Inits: ``identity`` zeroes f's weight and bias (M = identity exactly at step 0, gradient to
    f at once); ``kaiming`` draws f and g with unit gain so f.g/sqrt(r) has unit scale;
    ``torch`` keeps PyTorch's Linear defaults with c = 0.

    For cached decoding, ``query_factor`` / ``key_factor`` / ``combine`` give the factors and
    M separately (cache the key factors of past tokens).
    """

    def __init__(
        self,
        dim: int,
        n_max: int | None = None,
        depth: int = 2,
        hidden: int | None = None,
        bound: MaskBound | str = MaskBound.none,
        init: MaskInit | str = MaskInit.torch,
        fusion: Fusion | str = Fusion.mul,
        checkpoint: bool = False,
        heads: int | None = None,
        rank: int = 16,
        context_dim: int | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if rank < 1:
            raise ValueError(f"mask.rank must be >= 1, got {rank}")
        self.context_in = (
            nn.Linear(context_dim, dim) if context_dim is not None and context_dim != dim else None
        )
        width = self._build_trunk(dim, depth, hidden, bound, init, fusion, checkpoint, heads)
        self.n_max = None  # any length
        self.rank = rank
        self.query = nn.Linear(width, self.num_masks * rank)
        self.key = nn.Linear(width, self.num_masks * rank)
        self.offset = nn.Parameter(torch.zeros(self.num_masks))
        self.reset_parameters()

    @property
    def first_linear(self) -> nn.Linear:
        return self.hidden[0] if len(self.hidden) else self.query

    def reset_parameters(self) -> None:
        self._reset_trunk()
        if self.context_in is not None:
            self.context_in.reset_parameters()
        if self.init is MaskInit.torch:
            self.query.reset_parameters()
            self.key.reset_parameters()
            nn.init.zeros_(self.offset)
            return
        std = self.key.in_features**-0.5
        nn.init.normal_(self.key.weight, std=std)
        nn.init.zeros_(self.key.bias)
        if self.init is MaskInit.identity:
            nn.init.zeros_(self.query.weight)
        else:
            nn.init.normal_(self.query.weight, std=std)
        nn.init.zeros_(self.query.bias)
        nn.init.constant_(self.offset, self._neutral())

    @staticmethod
    def lowrank_parameters(
        dim: int,
        depth: int,
        rank: int,
        hidden: int | None = None,
        heads: int = 1,
        context_dim: int | None = None,
    ) -> int:
        """Closed form of the parameter count (independent of the sequence length)."""
        h = hidden or dim
        width = dim if depth == 1 else h
        trunk = 0 if depth == 1 else (dim * h + h) + (depth - 2) * (h * h + h)
        factors = 2 * (width * heads * rank + heads * rank)
        context = 0 if context_dim is None or context_dim == dim else context_dim * dim + dim
        return trunk + factors + heads + context

    def _factor(self, linear: nn.Linear, h: Tensor) -> Tensor:
        """(B, N, width) -> (B, H', N, r) with H' = heads or 1."""
        f = linear(h)
        return f.view(*f.shape[:-1], self.num_masks, self.rank).movedim(-2, 1)

    def query_factor(self, x: Tensor) -> Tensor:
        """f(X_q): (B, Nq, D) -> (B, H', Nq, r)."""
        return self._factor(self.query, self._hidden(x))

    def key_factor(self, context: Tensor) -> Tensor:
        """g(X_k): (B, Nk, D_ctx) -> (B, H', Nk, r)."""
        if self.context_in is not None:
            context = self.context_in(context)
        return self._factor(self.key, self._hidden(context))

    def combine(self, f: Tensor, g: Tensor) -> Tensor:
        """M from the factors: (B, H, Nq, Nk) with per-head masks, else (B, Nq, Nk)."""
        m = f @ g.transpose(-2, -1) * self.rank**-0.5 + self.offset.view(-1, 1, 1)
        return self._apply_bound(m if self.heads is not None else m.squeeze(1))

    def forward(
        self, x: Tensor, n_keys: int | None = None, *, context: Tensor | None = None
    ) -> Tensor:
        available = (x if context is None else context).shape[1]
        n_keys = available if n_keys is None else n_keys
        if n_keys > available:
            raise ValueError(
                f"STAMP low-rank mask generator: {n_keys} keys requested but only {available} "
                "key tokens given; pass the key tokens as context="
            )
        if context is None:  # self-attention: one pass of the stack for both factors
            h = self._hidden(x)
            return self.combine(self._factor(self.query, h), self._factor(self.key, h[:, :n_keys]))
        return self.combine(self.query_factor(x), self.key_factor(context[:, :n_keys]))


class SparseMask(nn.Module):
    """SwinBERT's learnable sparse attention mask (Lin et al., 2022).

    A static parameter W (n_max x n_max); A = sigmoid(W) with the diagonal forced to 1; the
    attention receives the additive bias -1e4 * (1 - A) (BERT's extended-mask convention) over
    the block it masks. The sparsity loss is mean |A| with the diagonal zeroed (SwinBERT's
    ``get_loss_sparsity``: the mean runs over all n_max^2 entries).
    """

    NEG = -1e4

    def __init__(self, n_max: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.n_max = n_max
        # SwinBERT stores W in an nn.Embedding(n_max * n_max, 1), which initialises N(0, 1).
        self.weight = nn.Parameter(torch.randn(n_max, n_max) * init_std)

    def probabilities(self, n: int | None = None) -> Tensor:
        n = self.n_max if n is None else n
        if n > self.n_max:
            raise ValueError(
                f"sparse mask: the batch has {n} tokens but the mask was built for "
                f"n_max={self.n_max}"
            )
        a = torch.sigmoid(self.weight[:n, :n])
        eye = torch.eye(n, device=a.device, dtype=a.dtype)
        return eye + (1.0 - eye) * a

    def forward(self, n: int | None = None) -> Tensor:
        """Additive bias (n, n) to add to the logits of the masked block."""
        return self.NEG * (1.0 - self.probabilities(n))

    def sparsity_loss(self) -> Tensor:
        a = torch.sigmoid(self.weight)
        eye = torch.eye(self.n_max, device=a.device, dtype=a.dtype)
        return ((1.0 - eye) * a).abs().mean()


class ResidualMLP(nn.Module):
    """The +Linear control: ``x + W_L ReLU(... ReLU(W_1 x + b_1) ...) + b_L``.

    ``num_linear`` Linear(D, D) with ReLU between them (Table 3: "additional linear layers at the
    end of each transformer stage"), inside a residual whose last linear is zero-initialised:
    at init the control is exactly the identity, so the model starts at the base model's
    function. The hidden linears get He fan-in init (zero biases) so the signal keeps its scale
    through the ReLU stack and every layer receives gradient once the last one moves.

    ``residual=False`` is the control as the paper describes it (``mask.linear_control=plain``):
    the plain stack ``W_L ReLU(... W_1 x ...)`` replacing the attention output, every Linear at
    PyTorch's default init. It shrinks the attention output through the ReLU stack at init (the
    paper's CIDEr drop to 12.87 may come from this rather than from over-fitting).
    """

    def __init__(self, dim: int, num_linear: int, residual: bool = True) -> None:
        super().__init__()
        if num_linear < 1:
            raise ValueError(f"the +Linear control needs >= 1 linear layer, got {num_linear}")
        layers: list[nn.Module] = []
        for i in range(num_linear):
            layers.append(nn.Linear(dim, dim))
            if i < num_linear - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.residual = residual
        if residual:  # the plain stack keeps the Linears' own default init as constructed
            self.reset_parameters()

    def reset_parameters(self) -> None:
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        if not self.residual:  # the paper's plain stack: torch's default Linear init
            for layer in linears:
                layer.reset_parameters()
            return
        for layer in linears[:-1]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x) if self.residual else self.net(x)


def mlp_stack(dim: int, num_linear: int, residual: bool = True) -> ResidualMLP:
    """``num_linear`` Linear(D, D) layers with ReLU between them, in a zero-initialised residual
    or (``residual=False``) as the paper's plain stack (the +Linear control; ``num_linear`` x
    (D^2 + D) parameters either way)."""
    return ResidualMLP(dim, num_linear, residual)


def generator_parameters(mask: MaskConfig, dim: int, n_max: int | None, num_heads: int = 1) -> int:
    """Parameters of the generator that ``mask`` describes (its form, depth, width, heads)."""
    heads = num_heads if mask.per_head else 1
    if mask.generator is GeneratorKind.lowrank:
        return LowRankMaskGenerator.lowrank_parameters(
            dim, mask.depth, mask.rank, mask.hidden, heads
        )
    if n_max is None:
        raise ValueError("the MLP generator's parameter count needs n_max")
    return MaskGenerator.num_parameters(dim, n_max, mask.depth, mask.hidden, heads)


def matched_linear_count(
    dim: int, n_max: int, depth: int, hidden: int | None = None, *, reference: int | None = None
) -> int:
    """How many Linear(D, D) after one attention module match one generator's parameters
    (``reference``: that count, e.g. ``generator_parameters`` of another form; default: the
    MLP generator of this depth)."""
    per_linear = dim * dim + dim
    if reference is None:
        reference = MaskGenerator.num_parameters(dim, n_max, depth, hidden)
    return max(1, round(reference / per_linear))


def matched_layer_count(stamp_params: int, layer_params: int) -> int:
    """How many extra transformer layers match a multi-layer STAMP's generator parameters."""
    return max(1, round(stamp_params / layer_params))


def init_mask_generators(model: nn.Module) -> int:
    """Re-apply each generator's own init (after a model's global weight init); returns how
    many generators were reset."""
    generators = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    for generator in generators:
        generator.reset_parameters()
    return len(generators)


def mask_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that belong to masks or mask controls (generators, sparse masks, +Linear,
    extra layers): a task's own init skips them, parameter counts list them apart."""
    return [
        m
        for m in model.modules()
        if isinstance(m, (MaskGenerator, SparseMask)) or getattr(m, "is_mask_control", False)
    ]


def mask_parameter_count(model: nn.Module) -> int:
    """Parameters that belong to masks or mask controls (generators, sparse masks, +Linear)."""
    return sum(p.numel() for m in mask_modules(model) for p in m.parameters())
