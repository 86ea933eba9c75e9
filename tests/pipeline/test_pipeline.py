"""The Hydra + Lightning pipeline on the demo task: results files, resume, multirun, errors."""

from __future__ import annotations

import json
import time

import pytest
from omegaconf import open_dict

from tests.helpers import ROOT, compose_cfg, run_cfg, run_script

# a small, fast version of the demo (same code path as `python train.py`)
TINY = [
    "logger=csv",
    "data.num_train=256",
    "data.num_val=128",
    "data.num_test=128",
    "data.batch_size=32",
    "model.dim=32",
    "model.ffn_dim=64",
    "callbacks.progress_bar.refresh_rate=0",
]


def test_demo_run_writes_results_and_checkpoints(tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_epochs=2", "mask=multilayer", "test=true"], tmp_path)
    record = run_cfg(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and record["status"] == "ok"
    assert saved["task"] == "demo" and saved["mask"] == "multilayer" and saved["fusion"] == "mul"
    assert {"val/acc", "val/loss", "test/acc"} <= set(saved["metrics"])
    assert 0.0 <= saved["metrics"]["val/acc"] <= 1.0
    assert saved["params"]["params/mask"] > 0
    assert saved["effective_batch"] == {
        "per_device": 32,
        "world_size": 1,
        "accumulate_grad_batches": 1,
        "effective_batch": 32,
    }
    assert saved["config"]["mask"]["type"] == "multilayer"  # resolved config kept
    assert saved["best"]["metric"] == "val/acc" and saved["best"]["ckpt"].endswith(".ckpt")
    ckpts = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    assert (tmp_path / "csv" / "metrics.csv").exists()
    # mask diagnostics of each STAMP layer, in results.json and as logged curves
    from stamp.diagnostics import STAT_NAMES

    stats = saved["mask_stats"]
    assert list(stats) == ["encoder.layers.0.attn", "encoder.layers.1.attn"]
    for row in stats.values():
        assert set(STAT_NAMES) <= set(row) and row["grad_norm_first"] > 0
        assert row["mean_abs"] > 0 and 0 <= row["neg_share"] <= 1 and row["entropy"] > 0
        # where the mask puts its weight: the demo labels its keys (tests/diagnostics)
        assert {"M_relevant", "attn_relevant", "attn_relevant_noM", "share_irrelevant"} <= set(row)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "mask/encoder.layers.1.attn/token_dependence" in header


def test_resumed_run_ends_with_the_same_metrics(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=4", "mask=multilayer", "model.dropout=0.2"]
    full = run_cfg(compose_cfg(overrides, tmp_path / "full"))

    interrupted = compose_cfg(overrides, tmp_path / "resumed")
    with open_dict(interrupted):
        interrupted.callbacks.interrupt = {
            "_target_": "tasks.common.runtime.callbacks.InterruptAtEpoch",
            "epoch": 2,
        }
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_cfg(interrupted)
    resumed = run_cfg(compose_cfg([*overrides, "ckpt_path=last"], tmp_path / "resumed"))
    assert resumed["epochs"] == full["epochs"] == 4
    for key in ("val/acc", "val/loss", "train/loss_epoch"):
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], rel=1e-6, abs=1e-7)


def test_missing_last_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose_cfg([*TINY, "ckpt_path=last"], tmp_path)
    with pytest.raises(FileNotFoundError, match="hydra.run.dir=<that run's directory>"):
        run_cfg(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("mask.fusion=foo", "expected one of [mul, add]"),
        ("mask.depth=0", "mask.depth must be an integer >= 1"),
        ("attention=bogus", "Could not find 'attention/bogus'"),
        ("mask=bogus", "Could not find 'mask/bogus'"),
        ("attention=flex", "implements only the forward of flex attention on CPU"),
        ("attention=sdpa", "attention=sdpa cannot fuse a multiplicative mask"),
    ],
)
def test_invalid_settings_stop_at_startup(override, message, tmp_path):
    start = time.time()
    proc = run_script(["train.py", override, f"paths.log_dir={tmp_path}"], timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert message in output, output[-2000:]
    assert time.time() - start < 60
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def test_invalid_choice_lists_the_valid_ones():
    proc = run_script(["train.py", "attention=bogus"], timeout=120)
    out = proc.stdout + proc.stderr
    for choice in ("eager", "sdpa", "flex"):
        assert choice in out


def test_multirun_reports_a_failed_job_and_keeps_the_others(tmp_path):
    """mask.depth=0 fails validation in its job; the other jobs finish and are summarised."""
    proc = run_script(
        [
            "train.py",
            "-m",
            "mask=none,multilayer",
            "mask.depth=2,0",
            *TINY,
            "logger=many",
            "trainer.max_epochs=1",
            f"paths.log_dir={tmp_path}",
        ],
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    results = sorted(tmp_path.rglob("results.json"))
    records = [json.loads(p.read_text()) for p in results]
    assert len(records) == 4
    status = {(r["mask"], r["depth"]): r["status"] for r in records}
    assert status[("multilayer", 0)] == "failed"
    assert status[("multilayer", 2)] == "ok" and status[("none", 2)] == "ok"
    assert status[("none", 0)] == "failed"  # depth is validated for every mask type
    failed = next(r for r in records if r["status"] == "failed")
    assert "mask.depth must be an integer >= 1" in failed["error"]
    summary = next(tmp_path.rglob("summary.md")).read_text()
    assert summary.count("| ok |") == 2 and summary.count("| failed |") == 2
    assert "Results of 4 jobs" in out
    # W&B offline: one run per job, grouped by the sweep directory
    job_dirs = {p.parent for p in results}
    offline_runs = [p for p in tmp_path.rglob("offline-run-*") if p.parent.parent in job_dirs]
    assert len(offline_runs) == 2


def test_eval_reproduces_the_validation_metrics_of_a_checkpoint(tmp_path):
    train_cfg = compose_cfg([*TINY, "trainer.max_epochs=1", "mask=global"], tmp_path / "train")
    record = run_cfg(train_cfg)
    from tasks.common.runtime.pipeline import evaluate

    eval_cfg = compose_cfg(
        [
            *[o for o in TINY if not o.startswith("callbacks")],
            "mask=global",
            f"ckpt_path={record['best']['ckpt']}",
        ],
        tmp_path / "eval",
        config_name="eval",
    )
    evaluated = run_cfg(eval_cfg, fn=evaluate)
    assert evaluated["metrics"]["val/acc"] == pytest.approx(record["metrics"]["val/acc"])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    proc = run_script(
        ["train.py", "trainer=ddp_cpu", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"],
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "ok" and record["config"]["trainer"]["devices"] == 2
    assert "val/acc" in record["metrics"]


def test_readme_main_command_exists():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_results_keep_float32_metrics_at_their_precision():
    import torch

    from tasks.common.runtime.pipeline import _clean

    cleaned = _clean(
        {
            "a": torch.tensor(13.24),
            "b": torch.tensor(0.1234567891, dtype=torch.float64),
            "n": 3,
            "vector": torch.zeros(2),
        }
    )
    assert cleaned == {"a": 13.24, "b": 0.1234567891, "n": 3.0}
