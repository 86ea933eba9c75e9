"""Shared fixtures of the MSR-VTT task tests: generated tiny videos and a tiny SwinBERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.make_msrvtt_videos import make_dataset
from stamp import MaskConfig
from tasks.msrvtt.model import SwinBERT

os.environ["HF_HUB_OFFLINE"] = "1"

NUM_FRAMES, IMG_RES, MAX_TEXT = 4, 32, 12
TINY_BACKBONE = dict(
    arch="custom", embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 4, 4]
)
TINY_BERT = dict(
    path=None,
    config=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
)
N_VIDEO = (NUM_FRAMES // 2) * (IMG_RES // 8) ** 2  # patch (2,4,4), one PatchMerging: 2 x 4 x 4


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The generated MSR-VTT look-alike (4 train, 2 validate, 2 test videos + vocab.txt)."""
    return make_dataset(tmp_path_factory.mktemp("msrvtt") / "msrvtt_tiny")


@pytest.fixture
def make_model(tiny_data):
    def build(mask: str = "none", **kwargs) -> SwinBERT:
        mask_cfg = kwargs.pop("mask_cfg", None) or MaskConfig(type=mask, depth=2)
        defaults = dict(
            tokenizer_path=str(tiny_data),
            backbone=TINY_BACKBONE,
            bert=TINY_BERT,
            num_frames=NUM_FRAMES,
            img_res=IMG_RES,
            max_text_len=MAX_TEXT,
            max_gen_len=6,
            mask=mask_cfg,
        )
        return SwinBERT(**{**defaults, **kwargs})

    return build
