"""eval.py ckpt_path=<file> alone: the checkpoint's task, model, mask, attention, data and module
(evaluation) settings are restored from the config it carries, and the evaluation reproduces the
training run's validation metrics exactly, for a tiny run of every task trained with non-default
model sizes. Command-line overrides win; another model than the checkpoint's stays an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.common.runtime.checkpoints import (
    RUN_KEY,
    CheckpointConfigMismatch,
    checkpoint_overrides,
    read_checkpoint,
    split_argv,
    with_checkpoint_config,
)
from tasks.common.runtime.pipeline import evaluate
from tests.helpers import (
    CONFIG_DIR,
    compose_cfg,
    mad_ad_overrides,
    msrvtt_overrides,
    qvh_overrides,
    run_cfg,
    run_script,
)
from tests.robustness.conftest import DEMO

IGNORED = ("time", "gflops", "_ms")  # wall-clock metrics
# a demo model unlike the default one: every size changed, data dims too
DEMO_SIZED = [
    *DEMO,
    "trainer.max_epochs=1",
    "model.num_layers=1",
    "model.num_heads=2",
    "mask.depth=3",
    "mask.fusion=add",
    "data.visual_dim=12",
    "data.num_val=40",
]


def train_run(overrides: list[str], out: Path) -> tuple[dict, str]:
    """(results record, checkpoint) of a finished training run."""
    record = run_cfg(compose_cfg(overrides, out))
    assert record["status"] == "ok"
    return record, record["best"]["ckpt"] or str(out / "checkpoints" / "last.ckpt")


def eval_alone(ckpt: str, out: Path, *extra: str) -> dict:
    """eval.py's code path in-process: the pre-compose step, then evaluate()."""
    argv = with_checkpoint_config([f"ckpt_path={ckpt}", *extra], "eval")
    return run_cfg(compose_cfg(argv, out, config_name="eval"), fn=evaluate)


def assert_same_validation(trained: dict, evaluated: dict) -> None:
    keys = [
        k for k in trained["metrics"] if k.startswith("val/") and not any(w in k for w in IGNORED)
    ]
    assert keys
    for key in keys:
        assert evaluated["metrics"][key] == trained["metrics"][key], key  # exactly
    assert evaluated["checkpoint_config"]["checked"]
    assert evaluated["checkpoint_config"]["mismatch"] == {}


@pytest.fixture(scope="module")
def sized_demo(tmp_path_factory) -> tuple[dict, str]:
    return train_run(DEMO_SIZED, tmp_path_factory.mktemp("sized_demo"))


def test_demo_checkpoint_alone_reproduces_validation(sized_demo, tmp_path):
    trained, ckpt = sized_demo
    restored = checkpoint_overrides(ckpt, [f"ckpt_path={ckpt}"])
    assert restored[:2] == ["task=demo", "mask=multilayer"]
    # model.visual_dim is ${data.visual_dim}: restored through the data setting
    assert {"mask.depth=3", "mask.fusion=add", "model.num_layers=1", "data.visual_dim=12"} <= set(
        restored
    )
    assert not any(o.startswith("model.visual_dim") for o in restored)
    evaluated = eval_alone(ckpt, tmp_path)
    assert_same_validation(trained, evaluated)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "eval" and saved["depth"] == 3 and saved["fusion"] == "add"
    assert saved["config"]["model"]["num_layers"] == 1


def test_explicit_overrides_win_and_mismatch_stays_an_error(sized_demo, tmp_path):
    trained, ckpt = sized_demo
    # a setting that does not change the model: taken, evaluated
    restored = checkpoint_overrides(ckpt, [f"ckpt_path={ckpt}", "data.batch_size=8"])
    assert not any(o.startswith("data.batch_size") for o in restored)
    # another model: refused with the differing key, or recorded with allow_config_mismatch
    with pytest.raises(CheckpointConfigMismatch, match="mask.depth: checkpoint 3, requested 2"):
        eval_alone(ckpt, tmp_path / "a", "mask.depth=2")
    assert not (tmp_path / "a" / "results.json").exists()
    record = eval_alone(ckpt, tmp_path / "b", "mask.fusion=mul", "allow_config_mismatch=true")
    assert record["checkpoint_config"]["mismatch"] == {"mask.fusion": ["add", "mul"]}
    # another mask group or task: nothing of that group restored, the mismatch is listed
    with pytest.raises(CheckpointConfigMismatch, match="mask.type: checkpoint 'multilayer'"):
        eval_alone(ckpt, tmp_path / "c", "mask=global")
    assert checkpoint_overrides(ckpt, ["task=qvhighlights"]) == []
    # the checkpoint's own task and mask named as before: the rest still restored
    named = checkpoint_overrides(ckpt, ["task=demo", "mask=multilayer"])
    assert "mask.depth=3" in named and not any(o.startswith(("task=", "mask=")) for o in named)


