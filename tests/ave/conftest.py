"""Shared fixtures of the AVE task tests: the generated tiny AVE in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.make_ave_data import make_dataset


@pytest.fixture(scope="session")
def tiny_ave(tmp_path_factory) -> Path:
    """16 videos (8 train / 4 val / 4 test), Annotations.txt with the AVE zip's header line."""
    return make_dataset(tmp_path_factory.mktemp("ave") / "ave_tiny")


@pytest.fixture(scope="session")
def tiny_ave_no_header(tmp_path_factory) -> Path:
    """The same videos with LAVISH's header-less Annotations.txt."""
    return make_dataset(tmp_path_factory.mktemp("ave_nh") / "ave_tiny", header=False)


@pytest.fixture(scope="session")
def small_ave(tmp_path_factory) -> Path:
    """8 videos (4 train / 2 val / 2 test) for the training runs."""
    return make_dataset(tmp_path_factory.mktemp("ave_s") / "ave_small", videos=8, split=(4, 2, 2))
