"""Table 4 as the paper defines it: experiment=mad_ad_t4 through scripts/profile_compute.py
profiles the four Table 3 models per AD (FLOPs, MACs, params, latency) into the T4 rows."""

from __future__ import annotations

import json

from stamp.mask import matched_linear_count
from tasks.common.reporting.tables import load_paper

TOKENS, DIM, LAYERS, DEPTH = 5, 32, 2, 2  # 5 + 5 AV tokens of width 32, 2 layers, depth-2 STAMP


def test_mad_ad_t4_profiles_the_four_table3_models(tmp_path, monkeypatch, tiny_llama, mad_dir):
    from scripts.profile_compute import main

    monkeypatch.setenv("STAMP_ROOT", str(tmp_path))
    out = tmp_path / "t4"
    tiny = [
        f"data.root={mad_dir}",
        f"model.llm_path={tiny_llama}",
        f"data.tokens_per_modality={TOKENS}",
        "model.visual_dim=16",
        "model.audio_dim=16",
        f"model.dim={DIM}",
        f"model.num_layers={LAYERS}",
        "model.num_heads=4",
        "model.adapter_dim=16",
        "model.adapter_depth=2",
        "model.adapter_heads=2",
        "model.num_queries=4",
        "model.adapter_layers=2",
        "model.lora_rank=4",
        f"mask.depth={DEPTH}",
        "model.extra_layers=3",
    ]
    args = ["experiment=mad_ad_t4", *tiny, "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0  # the experiment's own sweep: no --masks, no --table needed
    records = {r["row"]: r for r in json.loads((out / "profile.json").read_text())}
    assert list(records) == ["none", "extra_linear", "extra_layers", "multilayer"]
    assert {r["table"] for r in records.values()} == {"T4"}
    assert {r["batch_size"] for r in records.values()} == {1}  # per AD
    assert records["extra_linear"]["config"]["mask"]["linear_control"] == "plain"  # the paper's
    flops = {row: r["metrics"]["compute/flops"] for row, r in records.items()}
    n = 2 * TOKENS
    # +Linear: k Linear(D, D) after each of the AV layers' attention, on the N AV tokens
    k = matched_linear_count(DIM, n, DEPTH)
    assert flops["extra_linear"] - flops["none"] == LAYERS * k * 2 * n * DIM * DIM
    # multi-layer STAMP: per layer a depth-2 generator Linear(D, D), Linear(D, N) on N tokens
    assert flops["multilayer"] - flops["none"] == LAYERS * 2 * n * (DIM * DIM + DIM * n)
    assert flops["extra_layers"] > flops["none"]
    for r in records.values():
        m = r["metrics"]
        assert m["compute/macs"] == m["compute/flops"] / 2 and m["compute/latency_ms"] > 0
        assert m["compute/params"] == r["params"]["params/total"]
    text = (out / "profile.md").read_text()
    assert "## T4" in text and "| Base. + Linear Layers `extra_linear` |" in text
    assert "3.45T" in text  # the paper's +Linear FLOPs beside ours
    assert [r.id for r in load_paper()["T4"].rows] == list(records)
