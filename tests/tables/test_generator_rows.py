"""Runs with mask.generator=lowrank / mask.per_head=true are rows of their own in every table
(issue 16): never averaged with the MLP generator's runs, not shown beside the paper's numbers,
not used for the paper table's gain; read from results.json's saved config."""

from __future__ import annotations

import csv
import io

import pytest

from scripts.make_tables import main as make_tables_main
from tasks.common.reporting.tables import load_records, make_tables, row_id, to_csv
from tests.tables.test_tables import fake_run

# (generator, per_head, seed) -> val/MR-full-mAP
RUNS = {
    ("mlp", False, 0): 40.0,
    ("mlp", False, 1): 42.0,
    ("lowrank", False, 0): 50.0,
    ("lowrank", False, 1): 54.0,
    ("mlp", True, 0): 60.0,
    ("lowrank", True, 0): 70.0,
}


def write_runs(root, **fields) -> None:
    for i, ((generator, per_head, seed), value) in enumerate(RUNS.items()):
        mask = {"type": "multilayer", "generator": generator, "rank": 16, "per_head": per_head}
        fake_run(
            root,
            f"run{i}",
            seed=seed,
            config={"mask": mask},
            metrics={"val/MR-full-mAP": value},
            **fields,
        )
    for seed, value in ((0, 30.0), (1, 32.0)):  # full attention: the generator is irrelevant
        mask = {"type": "none", "generator": "lowrank", "rank": 16, "per_head": True}
        fake_run(
            root,
            f"none{seed}",
            mask="none",
            seed=seed,
            config={"mask": mask},
            metrics={"val/MR-full-mAP": value},
            **fields,
        )


def measured(rendered, column: str) -> dict[str, tuple[float, int]]:
    rows = csv.DictReader(io.StringIO(to_csv(rendered)))
    return {
        r["config"]: (float(r["mean"]), int(r["n"]))
        for r in rows
        if r["column"] == column and r["mean"] and r["row"] != "gain"
    }


EXPECTED = {
    "none": (31.0, 2),
    "multilayer": (41.0, 2),
    "multilayer +lowrank(r=16)": (52.0, 2),
    "multilayer +per-head": (60.0, 1),
    "multilayer +lowrank(r=16) +per-head": (70.0, 1),
}


def test_generator_rows_in_a_paper_table(tmp_path):
    write_runs(tmp_path, table="T1b", experiment="qvhighlights_t1")
    rendered = make_tables(load_records([tmp_path]), tables=["T1b"])
    assert measured(rendered, "mAP") == EXPECTED
    markdown = rendered[0].markdown
    lowrank = next(line for line in markdown.splitlines() if "+lowrank(r=16) |" in line)
    # its own row, without the paper's numbers beside it; the gain is STAMP (MLP) - baseline
    assert lowrank.startswith("| multilayer +lowrank(r=16) |")
    rows = csv.DictReader(io.StringIO(to_csv(rendered)))
    gain = next(r for r in rows if r["row"] == "gain" and r["column"] == "mAP")
    assert float(gain["mean"]) == pytest.approx(41.0 - 31.0)
    with_paper = {r["config"] for r in rendered[0].rows if r["paper"] is not None}
    assert with_paper == {"none", "multilayer", "gain"}


def test_generator_rows_in_an_untagged_table_and_the_cli(tmp_path, capsys):
    write_runs(tmp_path / "runs", task="demo")
    rendered = make_tables(load_records([tmp_path / "runs"]))
    assert [t.spec.id for t in rendered] == ["demo"]
    assert measured(rendered, "val/MR-full-mAP") == EXPECTED
    assert make_tables_main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "| multilayer +lowrank(r=16) +per-head | 70.0000 (1) |" in text


def test_row_id_reads_top_level_fields_and_ignores_the_mlp_default():
    base = {"mask": "multilayer", "row": "multilayer-kaiming"}
    assert row_id(base) == "multilayer-kaiming"  # old results.json: no generator recorded
    assert row_id({**base, "generator": "mlp", "per_head": False}) == "multilayer-kaiming"
    assert row_id({**base, "generator": "lowrank", "rank": 4}) == "multilayer-kaiming +lowrank(r=4)"
    assert row_id({**base, "mask": "global", "per_head": "true"}) == "multilayer-kaiming +per-head"
    assert row_id({"mask": "extra_linear", "generator": "lowrank"}) == "extra_linear"
    # a row that names the form (an experiment's variant) gets only what it does not say
    named = {"mask": "multilayer", "generator": "lowrank", "rank": 16, "per_head": True}
    assert row_id({**named, "row": "multilayer-lowrank-perhead"}) == "multilayer-lowrank-perhead"
    assert row_id({**named, "row": "multilayer-lowrank"}) == "multilayer-lowrank +per-head"
    assert row_id({**named, "row": "lowrank_per_head", "rank": 4}) == "lowrank_per_head +r=4"
