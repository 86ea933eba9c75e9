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

from tasks.common.reporting.tables import load_paper, load_records, make_tables, to_csv
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
    header = "| Model | split | R1@IoU0.7 | R1@IoU0.7 (paper) | mAP | mAP (paper) | paper split |"
    assert header in text
    # every number carries its split: measured on val, the paper's QD-DETR row on test
    assert "| QD-DETR (Moon et al., 2023) `none` | val | 45.00 ± 1.00 (3) | 44.98 ± 0.8 |" in text
    assert "| 39.86 ± 0.6 | test |" in text and "| 42.32 ± 0.7 | unstated |" in text
    assert "| Gain (Δ) | val | +2.75 | +1.96 |" in text
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
    assert (tmp_path / "tables" / "tables.csv").read_text().startswith("table,kind,row,config")


def test_paper_numbers_match_the_spec():
    paper = load_paper()
    assert set(paper) >= {"T1a", "T1b", "T1c", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "S4"}
    ours = {
        t: next(r for r in spec.rows if r.ours).paper
        for t, spec in paper.items()
        if spec.kind != "max_gain" and any(r.ours for r in spec.rows)
    }
    assert ours["T1a"]["C"] == (18.56, 0.2)
    assert ours["T2"]["C"] == (17.11, None) and ours["T3"]["Param."] == (7.07, None)
    assert ours["T4"]["Latency (ms)"] == (88.60, None) and ours["T5"]["Acc-Top1"] == (83.45, None)
    assert ours["T6"]["S"] == (8.03, None) and ours["T7"]["L"] == (64.3, None)
    for spec in paper.values():  # every paper value names a column of its table
        names = {c.name for c in spec.columns}
        for row in spec.rows:
            for source in ("acl", "iclr", "rebuttal"):
                assert set(row.values(source)) <= names, (spec.id, row.id, source)


def test_every_experiment_paper_table_tag_has_the_papers_numbers():
    """Experiments tagged with a paper table id (T1b, S4) find it in paper/results.yaml; other
    tags (``table: demo``) get a table of their runs."""
    paper = load_paper()
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        table = str((yaml.safe_load(path.read_text()) or {}).get("table"))
        if re.fullmatch(r"[TS]\d+[a-z]?", table):
            assert table in paper, f"{path.name}: table {table} not in paper/results.yaml"


def test_wandb_runs_become_records_like_results_files():
    from tasks.common.reporting.tables import record_from_wandb

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
    start = "| w/o FlashV2 `eager` | compute, val | 14.50 ± 0.71 (2) | 14.28 | 17.00 ± 0.00 (2) |"
    assert line.startswith(start)
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
    table, table8 = make_tables(load_records([tmp_path]))
    assert table8.spec.id == "T8"  # one Table 6 run: no baseline, so no measured gain
    assert "| MSRVTT | 6.3 GB | V + T | — | — | — | 0.39 | unstated |" in table8.markdown
    line = next(x for x in table.markdown.splitlines() if x.startswith("| Ours"))
    assert line.startswith("| Ours `multilayer` | test | 40.00 (1) | 42.03 | — | 62.05 |")
    assert line.endswith("| n/a | 8.03 | unstated |")
    assert "n/a: test/SPICE could not be computed: no CoreNLP jars" in table.markdown


