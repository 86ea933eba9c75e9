"""Table 3's parameter totals at the paper's sizes (LLaMA-7B built on ``meta``, no weights)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from stamp import MaskGenerator  # noqa: E402
from tasks.mad_ad.model import table3_parameter_totals  # noqa: E402

LLAMA_7B_PARAMS = 6_738_415_616  # LLaMA-7B (HF conversion, untied 32000-token head)


@pytest.fixture(scope="module")
def totals() -> dict[str, dict]:
    return table3_parameter_totals(full=False)  # the full model once, then the AV encoders


def test_totals_within_one_percent_of_the_paper(totals):
    for name, row in totals.items():
        if row["paper_B"] is not None:
            assert abs(row["total"] / 1e9 / row["paper_B"] - 1) < 0.01, (name, row["total"])


def test_the_parts_add_up(totals):
    base = totals["baseline"]
    assert base["llm"] + base["norm_in_llm"] == LLAMA_7B_PARAMS
    # LoRA r=16 on q, k, v, o (4096 -> 4096) and the MLP (4096 <-> 11008), all 32 layers
    assert base["lora"] == 32 * 16 * (4 * 2 * 4096 + 3 * (4096 + 11008))
    # V2's biases: q, o (4096 each), w1, w3 (11008 each), w2 (4096)
    assert base["bias"] == 32 * (3 * 4096 + 2 * 11008)
    assert base["gate"] == 31 * 32
    # multi-layer STAMP: 16 generators of depth 16 at width 768 over the 50 AV tokens
    stamp = totals["multilayer"]["av_mask_or_control"]
    assert stamp == 16 * MaskGenerator.num_parameters(768, 50, 16)
    for row in ("extra_linear", "extra_layers_matched"):
        assert abs(totals[row]["av_mask_or_control"] / stamp - 1) < 0.01
    assert totals["extra_layers"]["extra_layers"] == 39


@pytest.mark.slow
def test_full_builds_give_the_same_totals(totals):
    assert table3_parameter_totals(full=True) == totals
