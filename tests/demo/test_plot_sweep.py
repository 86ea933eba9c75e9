"""scripts/plot_sweep.py on hand-made results.json files: grouping, mean ± std, table, errors."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.helpers import run_script


def _write(tmp_path, name: str, point: str, variant: str, visual_max: int, acc: float) -> None:
    run = tmp_path / name
    run.mkdir(parents=True)
    record = {
        "status": "ok",
        "metrics": {"val/acc": acc},
        "config": {"point": point, "variant": variant, "data": {"visual_len": [12, visual_max]}},
    }
    (run / "results.json").write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path):
    accs = {("default", "none"): [0.8, 0.9, 0.85], ("long", "none"): [0.7, 0.6, 0.65]}
    accs[("default", "global-mlp")] = [0.5, 0.7, 0.6]
    accs[("long", "global-mlp")] = [0.9]
    for (point, variant), values in accs.items():
        for seed, acc in enumerate(values):
            visual_max = 24 if point == "default" else 48
            _write(tmp_path / point, f"{variant}-{seed}", point, variant, visual_max, acc)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text(json.dumps({"status": "failed"}))
    return tmp_path, accs


def test_numeric_axis_means_and_table(sweep):
    tmp_path, accs = sweep
    out = tmp_path / "plots" / "length.png"
    proc = run_script(
        ["scripts/plot_sweep.py", str(tmp_path), "--x", "data.visual_len.1", "--out", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000
    summary = json.loads(out.with_suffix(".json").read_text())
    none = {row["x"]: row for row in summary["none"]}
    assert none[24]["mean"] == pytest.approx(0.85)
    assert none[24]["std"] == pytest.approx(statistics.stdev(accs[("default", "none")]))
    assert none[48]["n"] == 3
    assert summary["global-mlp"][1] == {"x": 48, "mean": 0.9, "std": None, "n": 1}
    table = out.with_suffix(".md").read_text()
    assert "| none | 0.850 ± 0.050 (3) | 0.650 ± 0.050 (3) |" in table


def test_categorical_order_and_missing_key(sweep):
    tmp_path, _ = sweep
    out = tmp_path / "points.png"
    args = ["scripts/plot_sweep.py", str(tmp_path), "--x", "point", "--out", str(out)]
    proc = run_script([*args, "--order", "long,default"])
    assert proc.returncode == 0, proc.stderr
    assert "| val/acc by `point` | long | default |" in proc.stdout
    proc = run_script([*args, "--order", "long"])
    assert proc.returncode != 0 and "--order lacks the swept values ['default']" in proc.stderr
    proc = run_script([*args[:2], "--x", "data.num_train", "--out", str(out)])
    assert proc.returncode != 0 and "config has no 'data.num_train'" in proc.stderr


def test_one_run_shows_no_spread(sweep):
    tmp_path, _ = sweep
    out = tmp_path / "one.png"
    proc = run_script(["scripts/plot_sweep.py", str(tmp_path), "--x", "point", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "| global-mlp | 0.600 ± 0.100 (3) | 0.900 (1) |" in proc.stdout


def test_learning_curves_from_the_csv_log(tmp_path):
    """--x epoch: each run's validations before max_epochs (the row at max_epochs is the final
    evaluation of the kept checkpoint), mean ± std per epoch over the seeds."""
    header = "epoch,step,train/loss,val/acc\n"
    logs = {0: "0,9,1.0,\n1,19,,0.5\n3,39,,0.7\n4,40,,0.9\n", 1: "1,19,,0.7\n3,39,,0.8\n4,40,,1\n"}
    for seed, rows in logs.items():
        run = tmp_path / f"none-{seed}"
        (run / "csv").mkdir(parents=True)
        (run / "csv" / "metrics.csv").write_text(header + rows)
        config = {"variant": "none", "trainer": {"max_epochs": 4}}
        record = {"status": "ok", "run_dir": "/moved/elsewhere", "config": config}
        (run / "results.json").write_text(json.dumps(record))
    out = tmp_path / "curves.png"
    proc = run_script(["scripts/plot_sweep.py", str(tmp_path), "--x", "epoch", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "| none | 0.600 ± 0.141 (2) | 0.750 ± 0.071 (2) |" in proc.stdout
    (tmp_path / "none-1" / "csv" / "metrics.csv").unlink()
    proc = run_script(["scripts/plot_sweep.py", str(tmp_path), "--x", "epoch", "--out", str(out)])
    assert proc.returncode != 0 and "--x epoch needs logger=csv" in proc.stderr
