"""Runs of the two readings of mask=global (mask.global_input) get separate rows."""

from __future__ import annotations

from tasks.common.reporting.tables import load_paper, load_records, make_tables
from tests.tables.test_tables import cell, fake_run, rows_of


def test_the_rebuttals_global_reading_gets_its_own_row(tmp_path):
    for reading, value in (("encoder", 15.0), ("layer", 17.0)):
        fake_run(
            tmp_path,
            f"global_{reading}",
            task="mad_ad",
            mask="global",
            table="T2",
            config={"mask": {"type": "global", "global_input": reading}},
            metrics={"val/CIDEr": value, "val/ROUGE_L": 12.0},
        )
    rows = rows_of(make_tables(load_records([tmp_path]), load_paper(), tables=["T2"]))
    assert (
        float(cell(rows, "T2", "global", "C")["mean"]) == 15.0
    )  # the ACL reading: the paper's row
    assert float(cell(rows, "T2", "global +global_input=layer", "C")["mean"]) == 17.0
