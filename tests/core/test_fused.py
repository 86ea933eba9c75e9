"""attention=fused (stamp/fused.py) computes the eager path's function and its gradients, and a
checkpointed generator (mask.checkpoint=true) the same M and gradients as a plain one."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from stamp import (
    AttendSpec,
    AttentionConfig,
    MaskConfig,
    MaskGenerator,
    StampAttention,
    eager_attention,
)
from stamp.fused import blocks, fused_attention

F64 = torch.float64


def case(nq, nk, per_head, full_pad, B=2, H=3, d=4, seed=1):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)

    q, k, v = leaf(B, H, nq, d), leaf(B, H, nk, d), leaf(B, H, nk, d)
    m = leaf(B, H, nq, nk) if per_head else leaf(B, nq, nk)
    bias = leaf(nq, nk)
    pad = torch.zeros(B, nk, dtype=torch.bool)
    pad[0, -2:] = True
    if full_pad:
        pad[1] = True  # every key of sample 1 padded: NaN rows, as eager
    weight = torch.randn(B, H, nq, d, generator=g, dtype=F64)
    return (q, k, v, m, bias), pad, weight


def outputs_and_grads(fn, leaves, pad, weight, fusion, order, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    q, k, v, m, bias = leaves
    out, _ = fn(q, k, v, AttendSpec(m, fusion, order, key_padding_mask=pad, attn_bias=bias), **kw)
    (out.nan_to_num() * weight).sum().backward()
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("fusion", ["mul", "add"])
@pytest.mark.parametrize("order", ["mask_first", "bias_first"])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize(
    "nq,nk,full_pad,block", [(5, 7, False, "rows"), (9, 3, True, "heads"), (6, 6, True, "samples")]
)
def test_fused_equals_eager(fusion, order, per_head, nq, nk, full_pad, block):
    """Values and the gradients of Q, K, V, M and the bias, with blocks of 2 query rows, of 2
    heads, or of whole samples (B=2, H=3)."""
    leaves, pad, weight = case(nq, nk, per_head, full_pad)
    elems = {"rows": 2 * nk, "heads": 2 * nq * nk, "samples": 3 * nq * nk}[block]
    assert len(blocks(2, 3, nq, nk, elems)) == {"rows": 18, "heads": 4, "samples": 2}[block]
    ref = outputs_and_grads(eager_attention, leaves, pad, weight, fusion, order)
    got = outputs_and_grads(fused_attention, leaves, pad, weight, fusion, order, block_elems=elems)
    names = ["out", "dq", "dk", "dv", "dm", "dbias"]
    for name, a, b in zip(names, ref, got, strict=True):
        assert a.shape == b.shape, name
        assert torch.equal(a.isnan(), b.isnan()), name  # NaN exactly where eager has NaN
        # eager's softmax runs in float32 even for float64 inputs; fused keeps float64
        torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5, equal_nan=True, msg=name)
    if full_pad:
        assert ref[0][1].isnan().all() and not ref[0][0].isnan().any()


@pytest.mark.parametrize("fusion", ["mul", "add"])
@pytest.mark.parametrize("order", ["mask_first", "bias_first"])
def test_fused_gradcheck(fusion, order):
    """The analytic backward is the true derivative (float64 finite differences), M per
    sample (shared by heads) and a bias broadcast over the batch."""
    g = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, dtype=F64, generator=g, requires_grad=True)

    q, k, v = leaf(2, 2, 5, 3), leaf(2, 2, 4, 3), leaf(2, 2, 4, 3)
    m, bias = leaf(2, 5, 4), leaf(1, 2, 5, 4)
    pad = torch.tensor([[False, False, False, True], [False] * 4])

    def f(q, k, v, m, bias):
        spec = AttendSpec(m, fusion, order, key_padding_mask=pad, attn_bias=bias)
        return fused_attention(q, k, v, spec, block_elems=2 * 2 * 4 * 2)[0]

    assert gradcheck(f, (q, k, v, m, bias))


def test_fused_keeps_no_quadratic_tensor():
    """Autograd saves only inputs, output and the (B, H, Nq) log-sum-exp: nothing of size
    B·H·Nq·Nk (M itself is (B, Nq, Nk), an input)."""
    B, H, n, d = 2, 4, 64, 8
    q, k, v = (torch.randn(B, H, n, d, requires_grad=True) for _ in range(3))
    m = torch.randn(B, n, n, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused_attention(q, k, v, AttendSpec(mask=m), block_elems=n * 8)
    assert sizes and max(sizes) <= B * n * n < B * H * n * n
    assert len(blocks(B, H, n, n, n * 8)) == B * H * 8


def test_module_saves_the_fused_output_once():
    """The output is laid out (B, Nq, H, d), so StampAttention's head merge is a view and the
    output projection saves the fused output's own storage, not a copy (measured: QVH
    self-attention's attention memory 1.24x -> 1.05x SDPA, BENCHMARKS.md); the fused backward
    itself keeps no output (its rowsum(P ∘ dP) comes from the recomputed blocks)."""
    B, N, D, H = 2, 12, 32, 4
    attn = StampAttention(D, H, attention=AttentionConfig(backend="fused"))
    x, m = torch.randn(B, N, D, requires_grad=True), torch.randn(B, N, N)
    saved: list[tuple[tuple[int, ...], int]] = []
    outputs: list[int] = []
    attend = attn._attend

    def spy(*args, **kw):
        out, probs = attend(*args, **kw)
        outputs.append(out.untyped_storage().data_ptr())
        return out, probs

    attn._attend = spy

    def pack(t):
        saved.append((tuple(t.shape), t.untyped_storage().data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, mask=m)
    head_tensors = {ptr for shape, ptr in saved if shape == (B, H, N, D // H)}  # q, k, v
    proj_input = [ptr for shape, ptr in saved if shape == (B * N, D)][1:]  # [0] is x (qkv)
    assert proj_input == outputs and outputs[0] not in head_tensors


def test_fused_dropout_statistics_and_backward():
    """Dropout: outputs average to the no-dropout output; the backward regenerates the same
    keep-mask (gradient of V equals P_dropᵀ dO computed from the forward's own output)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 3, dtype=F64) for _ in range(3))
    m = torch.rand(1, 4, 4, dtype=F64)
    plain = fused_attention(q, k, v, AttendSpec(mask=m))[0]
    runs = torch.stack(
        [fused_attention(q, k, v, AttendSpec(mask=m, dropout_p=0.3))[0] for _ in range(2000)]
    )
    torch.testing.assert_close(runs.mean(0), plain, atol=0.05, rtol=0.05)
    # one dropout sample: out is linear in v, so d(sum out)/dv from autograd equals the
    # finite difference of the same sample (same seed -> same mask)
    v = v.clone().requires_grad_()
    torch.manual_seed(5)
    out = fused_attention(q, k, v, AttendSpec(mask=m, dropout_p=0.5))[0]
    out.sum().backward()
    torch.manual_seed(5)
    with torch.no_grad():
        shifted = fused_attention(q, k, v + 1.0, AttendSpec(mask=m, dropout_p=0.5))[0]
    # out(v + 1) - out(v) = P_drop @ 1 per row; summed: sum of dv
    torch.testing.assert_close((shifted - out.detach()).sum(), v.grad.sum() / 1.0)


def test_module_fused_equals_eager_and_routes_probabilities():
    """StampAttention(attention=fused) trains like eager (cross-attention, Nq != Nk); asking
    for the probabilities runs the eager path."""
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    m = torch.randn(2, 5, 7, requires_grad=True)
    pad = torch.tensor([[False] * 6 + [True], [False] * 7])
    mods = {}
    for backend in ("eager", "fused"):
        torch.manual_seed(1)
        mods[backend] = StampAttention(
            16, 4, cross=True, attention=AttentionConfig(backend=backend)
        )
    grads = {}
    for backend, mod in mods.items():
        m.grad = None
        out = mod(x, ctx, mask=m, key_padding_mask=pad)
        out.square().sum().backward()
        grads[backend] = (out.detach(), m.grad.clone(), mod.kv.weight.grad.clone())
    for a, b in zip(grads["eager"], grads["fused"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    out, probs = mods["fused"](x, ctx, mask=m, return_attn=True)
    assert probs.shape == (2, 4, 5, 7)
    t = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="fused cannot return"):
        fused_attention(t, t, t, AttendSpec(return_attn=True))


def test_attention_config_accepts_fused():
    assert AttentionConfig(backend="fused").backend.value == "fused"


@pytest.mark.parametrize("depth", [1, 3, 12])
def test_checkpointed_generator_is_identical(depth):
    """mask.checkpoint=true: same M, same gradients (parameters and input), less saved memory."""
    torch.manual_seed(0)
    cfg = MaskConfig(depth=depth, init="kaiming")
    plain = MaskGenerator.from_config(cfg, 16, 9)
    ckpt = MaskGenerator.from_config(
        MaskConfig(depth=depth, init="kaiming", checkpoint=True), 16, 9
    )
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.checkpoint and not plain.checkpoint
    x = torch.randn(3, 9, 16)
    saved = {}
    results = {}
    for name, gen in (("plain", plain), ("ckpt", ckpt)):
        xi = x.clone().requires_grad_()
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m = gen(xi, n_keys=7)
        (m * torch.arange(7.0)).sum().backward()
        saved[name] = total
        results[name] = [m.detach(), xi.grad] + [p.grad for p in gen.parameters()]
    for a, b in zip(results["plain"], results["ckpt"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    if depth > 2:
        assert saved["ckpt"] < saved["plain"] / 2
    with torch.no_grad():  # no checkpointing (and no error) without grad
        torch.testing.assert_close(ckpt(x), plain(x))


def test_configs_select_fused_and_checkpoint(tmp_path):
    """``attention=fused mask.checkpoint=true`` compose; an encoder built from them trains to
    the same gradients as eager without checkpointing."""
    from stamp import StampEncoder, as_attention_config, as_mask_config
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["attention=fused", "mask.checkpoint=true", "mask.depth=3"], tmp_path)
    assert cfg.attention.backend == "fused" and cfg.mask.checkpoint is True
    grads = {}
    for name, attention, mask in (
        ("fused+ckpt", cfg.attention, cfg.mask),
        ("eager", None, {**cfg.mask, "checkpoint": False}),
    ):
        torch.manual_seed(0)
        enc = StampEncoder(
            2, 16, 4, 32, n_max=9, mask=as_mask_config(mask),
            attention=as_attention_config(attention), dropout=0.0, attn_dropout=0.0,
        )  # fmt: skip
        x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
        pad = torch.zeros(2, 9, dtype=torch.bool)
        pad[1, 6:] = True
        enc(x, key_padding_mask=pad).square().sum().backward()
        grads[name] = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    assert len(grads["eager"]) == len(grads["fused+ckpt"]) > 0
    for a, b in zip(grads["eager"], grads["fused+ckpt"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