def test_checkpoint_without_data_settings_restores_through_interpolations(sized_demo, tmp_path):
    """Checkpoints written before the data settings were stored: a model key that interpolates
    a data key (model.visual_dim: ${data.visual_dim}) sets that data key."""
    _, ckpt = sized_demo
    old = dict(read_checkpoint(ckpt))
    del old[RUN_KEY]
    file = tmp_path / "old.ckpt"
    torch.save(old, file)
    restored = checkpoint_overrides(file, [])
    assert "data.visual_dim=12" in restored and "model.num_layers=1" in restored
    assert not any(o.startswith("data.num_val") for o in restored)  # not stored: not known


def test_argv_flags_and_unreadable_checkpoints(sized_demo, tmp_path):
    _, ckpt = sized_demo
    argv = ["--cfg", "job", "-m", f"ckpt_path={ckpt}", "split=val"]
    assert split_argv(argv) == ([f"ckpt_path={ckpt}", "split=val"], [3, 4])
    out = with_checkpoint_config(argv)
    assert out[:3] == ["--cfg", "job", "-m"] and out[3:5] == ["task=demo", "mask=multilayer"]
    assert out[-2:] == argv[-2:]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    # left to the run to report (it names the file)
    assert with_checkpoint_config([f"ckpt_path={bad}"]) == [f"ckpt_path={bad}"]
    assert with_checkpoint_config(["ckpt_path=/nonexistent.ckpt"]) == [
        "ckpt_path=/nonexistent.ckpt"
    ]


@pytest.mark.slow
def test_eval_py_command_line_with_the_checkpoint_alone(sized_demo, tmp_path):
    trained, ckpt = sized_demo
    done = run_script(["eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "from checkpoint" in done.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    assert_same_validation(trained, saved)


@pytest.mark.slow
def test_qvhighlights_checkpoint_alone(qvh_features, tmp_path):
    overrides = [
        *qvh_overrides(qvh_features),
        "trainer.max_epochs=2",
        "model.hidden_dim=24",
        "model.t2v_layers=1",
        "model.dec_layers=1",
        "model.num_queries=6",
        "mask.depth=3",
        "module.max_ts=120",
    ]
    trained, ckpt = train_run(overrides, tmp_path / "train")
    assert_same_validation(trained, eval_alone(ckpt, tmp_path / "eval"))


@pytest.mark.slow
def test_imagenet_checkpoint_alone(tmp_path):
    from scripts.make_imagenet_folder import make_imagenet_folder

    root = make_imagenet_folder(
        tmp_path / "imagenet", num_classes=4, train_per_class=8, val_per_class=2, size=40
    )
    overrides = [
        "experiment=imagenet_tiny",
        "mask=multilayer",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=1",
        "model.embed_dim=48",
        "model.depth=1",
        "mask.depth=3",
    ]
    trained, ckpt = train_run(overrides, tmp_path / "train")
    assert_same_validation(trained, eval_alone(ckpt, tmp_path / "eval"))


@pytest.mark.slow
def test_msrvtt_checkpoint_alone(tmp_path):
    from scripts.make_msrvtt_videos import make_dataset

    root = make_dataset(tmp_path / "msrvtt")
    overrides = [
        *msrvtt_overrides(root),
        "model.img_feature_dim=24",
        "mask.depth=3",
    ]
    trained, ckpt = train_run(overrides, tmp_path / "train")
    assert_same_validation(trained, eval_alone(ckpt, tmp_path / "eval"))


@pytest.mark.slow
def test_mad_ad_checkpoint_alone(tmp_path):
    overrides = [
        *mad_ad_overrides(tmp_path, max_epochs=2),
        "model.adapter_layers=1",
        "mask.depth=3",
    ]
    trained, ckpt = train_run(overrides, tmp_path / "train")
    assert_same_validation(trained, eval_alone(ckpt, tmp_path / "eval"))


@pytest.mark.slow
def test_ave_checkpoint_alone(tmp_path):
    from scripts.make_ave_data import make_dataset

    root = make_dataset(tmp_path / "ave", videos=8, split=(4, 2, 2))
    overrides = [
        "experiment=ave_tiny",
        "model=mbt",
        "mask=multilayer",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "model.vit_depth=1",
        "mask.depth=3",
        "test=false",
    ]
    trained, ckpt = train_run(overrides, tmp_path / "train")
    assert_same_validation(trained, eval_alone(ckpt, tmp_path / "eval"))


@pytest.mark.parametrize("config_name", ["eval", "predict"])
def test_eval_and_predict_configs_compose_with_every_task(config_name, tmp_path):
    tasks = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
    assert {"demo", "qvhighlights", "imagenet", "msrvtt", "mad_ad", "ave"} <= set(tasks)
    for task in tasks:
        cfg = compose_cfg([f"task={task}", "ckpt_path=x.ckpt"], tmp_path, config_name)
        assert cfg.task_name == task and cfg.ckpt_path == "x.ckpt"


def test_predict_names_the_tasks_it_covers(sized_demo):
    from tasks.common.launch.predict import Predictor

    _, ckpt = sized_demo
    with pytest.raises(ValueError, match="no single-input prediction for task 'demo'.*imagenet"):
        Predictor.from_checkpoint(ckpt)
