"""Runs of another generator form (mask.generator / mask.per_head) are told apart in the sweep
summary and get their own line in the depth-sweep plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from tasks.common.reporting import plots
from tasks.common.runtime.results import format_summary, generator_label


def _record(generator: str, per_head: bool, depth: int, value: float) -> dict:
    return {
        "status": "ok",
        "mask": "multilayer",
        "fusion": "mul",
        "depth": depth,
        "generator": generator,
        "rank": 16,
        "per_head": per_head,
        "run_dir": f"/x/{generator}{depth}",
        "metrics": {"val/acc": value},
    }


def test_generator_label():
    assert generator_label({}) == "mlp"
    assert generator_label({"generator": "lowrank", "rank": 8}) == "lowrank(r=8)"
    assert generator_label({"generator": "mlp", "per_head": True}) == "mlp+per-head"


def test_summary_has_a_generator_column():
    table = format_summary([_record("lowrank", True, 2, 0.5), _record("mlp", False, 2, 0.4)])
    header, _, low, mlp = table.splitlines()
    column = header.split(" | ").index("generator")
    assert low.split(" | ")[column] == "lowrank(r=16)+per-head"
    assert mlp.split(" | ")[column] == "mlp"


def test_depth_sweep_draws_one_line_per_form(tmp_path, monkeypatch):
    labels = []
    real_errorbar = matplotlib.axes.Axes.errorbar

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return real_errorbar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    records = [_record(g, False, d, 0.1 * d) for g in ("mlp", "lowrank") for d in (1, 2)]
    plots.plot_depth_sweep(records, "val/acc", tmp_path / "s.png")
    assert sorted(labels) == ["STAMP, mul", "STAMP, mul, lowrank(r=16)"]
