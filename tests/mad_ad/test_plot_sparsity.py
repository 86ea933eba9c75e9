"""Fig. 1(c)'s plot script: groups the sweep's runs by sparsity and averages seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import plot_sparsity_sweep  # noqa: E402


def write_run(root: Path, name: str, sparsity: float, cider: float, table="Fig1c", status="ok"):
    run = root / name
    run.mkdir(parents=True)
    record = {
        "table": table,
        "status": status,
        "config": {"model": {"encoder_sparsity": sparsity}},
        "metrics": {"val/CIDEr": cider, "val/ROUGE_L": cider / 2},
    }
    (run / "results.json").write_text(json.dumps(record))


def test_sweep_is_grouped_and_averaged(tmp_path):
    write_run(tmp_path, "a", 0.0, 10.0)
    write_run(tmp_path, "b", 0.0, 14.0)
    write_run(tmp_path, "c", 0.5, 6.0)
    write_run(tmp_path, "d", 0.5, 99.0, table="T2")  # another table: ignored
    write_run(tmp_path, "e", 0.9, 99.0, status="failed")  # failed run: ignored
    assert plot_sparsity_sweep.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "sparsity_sweep.json").read_text())
    assert summary["val/CIDEr"] == [
        {"sparsity": 0.0, "mean": 12.0, "std": 2.0, "n": 2},
        {"sparsity": 0.5, "mean": 6.0, "std": 0.0, "n": 1},
    ]
    assert summary["val/ROUGE_L"][0]["mean"] == 6.0
    assert (tmp_path / "sparsity_sweep.png").stat().st_size > 0


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        plot_sparsity_sweep.main([str(tmp_path)])
