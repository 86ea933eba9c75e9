"""Fig. S4's cross-attention-only variant (`layers=t2v`) stays apart from the default (STAMP in
both QVHighlights groups): its own rows in make_tables, its own line in plot_depth_sweep."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from tasks.common.reporting import plots
from tasks.common.reporting.tables import load_paper, load_records, make_tables
from tests.tables.test_tables import cell, fake_run, rows_of


def _s4_run(root, name, layers, depth, value, seed=0):
    groups = {"both": ["t2v", "self"], "t2v": ["t2v"]}[layers]
    tag = "" if layers == "both" else "-t2v"
    return fake_run(
        root,
        name,
        table="S4",
        experiment="qvhighlights_s4",
        depth=depth,
        seed=seed,
        row=f"depth{depth}-mul{tag}",
        config={"model": {"stamp_layers": groups}, "mask": {"type": "multilayer"}},
        metrics={"val/MR-full-mAP": value},
    )


def test_cross_only_rows_and_lines_are_kept_apart(tmp_path, monkeypatch):
    for layers, base in (("both", 40.0), ("t2v", 30.0)):
        for depth in (2, 32):
            for seed in (0, 1):
                _s4_run(
                    tmp_path, f"{layers}{depth}_{seed}", layers, depth, base + depth + seed, seed
                )
    records = load_records([tmp_path])
    rows = rows_of(make_tables(records, load_paper(), tables=["S4"]))
    both = cell(rows, "S4", "depth32-mul", "avg mAP")
    cross = cell(rows, "S4", "depth32-mul-t2v", "avg mAP")
    assert (float(both["mean"]), both["n"]) == (72.5, "2")
    assert (float(cross["mean"]), cross["n"]) == (62.5, "2")
    assert float(cross["paper"]) == 42.32  # the paper's value beside both readings

    labels = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, *args, **kwargs):
        labels.append((kwargs.get("label"), list(args[1])))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    plots.plot_depth_sweep(records, "val/MR-full-mAP", tmp_path / "s4.png")
    assert sorted(labels) == [
        ("STAMP, mul", [42.5, 72.5]),
        ("STAMP, mul, t2v only", [32.5, 62.5]),
    ]
