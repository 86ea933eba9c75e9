"""Checkpoints know their model: eval.py and resuming refuse a checkpoint trained with another
model config (each differing key listed), unless allow_config_mismatch=true (recorded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.common.runtime.checkpoints import (
    CONFIG_KEY,
    CheckpointConfigMismatch,
    config_differences,
    read_checkpoint,
    suggested_overrides,
    training_overrides,
)
from tasks.common.runtime.pipeline import evaluate
from tests.helpers import compose_cfg, run_cfg
from tests.robustness.conftest import DEMO

EVAL = [o for o in DEMO if not o.startswith("callbacks")]


def _best(run: tuple[Path, dict]) -> str:
    return run[1]["best"]["ckpt"]


def test_checkpoint_stores_the_resolved_model_config(demo_run):
    stored = torch.load(_best(demo_run), map_location="cpu", weights_only=True)[CONFIG_KEY]
    assert stored["task_name"] == "demo"
    assert stored["mask"]["type"] == "multilayer" and stored["mask"]["fusion"] == "mul"
    assert stored["mask"]["depth"] == 2 and stored["mask"]["bound"] == "none"
    assert stored["model"]["dim"] == 32 and stored["model"]["num_layers"] == 2


@pytest.mark.parametrize(
    "overrides,keys",
    [
        (["mask.fusion=add"], ["mask.fusion"]),
        (["mask.bound=sigmoid", "mask.depth=3"], ["mask.bound", "mask.depth"]),
    ],
)
def test_eval_refuses_a_checkpoint_of_another_model(demo_run, tmp_path, overrides, keys):
    cfg = compose_cfg(
        [*EVAL, *overrides, f"ckpt_path={_best(demo_run)}"], tmp_path, config_name="eval"
    )
    with pytest.raises(CheckpointConfigMismatch) as info:
        run_cfg(cfg, fn=evaluate)
    message = str(info.value)
    for key in keys:
        assert f"  {key}: checkpoint " in message
    assert "mask.fusion: checkpoint 'mul', requested 'add'" in message or keys != ["mask.fusion"]
    assert "allow_config_mismatch=true" in message
    assert not (tmp_path / "results.json").exists()  # nothing evaluated, nothing reported


def test_allow_config_mismatch_is_recorded(demo_run, tmp_path):
    cfg = compose_cfg(
        [*EVAL, "mask.fusion=add", "allow_config_mismatch=true", f"ckpt_path={_best(demo_run)}"],
        tmp_path,
        config_name="eval",
    )
    record = run_cfg(cfg, fn=evaluate)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and saved["kind"] == "eval" and saved["allow_config_mismatch"]
    assert saved["checkpoint_config"]["mismatch"] == {"mask.fusion": ["mul", "add"]}
    assert record["metrics"]["val/acc"] == saved["metrics"]["val/acc"]


def test_eval_with_the_right_config_passes_the_check(demo_run, tmp_path):
    cfg = compose_cfg([*EVAL, f"ckpt_path={_best(demo_run)}"], tmp_path, config_name="eval")
    record = run_cfg(cfg, fn=evaluate)
    assert record["checkpoint_config"] == {"checked": True, "mismatch": {}, "epoch": 1} or (
        record["checkpoint_config"]["checked"] and not record["checkpoint_config"]["mismatch"]
    )
    assert record["metrics"]["val/acc"] == pytest.approx(demo_run[1]["metrics"]["val/acc"])
    assert record["kind"] == "eval" and demo_run[1]["kind"] == "train"


def test_resume_refuses_a_checkpoint_of_another_model(demo_run, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(demo_run[0] / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    cfg = compose_cfg([*DEMO, "trainer.max_epochs=3", "mask.bound=sigmoid", "ckpt_path=last"], run)
    with pytest.raises(CheckpointConfigMismatch, match="mask.bound: checkpoint 'none'"):
        run_cfg(cfg)


@pytest.mark.parametrize("size", [0, 200])
def test_empty_or_truncated_checkpoint_is_a_clear_error(demo_run, tmp_path, size):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(Path(_best(demo_run)).read_bytes()[:size])
    message = r"is empty \(0 bytes\)" if size == 0 else "cannot be read: truncated"
    with pytest.raises(ValueError, match=message) as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value)
    cfg = compose_cfg([*EVAL, f"ckpt_path={bad}"], tmp_path / "eval", config_name="eval")
    with pytest.raises(ValueError, match=message):
        run_cfg(cfg, fn=evaluate)


def test_config_differences_ignore_paths_and_eval_free_settings():
    stored = {"model": {"dim": 8, "dropout": 0.1, "llm_path": "/a"}, "mask": {"fusion": "mul"}}
    asked = {"model": {"dim": 8, "dropout": 0.0, "llm_path": "/b"}, "mask": {"fusion": "mul"}}
    assert config_differences(stored, asked, evaluation=True) == {}
    assert config_differences(stored, asked, evaluation=False) == {"model.dropout": (0.1, 0.0)}
    extra = {**asked, "mask": {"fusion": "mul", "init": "identity"}}
    assert config_differences(stored, extra) == {
        "mask.init": ("<absent>", "identity"),
        "model.dropout": (0.1, 0.0),
    }


def test_eval_mismatch_gives_the_overrides_that_work(demo_run, tmp_path):
    """eval.py without the training run's model overrides (model.dim=32 ...) stops with the
    overrides to add; with them, the checkpoint evaluates to the training run's metric."""
    base = [o for o in EVAL if not o.startswith("model.")]
    ckpt = f"ckpt_path={_best(demo_run)}"
    with pytest.raises(CheckpointConfigMismatch) as info:
        run_cfg(compose_cfg([*base, ckpt], tmp_path / "a", config_name="eval"), fn=evaluate)
    add = str(info.value).split("to the command line:\n  ", 1)[1].splitlines()[0].split()
    assert sorted(add) == ["model.dim=32", "model.ffn_dim=64"]
    cfg = compose_cfg([*base, *add, ckpt], tmp_path / "b", config_name="eval")
    record = run_cfg(cfg, fn=evaluate)
    assert record["metrics"]["val/acc"] == pytest.approx(demo_run[1]["metrics"]["val/acc"])


def test_suggested_overrides_and_the_training_runs_overrides(tmp_path):
    diffs = {
        "mask.depth": (3, 2),
        "mask.type": ("global", "multilayer"),
        "model.hidden": (None, 8),
        "model.sizes": ([1, 2], [3]),
        "model.name": ("a b", "c"),
        "mask.init": ("<absent>", "kaiming"),
        "task_name": ("mad_ad", "demo"),
    }
    assert suggested_overrides(diffs) == [
        "mask=global",
        "task=mad_ad",
        "mask.depth=3",
        "model.hidden=null",
        "model.sizes=[1,2]",
        "model.name='a b'",
    ]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert training_overrides(run / "checkpoints" / "best.ckpt") is None
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model.dim=32\n- logger=csv\n")
    file, overrides = training_overrides(run / "checkpoints" / "best.ckpt")
    assert overrides == ["model.dim=32", "logger=csv"] and file.name == "overrides.yaml"
