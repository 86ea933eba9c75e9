"""Shared fixtures of the ImageNet task tests: a tiny ViT configuration and its timm twin."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

os.environ["HF_HUB_OFFLINE"] = "1"

TINY = dict(img_size=32, patch_size=16, num_classes=10, embed_dim=64, depth=2, num_heads=4)
TOKENS = (32 // 16) ** 2 + 1  # the generators' n_max


def timm_vit(**overrides) -> VisionTransformer:
    """timm's ViT as MAE fine-tunes it (global average pool + fc_norm, LN eps 1e-6)."""
    kwargs = {**TINY, "global_pool": "avg", **overrides}
    return VisionTransformer(**kwargs, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
