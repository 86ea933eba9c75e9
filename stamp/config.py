"""Typed settings of the STAMP core.

The dataclasses here are plain Python (no Hydra import); ``tasks.common.runtime.schemas``
registers them as Hydra structured-config schemas so that an invalid value stops at start-up
with the valid choices listed. Choices are ``str`` enums because OmegaConf validates enums (not
``Literal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


# Built with the functional API because ``global`` is a Python keyword: OmegaConf validates an
# enum field by member *name*, so the member must be called "global" for ``mask=global`` to
# compose. In code, use ``MaskType.global_`` (an alias of the same member).
MaskType = _StrEnum(
    "MaskType",
    [
        ("none", "none"),  # full attention
        ("global", "global"),  # one generator on the encoder input, shared by every layer
        ("multilayer", "multilayer"),  # one generator per layer, on its input (paper's model)
        ("sparse", "sparse"),  # SwinBERT's static learnable sparse mask + sparsity loss
        ("extra_linear", "extra_linear"),  # Table 3 control: extra linear layers after attention
        ("extra_layers", "extra_layers"),  # Table 3 control: extra transformer layers
        ("global_", "global"),  # alias usable as an attribute
    ],
    module=__name__,
)
MaskType.__doc__ = "Which attention mask a model uses (``mask=`` in the configs)."
# What a mask mode is, for code outside stamp/ that reads a run's ``mask`` (tables, plots): ask
# these instead of comparing names. A control (extra_linear / extra_layers) has no generator but
# is sized after one (``mask.depth``, the generator form), so its generator settings describe it.
MaskType.is_full_attention = property(lambda self: self is MaskType.none)
MaskType.uses_generator = property(lambda self: self in (MaskType.global_, MaskType.multilayer))
MaskType.has_generator_settings = property(
    lambda self: self not in (MaskType.none, MaskType.sparse)
)


class Fusion(_StrEnum):
    """How the soft mask M is fused with the attention logits, before the softmax."""

    mul = "mul"  # softmax((QK^T / sqrt(d)) * M)   (paper default)
    add = "add"  # softmax((QK^T / sqrt(d)) + M)


class MaskBound(_StrEnum):
    """Optional bound on M. The paper leaves M unconstrained (``none``)."""

    none = "none"
    sigmoid = "sigmoid"  # M in (0, 1): a multiplicative mask can only damp a logit
    softplus = "softplus"  # M > 0: never flips a logit's sign


class MaskInit(_StrEnum):
    """Initialisation of the generator F (the paper does not specify one).

    ``torch``: PyTorch's default Linear init (reproduces the paper as written). Through a deep
    ReLU stack it shrinks the signal, so at depth 16 / 32 M is practically the last layer's bias:
    a constant, token-independent mask.
    ``kaiming``: He fan-in on the ReLU layers (variance-preserving), unit-gain fan-in on the last
    layer, its bias at the fusion's identity: M = identity + a token-dependent term of the
    inputs' scale, at any depth.
    ``identity``: the hidden layers as ``kaiming``, the last layer's weight zero and its bias at
    the identity: M is exactly the identity at step 0 (a pretrained model keeps its function)
    and the gradient reaches every layer from the first optimizer step on.
    """

    torch = "torch"
    kaiming = "kaiming"
    identity = "identity"


class FusionOrder(_StrEnum):
    """Where an additive bias (causal, SwinBERT's sparse bias) enters relative to M.

    ``mask_first`` (this project's default): ``(logits ◇ M) + bias``. ``bias_first`` (the
    authors' rebuttal code): ``(logits + bias) ◇ M``. Identical when there is no bias or with
    ``fusion=add``. Key padding is always applied after both, as -inf.
    """

    mask_first = "mask_first"
    bias_first = "bias_first"


class GeneratorKind(_StrEnum):
    """The form of the generator F (``mask.generator``).

    ``mlp`` (paper): a ReLU MLP from each query token to one logit per key *position*; its last
    layer has ``n_max`` outputs, so the model is tied to a longest sequence.
    ``lowrank``: M = c + f(X_q) g(X_k)^T / sqrt(r): token-wise rank-``r`` factors of the query and
    key tokens (the same hidden ReLU stack), so M depends on both tokens, any sequence length
    is accepted and the parameters do not depend on N.
    """

    mlp = "mlp"
    lowrank = "lowrank"


class LinearControl(_StrEnum):
    """The form of the Table 3 "+Linear" control (``mask=extra_linear``), its
    ``mask.linear_control``.

    ``residual`` (default, the fair control): ``x + MLP(x)``, the last Linear zero-initialised,
    so the model starts at the base model's function. ``plain`` (the paper's description,
    ``mask=extra_linear_plain``): the Linear/ReLU stack replaces the attention output, PyTorch's
    default init, no residual (what made the paper's CIDEr drop to 12.87).
    """

    residual = "residual"
    plain = "plain"


class GlobalInput(_StrEnum):
    """What the single generator of ``mask=global`` reads (``mask.global_input``).

    ``encoder`` (default; the ACL paper's reading of "global"): M is computed once from the
    encoder input and the same M is used by every layer. ``layer`` (the rebuttal's reading: one
    shared generator "re-applied" at each layer): the same generator (one set of weights) is
    applied to every layer's own input, so each layer gets its own M from shared parameters.
    """

    encoder = "encoder"
    layer = "layer"


class Backend(_StrEnum):
    """Attention implementation (``attention=`` in the configs)."""

    eager = "eager"  # explicit logits; reference; can return attention probabilities
    sdpa = "sdpa"  # torch.nn.functional.scaled_dot_product_attention (additive masks only)
    flex = "flex"  # torch.nn.attention.flex_attention with a score_mod reading M (fused)
    fused = "fused"  # stamp.fused: blocked custom autograd, no B·H·N² tensor kept (any device)
    # stamp.fused with each block's body under torch.compile (inductor fuses the element-wise
    # passes around the matmuls); the same blocks, nothing B·H·N² kept
    compiled_fused = "compiled_fused"


@dataclass(frozen=True)
class AttendSpec:
    """One attention call's inputs besides q, k and v: what every backend of
    ``stamp.attention`` takes (``eager_attention(q, k, v, AttendSpec(mask=M))``).

    Args:
        mask: M (B, Nq, Nk), shared by the heads, or (B, H, Nq, Nk); None: no mask.
        fusion: ``mul`` (paper) or ``add``.
        fusion_order: where ``attn_bias`` enters relative to M.
        key_padding_mask: (B, Nk) bool, True at padded keys.
        attn_bias: an additive bias broadcastable to (B, H, Nq, Nk).
        dropout_p: attention-probability dropout (0 outside training).
        return_attn: also return the probabilities (B, H, Nq, Nk); the eager path only.
    """

    mask: Tensor | None = None
    fusion: Fusion = Fusion.mul
    fusion_order: FusionOrder = FusionOrder.mask_first
    key_padding_mask: Tensor | None = None
    attn_bias: Tensor | None = None
    dropout_p: float = 0.0
    return_attn: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fusion", Fusion(self.fusion))
        object.__setattr__(self, "fusion_order", FusionOrder(self.fusion_order))

    @property
    def mul(self) -> bool:
        return self.fusion is Fusion.mul

    @property
    def bias_first(self) -> bool:
        """The bias enters before M (``FusionOrder.bias_first``, and there is a bias)."""
        return self.attn_bias is not None and self.fusion_order is FusionOrder.bias_first

    @property
    def mask4d(self) -> Tensor | None:
        """M with a head dim: (B, 1 | H, Nq, Nk)."""
        m = self.mask
        return m if m is None or m.dim() == 4 else m.unsqueeze(1)


class _DefaultInit(str):
    """The default of ``MaskConfig.init``: reads ``"torch"`` (the task models' init) but is told
    apart from an explicit value, so that ``stamp.inject`` starts at the identity unless an init
    was asked for (``MaskConfig.init_given``)."""


_DEFAULT_INIT = _DefaultInit("torch")


def _choices(enum: type[Enum]) -> str:
    return ", ".join(e.value for e in enum)


def _as_enum(enum: type[Enum], value: object, field: str) -> Enum:
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except ValueError:
        raise ValueError(
            f"{field}={value!r} is not valid; choose one of: {_choices(enum)}"
        ) from None


@dataclass
class MaskConfig:
    """Settings of the soft attention mask.

    ``depth`` is the number of linear layers L of the generator F (1 = a single Linear(D -> N)).
    ``hidden`` is its hidden width; ``None`` means the model width (paper).
    The controls (``extra_linear``, ``extra_layers``) are sized to match the parameters of a
    multi-layer STAMP of the same ``depth``.
    """

    type: MaskType = MaskType.multilayer
    depth: int = 2
    hidden: int | None = None
    fusion: Fusion = Fusion.mul
    bound: MaskBound = MaskBound.none
    init: MaskInit = _DEFAULT_INIT  # type: ignore[assignment]  # torch; see init_given
    fusion_order: FusionOrder = FusionOrder.mask_first
    generator: GeneratorKind = GeneratorKind.mlp
    rank: int = 16  # r of mask.generator=lowrank (per head when per_head)
    per_head: bool = False  # one M per attention head (B, H, Nq, Nk) instead of one shared
    sparse_loss_weight: float = 0.5  # SwinBERT's weight of the sparsity loss (mask=sparse)
    linear_control: LinearControl = LinearControl.residual  # the +Linear control's form
    # recompute the generator's hidden activations in the backward (torch.utils.checkpoint):
    # the same function and gradients, ~1/depth of its activation memory, one more forward
    checkpoint: bool = False
    # mask=global only: M once from the encoder input (encoder, ACL) or the shared generator
    # re-applied to each layer's input (layer, rebuttal); see GlobalInput
    global_input: GlobalInput = GlobalInput.encoder

    def __post_init__(self) -> None:
        self.type = _as_enum(MaskType, self.type, "mask.type")
        self.fusion = _as_enum(Fusion, self.fusion, "mask.fusion")
        self.bound = _as_enum(MaskBound, self.bound, "mask.bound")
        self.init_given = self.init is not _DEFAULT_INIT  # (not a field: not saved or compared)
        self.init = _as_enum(MaskInit, self.init, "mask.init")
        self.fusion_order = _as_enum(FusionOrder, self.fusion_order, "mask.fusion_order")
        self.generator = _as_enum(GeneratorKind, self.generator, "mask.generator")
        self.linear_control = _as_enum(LinearControl, self.linear_control, "mask.linear_control")
        self.global_input = _as_enum(GlobalInput, self.global_input, "mask.global_input")
        if self.global_input is GlobalInput.layer and self.type is not MaskType.global_:
            raise ValueError(
                f"mask.global_input=layer re-applies the one generator of mask=global at every "
                f"layer; mask.type={self.type} has no shared generator (use mask=global)"
            )
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"mask.rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"mask.depth must be an integer >= 1, got {self.depth!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"mask.hidden must be >= 1 or null (model width), got {self.hidden}")
        if self.sparse_loss_weight < 0:
            raise ValueError(f"mask.sparse_loss_weight must be >= 0, got {self.sparse_loss_weight}")

    @property
    def uses_generator(self) -> bool:
        return self.type in (MaskType.global_, MaskType.multilayer)

    @property
    def global_per_layer(self) -> bool:
        """``mask=global`` with the generator re-applied to each layer's input (rebuttal)."""
        return self.type is MaskType.global_ and self.global_input is GlobalInput.layer


@dataclass
class AttentionConfig:
    """Settings of the attention implementation.

    ``compile`` wraps the eager path in ``torch.compile`` (it trains on CPU too).
    ``flex_cpu_training``: torch implements only flex attention's forward on CPU. ``error`` stops
    with a message when a backward through flex is requested on CPU; ``eager`` falls back to the
    eager path for such steps (logged once), so a CPU run can train with ``attention=flex`` and
    still evaluate through the fused kernel.
    """

    backend: Backend = Backend.eager
    compile: bool = False
    flex_cpu_training: str = "error"

    def __post_init__(self) -> None:
        self.backend = _as_enum(Backend, self.backend, "attention.backend")
        if self.flex_cpu_training not in ("error", "eager"):
            raise ValueError(
                "attention.flex_cpu_training must be one of: error, eager; "
                f"got {self.flex_cpu_training!r}"
            )


def as_mask_config(cfg: object | None) -> MaskConfig:
    """Accept a MaskConfig, a mapping (e.g. an OmegaConf node) or None (= mask none)."""
    if cfg is None:
        return MaskConfig(type=MaskType.none)
    if isinstance(cfg, MaskConfig):
        return cfg
    return MaskConfig(**{k: cfg[k] for k in cfg})  # type: ignore[index]


def as_attention_config(cfg: object | None) -> AttentionConfig:
    """Accept an AttentionConfig, a mapping or None (= eager)."""
    if cfg is None:
        return AttentionConfig()
    if isinstance(cfg, AttentionConfig):
        return cfg
    return AttentionConfig(**{k: cfg[k] for k in cfg})  # type: ignore[index]
