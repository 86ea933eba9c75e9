"""The tables stay the same byte for byte: ``scripts/make_tables.py`` over a synthetic set of
runs that fills every table of paper/results.yaml (seeds, failed runs, generator forms,
varying settings, eval records, compute profiles, an unavailable metric, untagged runs)
against the output stored in tests/common/golden/. Written before tables.py moved to pandas,
it holds the rewrite to the old output.

Regenerate (only when a change of the tables is intended): STAMP_REGEN_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scripts.make_tables import main
from tasks.common.reporting.tables import load_paper

GOLDEN = Path(__file__).parent / "golden"
MASK_NAMES = {"none", "global", "multilayer", "sparse", "extra_linear", "extra_layers"}


def write_run(root: Path, name: str, record: dict, file: str = "results.json") -> None:
    (root / name).mkdir(parents=True)
    (root / name / file).write_text(json.dumps(record))


def base_record(table: str, row: str, seed: int) -> dict:
    return {
        "status": "ok",
        "task": "synthetic",
        "mask": row if row in MASK_NAMES else "multilayer",
        "fusion": "mul",
        "depth": 4,
        "attention": "eager",
        "compiled": False,
        "seed": seed,
        "experiment": f"exp_{table}",
        "table": table,
        "row": row,
        "params": {"params/total": 1000 + seed, "params/mask": 10},
        "metrics": {},
    }


def synthetic_runs(root: Path) -> None:
    """Runs for every paper table: each row but the last gets seeds (3, 2 or 1 of them), each
    column a value on the table's first split (the second split for every third row)."""
    for t, spec in enumerate(load_paper().values()):
        if spec.kind != "table" or spec.source:
            continue
        for i, prow in enumerate(spec.rows[:-1] if len(spec.rows) > 1 else spec.rows):
            for seed in range(3 - i % 3):
                record = base_record(spec.id, prow.id, seed)
                split = (spec.splits or ["val"])[min(i % 3 == 2, len(spec.splits) - 1)]
                for j, column in enumerate(spec.columns):
                    value = 10.0 + 7.3 * t + 1.9 * i + 0.61 * j + 0.37 * seed * (1 + i % 2)
                    if column.metric.startswith("params/"):
                        record["params"][column.metric] = value * 1e6
                    else:
                        record["metrics"][f"{split}/{column.metric}"] = value
                record["metrics"]["val/aux_loss"] = 0.0
                write_run(root / spec.id, f"{prow.id}_{seed}", record)
    extras(root)


def extras(root: Path) -> None:
    t1b = {"val/MR-full-mAP": 41.0, "val/MR-full-R1@0.7": 45.5}
    forms = [  # generator forms: rows of their own
        ("lowrank", {"mask": "multilayer", "generator": "lowrank", "rank": 16}),
        ("lowrank64", {"mask": "multilayer", "generator": "lowrank", "rank": 64}),
        ("perhead", {"mask": "multilayer", "per_head": True}),
        ("named", {"mask": "multilayer", "row": "multilayer-lowrank", "generator": "lowrank",
                   "rank": 32, "per_head": "true"}),
        ("globallayer", {"mask": "global", "row": "global", "global_input": "layer"}),
        ("cfg", {"mask": "multilayer", "config": {"mask": {"generator": "lowrank", "rank": 8}}}),
    ]  # fmt: skip
    for name, fields in forms:
        write_run(root / "forms", name, {**base_record("T1b", "multilayer", 0),
                                         **fields, "metrics": t1b})  # fmt: skip
    for k, (attention, fusion) in enumerate([("eager", "mul"), ("sdpa", "add"), ("sdpa", "mul")]):
        record = base_record("S4", "depth32-mul", k)
        record.update(attention=attention, fusion=fusion, metrics={"val/MR-full-mAP": 40.0 + k})
        write_run(root / "varying", f"v{k}", record)
    for k, status in enumerate(["failed", "diverged", "failed"]):
        record = {**base_record("T1b", "none", 5 + k), "status": status}
        write_run(root / "failed", f"{status}{k}", record)
    caption = load_paper()["T6"]
    record = base_record("T6", caption.rows[-1].id, 9)  # a row without other runs
    record["unavailable"] = {"val/" + c.metric: "no Java for SPICE" for c in caption.columns}
    write_run(root / "unavailable", "spice", record)
    for k, (row, split) in enumerate([("multilayer", "test"), ("none", "val")]):
        record = {**base_record("T1b", row, k), "kind": "eval", "split": split}
        record["metrics"] = {"test/MR-full-mAP": 30.0 + k, "val/MR-full-mAP": 20.5 + k}
        if k:
            record.pop("kind")
            record["checkpoint"] = "x.ckpt"
        write_run(root / "eval", f"ev{k}", record)
    profiles = [
        {**base_record("T4", row, 0), "kind": "profile",
         "metrics": {"compute/flops": 1.5e9 + k, "compute/macs": 7.5e8, "compute/params": 2.5e4,
                     "compute/latency_ms": 12.345 + k}}
        for k, row in enumerate(["none", "multilayer"])
    ]  # fmt: skip
    profiles.append({**profiles[0], "table": None, "experiment": "profile_only"})
    (root / "profiles").mkdir()
    (root / "profiles" / "profile.json").write_text(json.dumps(profiles))
    for k, (mask, fusion, acc) in enumerate(
        [("multilayer", "mul", 0.5), ("multilayer", "mul", 0.7), ("multilayer", "add", 0.4),
         ("none", "add", 0.3), ("none", "mul", 0.32), ("sparse", "add", 0.35),
         ("extra_linear", "mul", 0.45)]
    ):  # fmt: skip
        record = {**base_record("demo", mask, k), "table": None, "experiment": None}
        record.update(task="demo", fusion=fusion, metrics={"val/acc": acc, "test/acc": acc / 2})
        write_run(root / "demo", f"demo{k}", record)


CASES = {  # make_tables.py arguments after the run directory (paper_tables: no runs)
    "default": [],
    "all_sources": ["--source", "all"],
    "iclr_rebuttal": ["--source", "iclr,rebuttal"],
    "filtered": ["--tables", "T1b,T8,demo"],
    "metrics": ["--metrics", "val/acc", "--tables", "demo"],
    "paper_tables": ["--paper-tables", "--source", "all"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    synthetic_runs(root)
    return root


@pytest.mark.parametrize("case", CASES)
def test_tables_are_unchanged_byte_for_byte(case, runs, tmp_path):
    out = tmp_path / case
    run_dirs = [] if case == "paper_tables" else [str(runs)]
    assert main([*run_dirs, "--out", str(out), *CASES[case]]) == 0
    for name in ("tables.md", "tables.csv"):
        got = (out / name).read_bytes()
        golden = GOLDEN / f"{case}.{name.split('.')[1]}"
        if os.environ.get("STAMP_REGEN_GOLDEN"):
            golden.write_bytes(got)
        assert got == golden.read_bytes(), f"{case}: {name} differs from {golden}"
