"""Tables 7-9 of the MA-AVT supplement from AVE run records: the paper's numbers beside, the
supplement's parameter counts (params/report_*), Table 9's throughput as ratios to MA-AVT."""

from __future__ import annotations

from tasks.common.reporting.tables import load_paper, make_tables


def _record(table: str, row: str, metrics: dict, params: dict | None = None, seed: int = 0):
    return {
        "status": "ok",
        "kind": "train",
        "task": "ave",
        "mask": "none",
        "table": table,
        "row": row,
        "seed": seed,
        "metrics": metrics,
        "params": params or {},
    }


def test_paper_numbers_of_tables_7_to_9() -> None:
    paper = load_paper()
    t7 = {r.id: r.paper for r in paper["AVE-T7"].rows}
    assert t7["ma_avt-base"] == {
        "Acc (%)": (77.9, None),
        "Total (M)": (110.2, None),
        "Trainable (M)": (7.1, None),
    }
    assert t7["lavish_large-base"]["Trainable (M)"] == (7.3, None) and len(t7) == 9
    t8 = [r.paper["Acc (%)"][0] for r in paper["AVE-T8"].rows]
    assert t8 == [76.3, 77.9, 77.5, 77.1]
    t9 = {r.id: r.paper["Samples/s"][0] for r in paper["AVE-T9"].rows}
    assert t9 == {
        "ma_avt-base": 250,
        "lavish-base": 125,
        "mbt-base": 400,
        "ma_avt-large": 85,
        "lavish-large": 55,
        "mbt-large": 218,
    }
    for row in paper["AVE-T9"].rows:  # the ratio column is the paper's samples/s ratio
        ref = t9[row.extra["relative_to"]]
        assert abs(row.paper["x MA-AVT"][0] - t9[row.id] / ref) < 0.01


def test_table_7_prints_accuracy_and_reported_parameters() -> None:
    records = [
        _record(
            "AVE-T7",
            "ma_avt-tiny",
            {"test/acc": 50.0 + seed, "val/acc": 40.0},
            {"params/report_total": 10_200_000, "params/report_trainable": 460_000},
            seed=seed,
        )
        for seed in (0, 1)
    ]
    (table,) = make_tables(records, tables=["AVE-T7"])
    line = next(x for x in table.markdown.splitlines() if "`ma_avt-tiny`" in x)
    assert (
        "| test | 50.5 ± 0.7 (2) | 65.6 | 10.20 ± 0.00 (2) | 10.2 | 0.46 ± 0.00 (2) | 0.46 | test |"
        in line
    )


def test_table_9_ratios_are_per_vit() -> None:
    speeds = {"ma_avt-base": 200.0, "lavish-base": 80.0, "mbt-base": 300.0, "ma_avt-large": 50.0}
    records = [_record("AVE-T9", row, {"test/samples_per_s": v}) for row, v in speeds.items()]
    (table,) = make_tables(records, tables=["AVE-T9"])
    lines = {x.split("`")[1]: x for x in table.markdown.splitlines() if "`" in x}
    assert "| 80.0 (1) | 125 | 0.40 (1) | 0.5 |" in lines["lavish-base"]
    assert "| 300.0 (1) | 400 | 1.50 (1) | 1.6 |" in lines["mbt-base"]
    assert "| 50.0 (1) | 85 | 1.00 (1) | 1 |" in lines["ma_avt-large"]