# the values of the ICLR submission and the rebuttal that differ from the ACL paper, read off
# the ICLR submission (LCAAM) and its OpenReview discussion (rebuttal) by hand: (table, row, column)
ICLR_DIFFERS = {
    ("T1a", "none", "R-L"): 10.7,
    ("T1a", "none", "C"): 9.4,
    ("T1a", "none", "R@5/16"): 43.4,
    ("T1a", "multilayer", "R-L"): 13.5,
    ("T1a", "multilayer", "C"): 18.6,
    ("T1a", "multilayer", "R@5/16"): 56.1,
    ("T3", "extra_linear", "Param."): 7.072,
    ("T3", "multilayer", "Param."): 7.072,
    ("T4", "extra_linear", "Params"): 7.072,
    ("T4", "multilayer", "Params"): 7.072,
    ("T8", "madv2", "Max. Gain"): 12.70,
    # section 4.4's averages are stated only in the ICLR submission
    ("Sec4.4", "T1a", "Avg. Gain"): 8.23,
    ("Sec4.4", "T1a", "Max. Gain"): 12.7,
    ("Sec4.4", "T1b", "Avg. Gain"): 2.21,
    ("Sec4.4", "T1b", "Max. Gain"): 2.46,
    ("Sec4.4", "T1c", "Avg. Gain"): 0.86,
    ("Sec4.4", "T1c", "Max. Gain"): 0.93,
}
REBUTTAL_DIFFERS = {
    ("T1b", "multilayer", "mAP"): 42.32,  # std 0.6 (ACL: 0.7)
    ("T3", "extra_layers", "R-L"): 13.806,
    ("T3", "extra_layers", "C"): 16.223,
    ("T3", "extra_layers", "Param."): 7.180,
    ("T3", "multilayer", "Param."): 7.072,
    ("T4", "extra_linear", "Params"): 7.072,
    ("T4", "multilayer", "Params"): 7.072,
    ("T7", "eager", "P"): 7.072,
    ("T7", "flex", "R-L"): 14.1828,
    ("T7", "flex", "C"): 17.23122,
    ("T7", "flex", "F"): 2.272,
    ("T7", "flex", "P"): 7.072,
}


def test_iclr_and_rebuttal_numbers_that_differ_from_the_acl_paper():
    from tasks.common.reporting.tables import differs

    paper = load_paper()
    for source, expected in [("iclr", ICLR_DIFFERS), ("rebuttal", REBUTTAL_DIFFERS)]:
        found = {
            (t, row.id, col): value[0]
            for t, spec in paper.items()
            for row in spec.rows
            for col, value in row.values(source).items()
            if differs(value, row.paper.get(col))
        }
        assert found == expected, source
    assert paper["T1b"].rows[1].values("rebuttal")["mAP"] == (42.32, 0.6)
    assert "T7" not in {t for t, _, _ in ICLR_DIFFERS} and not any(
        r.values("iclr") for r in paper["T7"].rows
    )  # Table 7 first appeared in the rebuttal


def test_sources_are_columns_with_differences_marked(runs):
    rendered = {t.spec.id: t for t in make_tables(load_records([runs]), sources=["acl", "iclr"])}
    text = rendered["T1b"].markdown
    assert "| mAP | mAP (paper) | mAP (ICLR) | paper split |" in text
    assert "| 42.50 ± 0.71 (2) | 42.32 ± 0.7 | 42.32 | unstated |" in text  # no std: not "†"
    table8 = rendered["T8"].markdown
    assert "| MADv2 | ~2.4 TB (ICLR: ~3 TB) | V + A + T | — | — | — | 13.29 | 12.7† | test |" in (
        table8
    )
    rows = rows_of(make_tables(load_records([runs]), sources=["acl", "rebuttal"], tables=["T1b"]))
    mine = [r for r in rows if r["row"] == "multilayer" and r["column"] == "mAP"]
    assert {(r["source"], r["paper_std"]) for r in mine} == {("acl", "0.7"), ("rebuttal", "0.6")}
    assert {r["mean"] for r in mine} == {str(42.5)}  # the measured value on each source's row


def test_table_8_paper_values_are_the_max_gain_of_their_tables():
    from tasks.common.reporting.tables import paper_gain_of

    paper = load_paper()
    for row in paper["T8"].rows:
        for source in ("acl", "iclr"):
            gains = [
                paper_gain_of(paper[t], c, source)
                for t in row.extra["from"]
                for c in paper[t].columns
            ]
            best = max(g for g in gains if g is not None)
            assert best == pytest.approx(row.values(source)["Max. Gain"][0]), (row.id, source)


