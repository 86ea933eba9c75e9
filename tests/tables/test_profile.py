"""Compute profile: FLOPs of attention against the formula, the profile script on the demo."""

from __future__ import annotations

import json

import pytest
import torch

from stamp import AttentionConfig, StampAttention
from tasks.common.reporting.profiling import (
    count_flops,
    split_overrides,
)
from tests.helpers import DEMO_TINY

TINY = DEMO_TINY


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_flops_of_a_plain_attention_layer_equal_the_formula(backend):
    B, N, D, H = 3, 10, 32, 4
    layer = StampAttention(D, H, attention=AttentionConfig(backend=backend)).eval()
    x = torch.randn(B, N, D)
    flops, per_op = count_flops(lambda: layer(x))
    # qkv (2 B N D 3D) + output projection (2 B N D D) + QK^T and AV (2 x 2 B H N N d)
    assert flops == 2 * B * N * D * 3 * D + 2 * B * N * D * D + 4 * B * H * N * N * (D // H)
    assert per_op  # counted per operator (bmm for eager, the SDPA MATH decomposition for sdpa)


def test_fusing_a_mask_adds_no_matrix_product_flops():
    B, N, D, H = 2, 8, 16, 2
    layer = StampAttention(D, H).eval()
    x, m = torch.randn(B, N, D), torch.randn(B, N, N)
    plain, _ = count_flops(lambda: layer(x))
    masked, _ = count_flops(lambda: layer(x, mask=m))
    assert plain == masked


def test_sweep_overrides_expand_to_their_product():
    runs = split_overrides(
        ["task=demo", "mask=none,multilayer", "attention=eager,sdpa", "model.x=[1,2]"]
    )
    assert len(runs) == 4
    assert runs[0] == ["task=demo", "model.x=[1,2]", "mask=none", "attention=eager"]
    assert runs[-1][-2:] == ["mask=multilayer", "attention=sdpa"]


def test_profile_script_on_the_demo(tmp_path):
    from scripts.make_tables import main as make_tables
    from scripts.profile_compute import main

    out = tmp_path / "profile"
    code = main(
        [
            "task=demo",
            *TINY,
            "--masks",
            "none,multilayer",
            "--backends",
            "eager,sdpa",
            "--warmup",
            "0",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 1  # multilayer (mul) x sdpa cannot run: reported, the others profiled
    records = {
        (r["mask"], r["attention"]): r for r in json.loads((out / "profile.json").read_text())
    }
    assert records[("multilayer", "sdpa")]["status"] == "failed"
    assert "cannot fuse a multiplicative mask" in records[("multilayer", "sdpa")]["error"]
    none, stamp = records[("none", "eager")], records[("multilayer", "eager")]
    assert records[("none", "sdpa")]["metrics"]["compute/flops"] == none["metrics"]["compute/flops"]
    # the difference is the two layers' generators: Linear(D, D) and Linear(D, N) per token
    B, N, D, layers = 16, 1 + 24 + 24, 32, 2
    generator = layers * 2 * B * N * (D * D + D * N)
    assert stamp["metrics"]["compute/flops"] - none["metrics"]["compute/flops"] == generator
    assert stamp["metrics"]["compute/macs"] == stamp["metrics"]["compute/flops"] / 2
    assert stamp["batch_size"] == B and stamp["metrics"]["compute/latency_ms"] > 0
    assert stamp["params"]["params/mask"] > 0 == none["params"]["params/mask"]
    text = (out / "profile.md").read_text()
    assert "| Model | FLOPs | MACs | Params | Latency (ms) |" in text and "device: cpu" in text
    # make_tables reads profile.json as well
    assert make_tables([str(out), "--out", str(tmp_path / "tables")]) == 0
    assert "demo-compute" in (tmp_path / "tables" / "tables.md").read_text()


def test_profile_rows_fill_table_4_beside_the_paper(tmp_path):
    from scripts.profile_compute import main

    out = tmp_path / "t4"
    assert (
        main(
            [
                "task=demo",
                *TINY,
                "--masks",
                "none,multilayer",
                "--table",
                "T4",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "profile.md").read_text()
    assert "## T4" in text and "| Multi-Layer STAMP `multilayer` |" in text
    assert "3.43T" in text  # the paper's FLOPs beside


def test_profile_default_output_is_where_the_docs_say(tmp_path, monkeypatch):
    """Without --out: ``outputs/<task>/profile/<date>`` (docs/tables.md), not outputs/scratch."""
    from scripts.profile_compute import main

    monkeypatch.setenv("STAMP_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = ["task=demo", *TINY, "--masks", "none", "--warmup", "0", "--repeats", "1"]
    assert main(args) == 0
    written = list((tmp_path / "outputs" / "demo" / "profile").glob("*/profile.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())[0]["task"] == "demo"
    assert not (tmp_path / "outputs" / "scratch" / "demo").exists()
