"""The mask plan: what a ``mask=`` mode places in a network, and which M each layer gets.

Every network (an encoder stack, QD-DETR's T2V layers, a timm ViT, SwinBERT, ``stamp.inject``)
builds one ``MaskPlan`` and asks it for its parts instead of branching on ``mask.type``
(``PARTS_OF``: ``global`` a shared generator, ``multilayer`` one per layer, ``sparse``
SwinBERT's mask, ``extra_linear`` / ``extra_layers`` the Table 3 controls, sized to a
multi-layer STAMP's parameters). The network keeps the modules under its own names
(``mask_generator``, ``extra``, ``sparse_mask``): state dicts do not depend on the plan.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection
from dataclasses import replace

from torch import Tensor, nn

from stamp.attention import SDPA_MUL_ERROR
from stamp.config import (
    AttentionConfig,
    Backend,
    Fusion,
    GlobalInput,
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

log = logging.getLogger(__name__)

SHARED_GENERATOR = "shared_generator"
LAYER_GENERATOR = "layer_generator"
LAYER_CONTROL = "layer_control"
EXTRA_LAYERS = "extra_layers"
SPARSE_MASK = "sparse_mask"
ALL_PARTS = frozenset({SHARED_GENERATOR, LAYER_GENERATOR, LAYER_CONTROL, EXTRA_LAYERS, SPARSE_MASK})
GENERATOR_PARTS = frozenset({SHARED_GENERATOR, LAYER_GENERATOR})
# a cross-attention group (QD-DETR's T2V layers): generators and the +Linear control
CROSS_ATTENTION_PARTS = frozenset({SHARED_GENERATOR, LAYER_GENERATOR, LAYER_CONTROL})

PARTS_OF: dict[MaskType, frozenset[str]] = {
    MaskType.none: frozenset(),
    MaskType.global_: frozenset({SHARED_GENERATOR}),
    MaskType.multilayer: frozenset({LAYER_GENERATOR}),
    MaskType.sparse: frozenset({SPARSE_MASK}),
    MaskType.extra_linear: frozenset({LAYER_CONTROL}),
    MaskType.extra_layers: frozenset({EXTRA_LAYERS}),
}


def check_mask_backend(mask: MaskConfig, attention: AttentionConfig) -> None:
    """Stop at construction when the backend cannot run the mask (SDPA x multiplicative M)."""
    if attention.backend is Backend.sdpa and mask.uses_generator and mask.fusion is Fusion.mul:
        raise ValueError(SDPA_MUL_ERROR)


def full_attention(mask: MaskConfig) -> MaskConfig:
    """The same settings (fusion, backend-relevant fields) with no mask: ``mask=none``."""
    return replace(mask, type=MaskType.none, global_input=GlobalInput.encoder)


def supported_types(places: Collection[str]) -> list[str]:
    """The mask types whose parts a network that can hold ``places`` implements."""
    return [t.value for t in MaskType if PARTS_OF[t] <= frozenset(places)]


class MaskPlan:
    """What ``mask`` places in one network part, built once from the typed configs.

    Converts and checks the configs once (``as_mask_config``, the mask / backend pair, the
    mask types the network supports); the layers it feeds take it as given.

    Args:
        mask: the mask settings (a ``MaskConfig``, a mapping, or None = ``none``).
        attention: the backend settings (an ``AttentionConfig``, a mapping, or None = eager).
        dim: width D of the tokens the generators read (and of the +Linear control).
        num_heads: attention heads (one M per head with ``mask.per_head``).
        n_max: longest key sequence (the MLP generator's columns, the sparse mask's side);
            None where nothing is tied to a length (low-rank generator, no mask).
        context_dim: width of a cross-attention's key tokens (the low-rank generator reads
            them); None for self-attention.
        places: the parts this network can hold (``ALL_PARTS``, ``GENERATOR_PARTS``, ...).
        where: how errors name the network (e.g. ``"task=imagenet"``).
        fallback: a mask type this network cannot hold becomes full attention with a warning
            (QD-DETR's T2V layers under ``sparse`` / ``extra_layers``) instead of an error.
        num_extra_linear: Linear(D, D) per +Linear control (None: matched to one generator).
        num_extra_layers: extra layers of ``extra_layers`` (None: matched to a multi-layer
            STAMP's generators over the network's layers).
    """

    def __init__(
        self,
        mask: MaskConfig | object | None = None,
        attention: AttentionConfig | object | None = None,
        *,
        dim: int | None = None,
        num_heads: int = 1,
        n_max: int | None = None,
        context_dim: int | None = None,
        places: Collection[str] = ALL_PARTS,
        where: str = "this model",
        fallback: bool = False,
        num_extra_linear: int | None = None,
        num_extra_layers: int | None = None,
    ) -> None:
        self.mask = as_mask_config(mask)
        self.attention = as_attention_config(attention)
        self.dim, self.num_heads, self.n_max, self.context_dim = dim, num_heads, n_max, context_dim
        if not PARTS_OF[self.mask.type] <= frozenset(places):
            if not fallback:
                raise ValueError(
                    f"{where} supports mask types {supported_types(places)}, "
                    f"got mask.type={self.mask.type}"
                )
            log.warning("mask=%s has no form in %s: full attention there", self.mask.type, where)
            self.mask = full_attention(self.mask)
        check_mask_backend(self.mask, self.attention)
        if num_extra_layers is not None and num_extra_layers < 1:
            raise ValueError(f"num_extra_layers must be >= 1, got {num_extra_layers}")
        self.num_extra_linear, self.num_extra_layers = num_extra_linear, num_extra_layers
        self.parts = PARTS_OF[self.mask.type]  # the parts this plan places (none: empty)

    def attention_only(self) -> MaskPlan:
        """The plan for layers that only run the masked attention (fusion, backend): the
        network holds the parts itself (SwinBERT's generators over its STAMP scope)."""
        plan = copy.copy(self)
        plan.parts = frozenset()
        return plan

    def resized(self, dim: int, num_heads: int, n_max: int | None = None) -> MaskPlan:
        """The same plan for layers of another width (already checked: no second check)."""
        plan = copy.copy(self)
        plan.dim, plan.num_heads = dim, num_heads
        plan.n_max = self.n_max if n_max is None else n_max
        return plan

    def _generator(self) -> MaskGenerator:
        if self.dim is None:
            raise ValueError("MaskPlan: a STAMP generator needs dim (the token width)")
        return MaskGenerator.from_config(
            self.mask, self.dim, self.n_max, num_heads=self.num_heads, context_dim=self.context_dim
        )

    # ------------------------------------------------------------------ network-level parts
    def shared_generator(self) -> MaskGenerator | None:
        """``global``: the one generator of the network (held by the network)."""
        return self._generator() if SHARED_GENERATOR in self.parts else None

    def sparse_mask(self, n: int | None = None) -> SparseMask | None:
        """``sparse``: SwinBERT's static mask over ``n`` tokens (default ``n_max``)."""
        if SPARSE_MASK not in self.parts:
            return None
        return SparseMask(self.n_max if n is None else n)

    def aux_loss(self, sparse_mask: SparseMask | None) -> Tensor | None:
        """The weighted sparsity loss of ``sparse_mask`` (None without one)."""
        if sparse_mask is None:
            return None
        return self.mask.sparse_loss_weight * sparse_mask.sparsity_loss()

    def extra_layer_count(self, num_layers: int, probe: Callable[[], nn.Module]) -> int:
        """``extra_layers``: how many layers the control appends (0 for every other type):
        ``num_extra_layers``, else as many as match ``num_layers`` generators' parameters;
        ``probe`` builds one plain layer to count its parameters."""
        if EXTRA_LAYERS not in self.parts:
            return 0
        if self.num_extra_layers is not None:
            return self.num_extra_layers
        reference = generator_parameters(self.mask, self.dim, self.n_max, self.num_heads)
        layer_params = sum(p.numel() for p in probe().parameters())
        return matched_layer_count(num_layers * reference, layer_params)

    @staticmethod
    def init_extra_layer(layer: nn.Module) -> nn.Module:
        """Start an extra layer (a ``StampLayer``) at the base model's function: both residual
        branches output zero (exact identity for pre-norm layers; a post-norm layer then only
        re-normalises its input). Marked as a mask control for the parameter counts."""
        for linear in (layer.attn.proj, layer.ffn.fc2):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        layer.is_mask_control = True  # type: ignore[attr-defined]
        return layer

    # -------------------------------------------------------------------- per-layer parts
    def layer_generator(self) -> MaskGenerator | None:
        """``multilayer``: a layer's own generator."""
        return self._generator() if LAYER_GENERATOR in self.parts else None

    def layer_control(self) -> nn.Module | None:
        """``extra_linear``: the +Linear control after a layer's attention (``mask.linear_control``
        form), as many Linear(D, D) as match one generator of the configured form."""
        if LAYER_CONTROL not in self.parts:
            return None
        count = self.num_extra_linear
        if count is None:
            reference = generator_parameters(self.mask, self.dim, self.n_max, self.num_heads)
            count = matched_linear_count(self.dim, self.n_max, self.mask.depth, reference=reference)
        residual = self.mask.linear_control is LinearControl.residual
        control = mlp_stack(self.dim, count, residual=residual)
        control.is_mask_control = True  # type: ignore[attr-defined]
        return control

    def layer_parts(self) -> tuple[MaskGenerator | None, nn.Module | None]:
        """A layer's own generator and +Linear control (created in this order)."""
        return self.layer_generator(), self.layer_control()

    # ---------------------------------------------------------------------------- forward
    def layer_mask(
        self,
        index: int,
        x: Tensor,
        previous: Tensor | None = None,
        *,
        shared: Callable[[Tensor], Tensor] | None = None,
        own: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor | None:
        """M for layer ``index`` whose input is ``x``.

        Args:
            index: the layer's position in the network (0 = first).
            x: the layer's input tokens (B, N, D); at index 0 the network input.
            previous: the M the previous layer got (reused by ``global``).
            shared: the network's shared generator (``global``), as a callable on tokens.
            own: the layer's own generator (``multilayer``), as a callable on tokens.

        Returns:
            M (B, [H,] Nq, Nk), or None (no mask, or the layer computes its own).
        """
        if own is not None:
            return own(x)
        if shared is None:
            return None
        if index == 0 or self.mask.global_per_layer:
            return shared(x)
        return previous


def mask_memory_estimate(net: nn.Module, batch_size: int) -> tuple[int, int, int]:
    """(bytes, parameters, deepest) of the mask generators when training: fp32 weights,
    gradients and two AdamW moments (16 bytes a parameter) plus the kept activations
    (``MaskGenerator.activation_count``)."""
    total = params = deepest = 0
    for module in net.modules():
        if isinstance(module, MaskGenerator):
            n = sum(p.numel() for p in module.parameters())
            total += 16 * n + 4 * module.activation_count(batch_size)
            params += n
            deepest = max(deepest, module.depth)
    return total, params, deepest