def test_table_8_is_measured_from_the_gain_rows(runs):
    rendered = {t.spec.id: t for t in make_tables(load_records([runs]))}
    assert "T8" in rendered  # T1b / T1c runs exist
    # measured gains: T1b R1 +2.75, mAP +2.33; T1c mAP +1.00, HIT@1 +1.33 -> T1b R1@IoU0.7
    line = next(x for x in rendered["T8"].markdown.splitlines() if x.startswith("| QVH"))
    assert line == (
        "| QVHighlights | ~180 GB | V + T | +2.75 | T1b R1@IoU0.7 | val | 2.46 | test / unstated |"
    )
    assert "| MADv2 | ~2.4 TB | V + A + T | — | — | — | 13.29 | test |" in rendered["T8"].markdown


def test_eval_records_are_tabulated_apart_and_read_their_own_split(runs, tmp_path):
    fake_run(  # eval.py record: its split, test metrics (written by eval.py split=test)
        tmp_path / "eval",
        "ev",
        mask="multilayer",
        seed=0,
        table="T1b",
        kind="eval",
        split="test",
        metrics={"test/MR-full-mAP": 30.0, "val/MR-full-mAP": 99.0},
    )
    fake_run(  # an older eval record without `kind`: recognised by its checkpoint
        tmp_path / "eval",
        "old",
        mask="none",
        seed=0,
        table="T1b",
        checkpoint="x.ckpt",
        split="val",
        metrics={"val/MR-full-mAP": 20.0, "test/MR-full-mAP": 99.0},
    )
    rendered = make_tables(load_records([runs / "t1", tmp_path / "eval"]))
    titles = [t.markdown.splitlines()[0] for t in rendered]
    assert titles[:2] == [
        "## T1b — Moment retrieval on QVHighlights (Table 1b)",
        "## T1c — Highlight detection at VeryGood on QVHighlights (Table 1c)",
    ]
    assert "## T1b [eval] — Moment retrieval on QVHighlights (Table 1b) — eval.py records" in titles
    train = {(r["table"], r["kind"], r["row"], r["column"]): r for r in rows_of(rendered)}
    assert float(train[("T1b", "train", "multilayer", "mAP")]["mean"]) == pytest.approx(42.5)
    ev_ours = train[("T1b", "eval", "multilayer", "mAP")]
    assert (float(ev_ours["mean"]), ev_ours["split"]) == (30.0, "test")
    ev_base = train[("T1b", "eval", "none", "mAP")]
    assert (float(ev_base["mean"]), ev_base["split"]) == (20.0, "val")


def test_paper_tables_print_without_runs(capsys):
    from scripts.make_tables import main

    assert main(["--paper-tables", "--source", "all", "--tables", "T8,S4"]) == 0
    out = capsys.readouterr().out
    assert "## T8 — Maximum performance gain" in out and "| Max. Gain (ICLR) |" in out
    assert "not in rebuttal" in out and "| 13.29 | 12.7† |" in out
    assert "## S4" in out and "| avg mAP (rebuttal) |" in out
    with pytest.raises(SystemExit):
        main(["--paper-tables", "--source", "neurips"])


def test_make_tables_says_when_no_run_matches_the_requested_tables(tmp_path, capsys):
    """--tables with no matching runs: a message naming what the runs are, and exit code 1 (was:
    nothing printed, exit 0)."""
    from scripts.make_tables import main

    fake_run(tmp_path / "runs", "a", task="demo", experiment="demo_masks", metrics={"val/acc": 1})
    assert main([str(tmp_path / "runs"), "--tables", "T1b,T2"]) == 1
    err = capsys.readouterr().err
    assert "no runs matched --tables T1b,T2" in err and "demo_masks" in err
    assert main([str(tmp_path / "runs"), "--tables", "demo_masks,T2"]) == 0  # one matches
    captured = capsys.readouterr()
    assert "## demo_masks" in captured.out and "--tables T2 " in captured.err
