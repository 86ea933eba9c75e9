"""scripts/summarize_mask_stats.py aggregates the diagnostics of seeds: hand-computed values."""

from __future__ import annotations

import json

from scripts.summarize_mask_stats import main, summarize


def _record(seed: int, td: float, status: str = "ok") -> dict:
    row = dict(mean_abs=1.0, token_dependence=td, neg_share=0.0, entropy=2.0)
    row.update(entropy_unmasked=3.0, grad_norm_first=None)
    return {"status": status, "row": "stamp", "seed": seed, "mask_stats": {"l0": row}}


def test_mean_and_std_over_seeds(tmp_path, capsys):
    records = [_record(0, 0.1), _record(1, 0.3), _record(2, 99.0, status="failed")]
    table = summarize(records)
    line = next(x for x in table.splitlines() if x.startswith("| stamp"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:3] == ["stamp", "l0", "2"]  # the failed run is left out
    assert cells[3] == "0.200 ± 0.141"  # mean 0.2, sample std sqrt(0.02)
    assert cells[-1] == ""  # no gradient norm recorded
    for i, record in enumerate(records[:2]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(record))
    assert main([str(tmp_path)]) == 0 and "0.200 ± 0.141" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 1


def test_relevance_columns(tmp_path, capsys):
    """--relevance: M and the attention share on relevant vs irrelevant keys, over seeds."""
    records = [_record(0, 0.1), _record(1, 0.3)]
    for record, share in zip(records, (0.5, 0.7), strict=True):
        record["mask_stats"]["l0"].update(M_relevant=1.0, share_relevant=share)
        record["mask_stats"]["cross"] = {"mean_abs": 1.0}  # no relevance labels: not listed
    for i, record in enumerate(records):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(record))
    assert main([str(tmp_path), "--relevance"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")], strict=True))
    assert cells["M_relevant"] == "1.000 ± 0.000" and cells["share_relevant"] == "0.600 ± 0.141"
    assert cells["M_irrelevant"] == "" and "token_dependence" not in cells
    assert len(lines) == 3  # header, rule, one row: each (row, layer) once
