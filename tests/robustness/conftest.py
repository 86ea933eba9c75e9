"""Shared fixtures of the fault-injection tests: tiny data of each task, and one finished demo
run whose checkpoints the tests misuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import (
    DEMO_TINY,
    compose_cfg,
    run_cfg,
    single_torch_thread,  # noqa: F401  (autouse in this folder)
)

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"
DEMO = [*DEMO_TINY, "callbacks.progress_bar.refresh_rate=0", "mask=multilayer"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, dict]:
    """A finished 2-epoch demo run (multilayer, fusion mul, bound none): (run dir, record)."""
    out = tmp_path_factory.mktemp("demo_run")
    record = run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=2"], out))
    return out, record


@pytest.fixture(scope="session")
def qvh_features(tmp_path_factory) -> Path:
    """Synthetic features for the first 16 queries of each real annotation file."""
    from tasks.qvhighlights.synthetic import write_synthetic_features

    root = tmp_path_factory.mktemp("qvh")
    files = [ANN / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
    write_synthetic_features(
        files, root, {"slowfast_features": 16, "clip_features": 8}, text_dim=8, seed=0, limit=16
    )
    return root
