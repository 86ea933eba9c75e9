"""Tables beside the paper's numbers: aggregation, grouping, gain, CSV; the paper data file."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from tasks.common.tables import load_paper, load_records, make_tables, to_csv
from tests.helpers import ROOT


def fake_run(root: Path, name: str, **fields) -> Path:
    """A results.json as the pipeline writes it (the fields the tables read)."""
    record = {
        "status": "ok",
        "task": "qvhighlights",
        "mask": "multilayer",
        "fusion": "mul",
        "depth": 32,
        "attention": "eager",
        "compiled": False,
        "seed": 0,
        "experiment": None,
        "table": None,
        "row": None,
        "params": {"params/total": 1000, "params/mask": 10},
        "metrics": {},
    }
    record.update(fields)
    record["row"] = record["row"] or record["mask"]
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(record))
    return run_dir


T1B = {  # (mask, seed) -> (R1@0.7, mAP, HL VeryGood mAP, HIT@1)
    ("none", 0): (44.0, 39.0, 38.0, 61.0),
    ("none", 1): (45.0, 40.0, 39.0, 62.0),
    ("none", 2): (46.0, 41.5, 40.0, 63.5),
    ("multilayer", 0): (47.0, 42.0, 39.5, 63.0),
    ("multilayer", 1): (48.5, 43.0, 40.5, 64.0),
}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for (mask, seed), (r1, mAP, hl, hit) in T1B.items():
        fake_run(
            tmp_path / "t1",
            f"{mask}_{seed}",
            mask=mask,
            seed=seed,
            table="T1b",
            experiment="qvhighlights_t1",
            metrics={
                "val/MR-full-R1@0.7": r1,
                "val/MR-full-mAP": mAP,
                "val/HL-min-VeryGood-mAP": hl,
                "val/HL-min-VeryGood-Hit1": hit,
                "test/num_queries": 10.0,
            },
        )
    fake_run(
        tmp_path / "t1",
        "failed",
        mask="multilayer",
        seed=2,
        table="T1b",
        status="failed",
        metrics={"val/MR-full-mAP": 99.0},
    )
    # untagged demo runs: fusion varies inside the multilayer row
    for fusion, seed, acc in [("mul", 0, 0.5), ("mul", 1, 0.7), ("add", 0, 0.4)]:
        fake_run(
            tmp_path / "demo",
            f"ml_{fusion}_{seed}",
            task="demo",
            mask="multilayer",
            fusion=fusion,
            seed=seed,
            depth=2,
            metrics={"val/acc": acc, "val/aux_loss": 0.0},
        )
    fake_run(
        tmp_path / "demo", "none_0", task="demo", mask="none", seed=0, metrics={"val/acc": 0.3}
    )
    return tmp_path


def rows_of(rendered) -> list[dict]:
    return list(csv.DictReader(io.StringIO(to_csv(rendered))))


def cell(rows, table, row, column, config=None) -> dict:
    found = [
        r
        for r in rows
        if r["table"] == table
        and r["row"] == row
        and r["column"] == column
        and (config is None or r["config"] == config)
    ]
    assert len(found) == 1, found
    return found[0]


def test_seeds_are_aggregated_as_mean_and_sample_std(runs):
    rendered = make_tables(load_records([runs]))
    rows = rows_of(rendered)
    for (mask, index), column in [(("none", 0), "R1@IoU0.7"), (("multilayer", 1), "mAP")]:
        values = [v[index] for (m, _), v in T1B.items() if m == mask]
        got = cell(rows, "T1b", mask, column)
        assert float(got["mean"]) == pytest.approx(statistics.mean(values))
        assert float(got["std"]) == pytest.approx(statistics.stdev(values))  # ddof = 1
        assert int(got["n"]) == len(values)  # the failed run is left out
    assert cell(rows, "T1b", "none", "mAP")["seeds"] == "0 1 2"
    paper = cell(rows, "T1b", "multilayer", "mAP")
    assert float(paper["paper"]) == 42.32 and float(paper["paper_std"]) == 0.7


def test_gain_row_is_ours_minus_baseline_beside_the_papers(runs):
    rows = rows_of(make_tables(load_records([runs])))
    gain = cell(rows, "T1b", "gain", "R1@IoU0.7")
    assert float(gain["mean"]) == pytest.approx(47.75 - 45.0)
    assert float(gain["paper"]) == pytest.approx(1.96)
    # Table 1c is filled from the same runs (source: T1b)
    hit = cell(rows, "T1c", "multilayer", "HIT@1")
    assert float(hit["mean"]) == pytest.approx(63.5) and float(hit["paper"]) == 63.33


def test_markdown_has_the_paper_layout_and_lists_failed_runs(runs):
    rendered = {t.spec.id: t for t in make_tables(load_records([runs]))}
    text = rendered["T1b"].markdown
    assert "| Model | R1@IoU0.7 | R1@IoU0.7 (paper) | mAP | mAP (paper) |" in text
    assert "| QD-DETR (Moon et al., 2023) `none` | 45.00 ± 1.00 (3) | 44.98 ± 0.8 |" in text
    assert "| Gain (Δ) | +2.75 | +1.96 |" in text
    assert "failed runs left out: 1 (failed)" in text
    assert "metrics read: val/MR-full-R1@0.7, val/MR-full-mAP" in text


def test_untagged_runs_get_one_table_grouped_by_varying_config(runs):
    rendered = {t.spec.id: t for t in make_tables(load_records([runs]))}
    demo = rendered["demo"]
    rows = rows_of([demo])
    mul = cell(rows, "demo", "multilayer", "val/acc", config="multilayer fusion=mul")
    assert float(mul["mean"]) == pytest.approx(0.6) and int(mul["n"]) == 2
    add = cell(rows, "demo", "multilayer", "val/acc", config="multilayer fusion=add")
    assert float(add["mean"]) == pytest.approx(0.4) and add["std"] == ""
    assert {r["column"] for r in rows} == {"val/acc", "mask params"}  # aux_loss left out
    lines = demo.markdown.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| Model | val/acc | mask params |"
    assert table[1].startswith("| none |")  # the baseline first
    assert "(paper)" not in demo.markdown


def test_make_tables_script_writes_markdown_and_csv(runs, tmp_path):
    from scripts.make_tables import main

    assert main([str(runs / "t1"), "--out", str(tmp_path / "tables"), "--tables", "T1b"]) == 0
    md = (tmp_path / "tables" / "tables.md").read_text()
    assert md.startswith("## T1b") and "## T1c" not in md
    assert (tmp_path / "tables" / "tables.csv").read_text().startswith("table,row,config")


def test_paper_numbers_match_the_spec():
    paper = load_paper()
    assert set(paper) >= {"T1a", "T1b", "T1c", "T2", "T3", "T4", "T5", "T6", "T7", "S4"}
    ours = {t: next(r for r in spec.rows if r.ours).paper for t, spec in paper.items()}
    assert ours["T1a"]["C"] == (18.56, 0.2)
    assert ours["T2"]["C"] == (17.11, None) and ours["T3"]["Param."] == (7.07, None)
    assert ours["T4"]["Latency (ms)"] == (88.60, None) and ours["T5"]["Acc-Top1"] == (83.45, None)
    assert ours["T6"]["S"] == (8.03, None) and ours["T7"]["L"] == (64.3, None)
    for spec in paper.values():  # every paper value names a column of its table
        names = {c.name for c in spec.columns}
        for row in spec.rows:
            assert set(row.paper) <= names, (spec.id, row.id)


def test_every_experiment_paper_table_tag_has_the_papers_numbers():
    """Experiments tagged with a paper table id (T1b, S4) find it in paper/results.yaml; other
    tags (``table: demo``) get a table of their runs."""
    paper = load_paper()
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        table = str((yaml.safe_load(path.read_text()) or {}).get("table"))
        if re.fullmatch(r"[TS]\d+[a-z]?", table):
            assert table in paper, f"{path.name}: table {table} not in paper/results.yaml"


def test_wandb_runs_become_records_like_results_files():
    from tasks.common.tables import record_from_wandb

    config = {
        "task_name": "qvhighlights",
        "mask": {"type": "multilayer", "fusion": "add", "depth": 32},
        "attention": {"backend": "eager", "compile": False},
        "seed": 3,
        "experiment": "qvhighlights_t1",
        "table": "T1b",
        "row": "multilayer",
    }
    summary = {"val/MR-full-mAP": 42.0, "params/mask": 7, "train/loss": 0.1, "_step": 9, "x": "y"}
    record = record_from_wandb(config, summary, "finished", "run-1")
    assert record["status"] == "ok" and record["table"] == "T1b" and record["fusion"] == "add"
    assert record["metrics"] == {"val/MR-full-mAP": 42.0} and record["params"] == {"params/mask": 7}
    rows = rows_of(make_tables([record], tables=["T1b"]))
    assert float(cell(rows, "T1b", "multilayer", "mAP")["mean"]) == 42.0
    assert record_from_wandb(config, summary, "crashed", "run-2")["status"] == "crashed"


def test_table_7_joins_training_runs_and_compute_profiles(tmp_path):
    for seed, rouge in [(0, 14.0), (1, 15.0)]:
        fake_run(
            tmp_path,
            f"eager_{seed}",
            task="mad_ad",
            attention="eager",
            row="eager",
            table="T7",
            seed=seed,
            metrics={"val/ROUGE_L": rouge, "val/CIDEr": 17.0},
        )
    profile = {
        "kind": "profile",
        "status": "ok",
        "task": "mad_ad",
        "mask": "multilayer",
        "fusion": "mul",
        "depth": 32,
        "attention": "eager",
        "compiled": False,
        "seed": None,
        "table": "T7",
        "row": "eager",
        "metrics": {"compute/flops": 3.5e12, "compute/latency_ms": 90.0},
    }
    (tmp_path / "profile.json").write_text(json.dumps([profile]))
    (table,) = make_tables(load_records([tmp_path]))
    line = next(x for x in table.markdown.splitlines() if x.startswith("| w/o FlashV2"))
    assert line.startswith("| w/o FlashV2 `eager` | 14.50 ± 0.71 (2) | 14.28 | 17.00 ± 0.00 (2) |")
    assert "| 3.50T | 3.43T |" in line and "| 90.0 | 88.6 |" in line  # one profile: no (n)


def test_metrics_a_run_could_not_compute_print_as_na_with_the_reason(tmp_path):
    fake_run(
        tmp_path,
        "ours",
        task="msrvtt",
        table="T6",
        seed=0,
        metrics={"test/BLEU_4": 40.0},
        unavailable={"test/SPICE": "no CoreNLP jars"},
    )
    (table,) = make_tables(load_records([tmp_path]))
    line = next(x for x in table.markdown.splitlines() if x.startswith("| Ours"))
    assert line.startswith("| Ours `multilayer` | 40.00 (1) | 42.03 | — | 62.05 |")
    assert line.endswith("| n/a | 8.03 |")
    assert "n/a: test/SPICE could not be computed: no CoreNLP jars" in table.markdown
