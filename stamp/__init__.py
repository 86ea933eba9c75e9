"""STAMP: a learnable soft attention mask fused with the logits before the softmax.

Pure PyTorch; the Lightning/Hydra pipeline lives in ``tasks``.
"""

from stamp.attention import (
    ATTENTION_BACKENDS,
    StampAttention,
    eager_attention,
    flex_attention_backend,
    fuse_logits,
    resolve_backend,
    sdpa_attention,
)
from stamp.config import (
    AttentionConfig,
    Backend,
    Fusion,
    FusionOrder,
    GeneratorKind,
    MaskBound,
    MaskConfig,
    MaskInit,
    MaskType,
    as_attention_config,
    as_mask_config,
)
from stamp.layers import (
    DropPath,
    FeedForward,
    StampCrossAttentionLayer,
    StampEncoder,
    StampEncoderLayer,
    check_mask_backend,
    collect_aux_loss,
    layer_mask_kwargs,
    layer_mask_modules,
)
from stamp.mask import (
    LowRankMaskGenerator,
    MaskGenerator,
    SparseMask,
    identity_preactivation,
    init_mask_generators,
    mask_parameter_count,
    matched_layer_count,
    matched_linear_count,
)
from stamp.record import record_attention

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionConfig",
    "Backend",
    "DropPath",
    "FeedForward",
    "Fusion",
    "FusionOrder",
    "GeneratorKind",
    "LowRankMaskGenerator",
    "MaskBound",
    "MaskConfig",
    "MaskGenerator",
    "MaskInit",
    "MaskType",
    "SparseMask",
    "StampAttention",
    "StampCrossAttentionLayer",
    "StampEncoder",
    "StampEncoderLayer",
    "as_attention_config",
    "as_mask_config",
    "check_mask_backend",
    "collect_aux_loss",
    "eager_attention",
    "flex_attention_backend",
    "fuse_logits",
    "identity_preactivation",
    "init_mask_generators",
    "layer_mask_kwargs",
    "layer_mask_modules",
    "mask_parameter_count",
    "matched_layer_count",
    "matched_linear_count",
    "record_attention",
    "resolve_backend",
    "sdpa_attention",
]
