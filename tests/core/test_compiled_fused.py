"""attention=compiled_fused: stamp/fused.py's blocked loop with each block's body compiled by
torch.compile computes the eager path's values and every gradient (Q, K, V, M, the bias, and
the factors of a low-rank M) and keeps no B·H·Nq·Nk tensor.

Compiling costs 10-50 s on the 2-core CPU (inductor's start-up and one compile per flag
combination), so these tests are marked slow and are few and small: each covers several
settings at once (fusion, order, padding, per-head / shared / low-rank M), with blocks of equal
size so each body compiles once. The block bodies themselves are the ones ``attention=fused``
runs uncompiled, tested in the default suite (tests/core/test_fused.py); the fast test here
checks that the compiled variant wraps exactly those."""

from __future__ import annotations

import pytest
import torch

from stamp import AttendSpec, AttentionConfig, StampAttention, eager_attention, fused
from stamp.attention import ATTENTION_BACKENDS
from stamp.config import Backend
from stamp.fused import blocks, compiled_fused_attention

F64 = torch.float64
B, H, NQ, NK, D = 2, 2, 6, 5, 4
ROWS = 2  # blocks of 2 query rows of one head: 12 equal blocks


def leaves(mask_form: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)

    out = {"q": leaf(B, H, NQ, D), "k": leaf(B, H, NK, D), "v": leaf(B, H, NK, D)}
    out["bias"] = leaf(NQ, NK)
    if mask_form == "shared":
        out["m"] = leaf(B, NQ, NK)
    elif mask_form == "per_head":
        out["m"] = leaf(B, H, NQ, NK)
    else:  # low-rank: M = f gᵀ, gradients reach the factors
        out["f"], out["g"] = leaf(B, NQ, 3), leaf(B, NK, 3)
    return out


def run(fn, named: dict[str, torch.Tensor], fusion: str, order: str, pad: torch.Tensor):
    named = {k: t.detach().clone().requires_grad_() for k, t in named.items()}
    m = named.get("m")
    if m is None:
        m = named["f"] @ named["g"].transpose(-2, -1)
    spec = AttendSpec(m, fusion, order, key_padding_mask=pad, attn_bias=named["bias"])
    out, _ = fn(named["q"], named["k"], named["v"], spec)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    (out.nan_to_num() * weight).sum().backward()
    return {"out": out, **{f"d{k}": t.grad for k, t in named.items()}}


def test_compiled_variant_wraps_the_fused_block_bodies(monkeypatch):
    """attention=compiled_fused resolves to the fused loop with ``compiled=True``, whose block
    bodies are torch.compile wrappers of the uncompiled ones (no second implementation)."""
    assert ATTENTION_BACKENDS[Backend.compiled_fused] is compiled_fused_attention
    monkeypatch.setattr(fused, "_compiled_blocks", None)
    fwd, bwd = fused._block_fns(compiled=True)
    assert fwd._torchdynamo_orig_callable is fused._forward_block
    assert bwd._torchdynamo_orig_callable is fused._backward_block
    assert fused._block_fns(compiled=False) == (fused._forward_block, fused._backward_block)
    calls = []
    monkeypatch.setattr(fused, "_block_fns", lambda compiled: calls.append(compiled) or (
        fused._forward_block, fused._backward_block))  # fmt: skip
    q = torch.randn(1, 2, 4, 3, requires_grad=True)
    compiled_fused_attention(q, q, q, AttendSpec(mask=torch.randn(1, 4, 4)))[0].sum().backward()
    assert calls == [True, True]  # forward and backward


@pytest.mark.slow
@pytest.mark.parametrize(
    "fusion, order, mask_form",
    [("mul", "bias_first", "per_head"), ("add", "mask_first", "lowrank"),
     ("mul", "mask_first", "shared"), ("add", "bias_first", "per_head"),
     ("mul", "bias_first", "lowrank")],
)  # fmt: skip
def test_compiled_fused_equals_eager(fusion, order, mask_form):
    """Values and every gradient against eager, with key padding (one sample fully padded:
    NaN rows exactly where eager has them)."""
    named = leaves(mask_form)
    pad = torch.zeros(B, NK, dtype=torch.bool)
    pad[0, -2:] = True
    pad[1] = True
    assert len(blocks(B, H, NQ, NK, ROWS * NK)) == B * H * NQ // ROWS
    ref = run(eager_attention, named, fusion, order, pad)
    got = run(
        lambda *a, **kw: compiled_fused_attention(*a, **kw, block_elems=ROWS * NK),
        named, fusion, order, pad,
    )  # fmt: skip
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name].isnan(), got[name].isnan()), name
        torch.testing.assert_close(got[name], ref[name], atol=2e-6, rtol=1e-5, equal_nan=True)
    assert ref["out"][1].isnan().all() and not ref["out"][0].isnan().any()


@pytest.mark.slow
def test_compiled_fused_keeps_no_quadratic_tensor_and_trains_a_module():
    """Through StampAttention (attention=compiled_fused, the config's backend name): autograd
    saves nothing of size B·H·N·N, and the module's outputs and gradients equal eager's."""
    dim, heads, n = 16, 4, 12
    torch.manual_seed(0)
    ref = StampAttention(dim, heads)
    mod = StampAttention(dim, heads, attention=AttentionConfig(backend="compiled_fused"))
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(B, n, dim)
    m = torch.randn(B, n, n)
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    outs, grads = [], []
    for module in (ref, mod):
        xi, mi = x.clone().requires_grad_(), m.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(
            pack if module is mod else (lambda t: t), lambda t: t
        ):
            out = module(xi, mask=mi)
        out.square().sum().backward()
        outs.append(out)
        grads.append((xi.grad, mi.grad, module.qkv.weight.grad))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert sizes and max(sizes) < B * heads * n * n
