"""stamp.inject on timm's ``Attention`` reads the model's own mask through timm's
``resolve_self_attn_mask``: with STAMP at its identity start the output equals timm's for a
boolean mask, an additive mask and ``is_causal``, on both of timm's attention paths."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import Attention
from torch import nn

import stamp

B, N, DIM, HEADS = 2, 7, 32, 4


def masks() -> dict[str, dict]:
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(B, 1, N, N, generator=g) > 0.3
    keep[..., 0] = True  # every query keeps one key (no all -inf row)
    return {
        "bool": {"attn_mask": keep},
        "float": {"attn_mask": torch.randn(B, 1, N, N, generator=g)},
        "causal": {"is_causal": True},
    }


@pytest.mark.parametrize("fused", [False, True], ids=["timm_eager", "timm_sdpa"])
@pytest.mark.parametrize("kind", ["bool", "float", "causal"])
@pytest.mark.parametrize("fusion", ["mul", "add"])
def test_timm_masks_pass_through_injection(kind, fused, fusion):
    torch.manual_seed(0)
    timm_attn = Attention(DIM, HEADS, qkv_bias=True).eval()
    timm_attn.fused_attn = fused
    model = nn.ModuleDict({"attn": copy.deepcopy(timm_attn)})
    stamp.inject(model, mask={"fusion": fusion}, n_max=N, attention="eager")
    x = torch.randn(B, N, DIM)
    kwargs = masks()[kind]
    with torch.no_grad():
        want = timm_attn(x, **kwargs)
        got = model["attn"](x, **kwargs)
    assert type(model["attn"]).__name__ == "StampTimmAttention"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if kind != "float":  # the masked keys matter: without the mask the output differs
        with torch.no_grad():
            assert (model["attn"](x) - want).abs().max() > 1e-3
