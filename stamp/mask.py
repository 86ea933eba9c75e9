"""Mask modules: the STAMP generator, SwinBERT's static sparse mask, and the parameter counts
of the Table 3 controls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stamp.config import Fusion, MaskBound, MaskConfig, MaskInit

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
    """F: tokens X (B, Nq, D) -> soft mask M (B, Nq, Nk).

    ``depth`` linear layers with ReLU between them (depth 1 = a single Linear(D -> n_max)). The
    last layer has ``n_max`` outputs, one per key position of the longest context the model
    accepts; a batch with ``n_keys`` keys uses the first ``n_keys`` columns. ``init`` is one of
    ``MaskInit`` (see there); ``fusion`` tells ``kaiming`` / ``identity`` which M is neutral.
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
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MaskGenerator depth must be >= 1, got {depth}")
        if n_max < 1:
            raise ValueError(f"MaskGenerator n_max must be >= 1, got {n_max}")
        hidden = hidden or dim
        self.n_max, self.depth, self.bound = n_max, depth, MaskBound(bound)
        self.init, self.fusion = MaskInit(init), Fusion(fusion)
        self.checkpoint = checkpoint
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
        self.out = nn.Linear(width, n_max)
        self.reset_parameters()

    @classmethod
    def from_config(cls, mask: MaskConfig, dim: int, n_max: int) -> MaskGenerator:
        """The generator that ``mask`` describes (depth, hidden width, bound, init, fusion)."""
        return cls(
            dim,
            n_max,
            mask.depth,
            mask.hidden,
            mask.bound,
            mask.init,
            mask.fusion,
            checkpoint=getattr(mask, "checkpoint", False),
        )

    @property
    def first_linear(self) -> nn.Linear:
        """The layer that sees the tokens (its gradient norm is a diagnostic)."""
        return self.hidden[0] if len(self.hidden) else self.out

    def reset_parameters(self) -> None:
        """Apply ``self.init`` (models that re-initialise all their Linears call this after)."""
        linears = [m for m in self.hidden if isinstance(m, nn.Linear)]
        if self.init is MaskInit.torch:
            for layer in [*linears, self.out]:
                layer.reset_parameters()
            return
        for layer in linears:  # He fan-in: keeps E[h^2] through the ReLU stack
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        neutral = identity_preactivation(self.fusion, self.bound)
        if self.init is MaskInit.identity:
            nn.init.zeros_(self.out.weight)
        else:  # unit gain: the token-dependent part of M has the scale of the hidden features
            nn.init.normal_(self.out.weight, std=self.out.in_features**-0.5)
        nn.init.constant_(self.out.bias, 0.0 if neutral is None else neutral)

    @staticmethod
    def num_parameters(dim: int, n_max: int, depth: int, hidden: int | None = None) -> int:
        """Closed form of the generator's parameter count."""
        h = hidden or dim
        if depth == 1:
            return dim * n_max + n_max
        return (dim * h + h) + (depth - 2) * (h * h + h) + (h * n_max + n_max)

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

    def forward(self, x: Tensor, n_keys: int | None = None) -> Tensor:
        n_keys = x.shape[1] if n_keys is None else n_keys
        if n_keys > self.n_max:
            raise ValueError(
                f"STAMP mask generator: the batch has {n_keys} key tokens but the generator was "
                f"built for n_max={self.n_max}. Raise the model's maximum context length "
                "(the task's max length setting) or shorten the inputs; STAMP never truncates."
            )
        h = self._hidden(x)
        # only the first n_keys output columns are computed (same values as slicing M)
        m = F.linear(h, self.out.weight[:n_keys], self.out.bias[:n_keys])
        if self.bound is MaskBound.sigmoid:
            m = torch.sigmoid(m)
        elif self.bound is MaskBound.softplus:
            m = F.softplus(m)
        return m


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
    """

    def __init__(self, dim: int, num_linear: int) -> None:
        super().__init__()
        if num_linear < 1:
            raise ValueError(f"the +Linear control needs >= 1 linear layer, got {num_linear}")
        layers: list[nn.Module] = []
        for i in range(num_linear):
            layers.append(nn.Linear(dim, dim))
            if i < num_linear - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def mlp_stack(dim: int, num_linear: int) -> ResidualMLP:
    """``num_linear`` Linear(D, D) layers with ReLU between them in a zero-initialised residual
    (the +Linear control; ``num_linear`` x (D^2 + D) parameters)."""
    return ResidualMLP(dim, num_linear)


def matched_linear_count(dim: int, n_max: int, depth: int, hidden: int | None = None) -> int:
    """How many Linear(D, D) after one attention module match one generator's parameters."""
    per_linear = dim * dim + dim
    return max(1, round(MaskGenerator.num_parameters(dim, n_max, depth, hidden) / per_linear))


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


def mask_parameter_count(model: nn.Module) -> int:
    """Parameters that belong to masks or mask controls (generators, sparse masks, +Linear)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (MaskGenerator, SparseMask)):
            total += sum(p.numel() for p in module.parameters())
        elif getattr(module, "is_mask_control", False):
            total += sum(p.numel() for p in module.parameters())
    return total
