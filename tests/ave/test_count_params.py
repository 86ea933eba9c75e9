"""scripts/count_params.py: Table 7 counted on the meta device beside the paper."""

from __future__ import annotations

import json

import pytest

import scripts.count_params as script


def test_rows_beside_the_paper(tmp_path):
    rows = {r.label: r for r in script.TABLE7}
    assert len(rows) == 9
    ma = script.count_row(rows["MA-AVT ViT-B"], ["experiment=ave_t7"], tmp_path)
    assert ma["within_3pct"] and ma["note"] == ""
    assert ma["total"] == pytest.approx(109.741, abs=1e-3)  # paper 110.2
    assert ma["trainable"] == pytest.approx(7.146, abs=1e-3)  # paper 7.1
    assert ma["projector"] == pytest.approx(24 * (768 * 512 + 512) / 1e6, abs=1e-3)
    lavish = script.count_row(rows["LAVISH ViT-T"], ["experiment=ave_t7"], tmp_path)
    assert not lavish["within_3pct"] and "docs/ave.md" in lavish["note"]
    assert set(lavish) >= {"row", "total", "trainable", "paper_total", "paper_trainable", "note"}


def test_every_row_within_3pct_or_explained(tmp_path, capsys):
    out = tmp_path / "counts.json"
    assert script.main(["experiment=ave_t7", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["row"] for r in rows] == [r.label for r in script.TABLE7]
    for r in rows:
        assert r["within_3pct"] or r["note"], r["row"]
    assert sum(not r["within_3pct"] for r in rows) == 2  # LAVISH ViT-T / ViT-S trainable
    assert "MA-AVT ViT-L" in capsys.readouterr().out


def test_stamp_generators_are_listed_apart(tmp_path):
    row = next(r for r in script.TABLE7 if r.label == "MA-AVT ViT-T")
    plain = script.count_row(row, ["experiment=ave_t7"], tmp_path)
    stamped = script.count_row(row, ["experiment=ave_t7", "mask=global"], tmp_path)
    assert stamped["total"] == plain["total"] and stamped["trainable"] == plain["trainable"]
    # one generator Linear(192, 192) -> ReLU -> Linear(192, 208 tokens), mask.depth 2
    assert stamped["stamp"] == pytest.approx((192 * 192 + 192 + 192 * 208 + 208) / 1e6, abs=1e-3)
    assert plain["stamp"] == 0
