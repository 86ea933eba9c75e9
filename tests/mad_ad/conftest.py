"""Fixtures of the MAD AD tests: a tiny random LLaMA (2 layers, width 64) with an offline BPE
tokenizer, and synthetic MAD-format files (2 validation movies of 16 ADs: one R@5/16 window)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from tasks.mad_ad.synthetic import build_tiny_llama, write_synthetic_mad  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def mad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mad")
    # with the rows AutoAD-II adjusts or skips, as in the released MAD-v2 csv files
    write_synthetic_mad(out, train_movies=1, test_movies=1, ads_per_movie=16, dim=16, quirks=True)
    return out
