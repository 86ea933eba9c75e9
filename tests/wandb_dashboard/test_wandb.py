"""W&B dashboards, offline: the .wandb reader against what wandb wrote, the sweep tables beside
the paper's numbers, and (slow) a sweep whose runs hold the mask heatmaps, the diagnostics
curves and the tables, read back by make_tables.py --wandb."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tasks.common.reporting.tables import load_paper
from tasks.common.reporting.wandb_dashboard import log_sweep_tables
from tasks.common.reporting.wandb_runs import (
    SUMMARY_JOB,
    load_wandb_runs,
    read_offline_run,
    wait_until_written,
)
from tests.helpers import DEMO_TINY, run_script

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _table(run, key: str) -> dict:
    (path,) = run.media(key)
    return json.loads(path.read_text())


def test_reader_returns_what_wandb_wrote(tmp_path):
    config = {"task_name": "demo", "seed": 3, "mask": {"type": "global", "depth": 2}}
    run = wandb.init(project="t", dir=str(tmp_path), config=config, job_type="train")
    losses = [1.5, 0.75, 0.5]
    for step, loss in enumerate(losses):
        run.log({"val/loss": loss, "params/mask": 42}, step=step)
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    run.log({"val/mask": wandb.Image(image)}, step=3)
    run.log({"big": "x" * 70_000}, step=4)  # a record spread over 3 blocks of the log
    run.finish()
    folder = next(tmp_path.glob("wandb/offline-run-*"))
    read = wait_until_written(folder)
    assert read.state == "finished" and read.job_type == "train" and read.project == "t"
    assert read.config == config
    assert read.curve("val/loss") == list(enumerate(losses))
    assert read.summary["val/loss"] == 0.5 and read.summary["big"] == "x" * 70_000
    (png,) = read.media("val/mask")
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), image)
    # why the log is read here: wandb keeps no summary / config / history file beside an offline
    # run, and its Python reader of the log (sdk/internal/datastore.py) is gone
    assert not list(folder.rglob("wandb-summary.json")) and not list(folder.rglob("config.yaml"))
    assert importlib.util.find_spec("wandb.sdk.internal.datastore") is None
    # as a results.json-like record (make_tables.py --wandb <folder>)
    (record,) = load_wandb_runs(folder)
    assert record["status"] == "ok" and record["mask"] == "global" and record["seed"] == 3
    assert record["metrics"] == {"val/loss": 0.5} and record["params"] == {"params/mask": 42}


def _t1b_record(row: str, seed: int, r1: float, mAP: float) -> dict:
    return {
        "status": "ok",
        "task": "qvhighlights",
        "mask": row,
        "fusion": "mul",
        "depth": 32,
        "attention": "eager",
        "seed": seed,
        "table": "T1b",
        "row": row,
        "params": {"params/mask": 0 if row == "none" else 1000},
        "metrics": {"val/MR-full-R1@0.7": r1, "val/MR-full-mAP": mAP},
        "run_dir": f"/sweep/{seed}_{row}",
        "wall_time_s": 1.0,
    }


def test_sweep_tables_sit_beside_the_papers_numbers(tmp_path):
    records = [
        _t1b_record("none", 0, 40.0, 35.0),
        _t1b_record("none", 1, 42.0, 36.0),
        _t1b_record("multilayer", 0, 45.0, 39.0),
        _t1b_record("multilayer", 1, 46.0, 40.0),
    ]
    folder = log_sweep_tables(records, tmp_path / "2026-01-01_00-00-00", {"project": "t"})
    run = read_offline_run(folder)
    assert run.job_type == SUMMARY_JOB and run.group == "2026-01-01_00-00-00"
    table = _table(run, "tables/T1b")
    rows = {r[0]: dict(zip(table["columns"], r, strict=True)) for r in table["data"]}
    paper = {r.id: r.paper for r in load_paper().get("T1b").rows}
    expected = [("none", 41.0, 2**0.5, 35.5), ("multilayer", 45.5, 0.5**0.5, 39.5)]
    for row, r1, r1_std, mAP in expected:
        assert rows[row]["R1@IoU0.7"] == pytest.approx(r1)
        assert rows[row]["R1@IoU0.7 std"] == pytest.approx(r1_std)
        assert rows[row]["R1@IoU0.7 n"] == 2
        assert rows[row]["mAP"] == pytest.approx(mAP)
        assert rows[row]["R1@IoU0.7 (paper)"] == paper[row]["R1@IoU0.7"][0]
        assert rows[row]["mAP (paper)"] == paper[row]["mAP"][0]
    gain = rows["gain"]
    assert gain["R1@IoU0.7"] == pytest.approx(4.5)
    assert gain["R1@IoU0.7 (paper)"] == pytest.approx(46.94 - 44.98)
    summary = _table(run, "sweep/summary")
    assert [r[0] for r in summary["data"]] == ["0_none", "1_none", "0_multilayer", "1_multilayer"]
    assert "html" in str(run.history[0]["tables/markdown"].get("_type"))
    assert load_wandb_runs(tmp_path) == []  # a sweep-summary run holds tables, not results


@pytest.mark.slow
def test_sweep_dashboard_offline(tmp_path):
    """A 2-job demo sweep with W&B (offline) and the heatmap callback: each run has its mask
    heatmaps and diagnostics curves, the sweep has its table, make_tables reads them back."""
    proc = run_script(
        [
            "train.py",
            "-m",
            "mask=global,multilayer",
            *[o for o in DEMO_TINY if not o.startswith("logger")],
            "logger=wandb",
            "callbacks=mask_plot",
            "trainer.max_epochs=2",
            f"paths.log_dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = next(tmp_path.rglob("summary.json")).parent
    results = {Path(r["run_dir"]).name: r for r in json.loads((sweep / "summary.json").read_text())}
    for name, result in results.items():
        run = read_offline_run(next((sweep / name).glob("wandb/offline-run-*")))
        assert run.state == "finished" and run.group == sweep.name
        validations = 3  # 2 epochs + the final validation of the best checkpoint
        heatmaps = run.media("val/mask")
        assert len(heatmaps) == validations
        assert all(p.exists() and p.stat().st_size > 0 for p in heatmaps)
        for layer, stats in result["mask_stats"].items():
            for stat, value in stats.items():
                if value is None:
                    continue
                curve = run.curve(f"mask/{layer}/{stat}")
                assert len(curve) == validations, (layer, stat)
                assert curve[-1][1] == pytest.approx(value, rel=1e-5)
    (summary_folder,) = [
        p for p in sweep.glob("wandb/offline-run-*") if read_offline_run(p).job_type == SUMMARY_JOB
    ]
    table = _table(read_offline_run(summary_folder), "sweep/summary")
    rows = {r[0]: dict(zip(table["columns"], r, strict=True)) for r in table["data"]}
    assert set(rows) == set(results)
    for name, result in results.items():
        assert rows[name]["val/acc"] == pytest.approx(result["metrics"]["val/acc"])
    # make_tables.py reads the same table from the W&B runs as from results.json
    from_json = run_script(["scripts/make_tables.py", str(sweep)])
    from_wandb = run_script(["scripts/make_tables.py", "--wandb", str(sweep)])
    assert from_json.returncode == 0 and from_wandb.returncode == 0, from_wandb.stderr[-2000:]
    table_lines = [line for line in from_json.stdout.splitlines() if line.startswith("|")]
    assert table_lines and table_lines == [
        line for line in from_wandb.stdout.splitlines() if line.startswith("|")
    ]
    assert os.environ.get("WANDB_MODE") == "offline"
