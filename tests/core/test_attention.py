"""Backends against the eager reference and against PyTorch's own attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stamp import (
    AttendSpec,
    AttentionConfig,
    StampAttention,
    eager_attention,
    flex_attention_backend,
    sdpa_attention,
)

B, H, D_HEAD = 3, 2, 8


def qkv(nq: int, nk: int, requires_grad: bool = True):
    q = torch.randn(B, H, nq, D_HEAD, dtype=torch.float64, requires_grad=requires_grad)
    k = torch.randn(B, H, nk, D_HEAD, dtype=torch.float64, requires_grad=requires_grad)
    v = torch.randn(B, H, nk, D_HEAD, dtype=torch.float64, requires_grad=requires_grad)
    return q, k, v


def padding(nk: int) -> torch.Tensor:
    pad = torch.zeros(B, nk, dtype=torch.bool)
    pad[1, nk - 3 :] = True
    pad[2, nk // 2 :] = True
    return pad


def soft_mask(nq: int, nk: int) -> torch.Tensor:
    # unconstrained sign, as in the paper
    return torch.randn(B, nq, nk, dtype=torch.float64, requires_grad=True)


def grads(out: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(
        torch.autograd.grad((out * torch.linspace(0, 1, out.numel()).view_as(out)).sum(), tensors)
    )


@pytest.mark.parametrize("nq,nk", [(7, 7), (5, 9)], ids=["self", "cross"])
def test_eager_matches_hand_written_formula(nq, nk):
    q, k, v = qkv(nq, nk)
    m, pad = soft_mask(nq, nk), padding(nk)
    out, probs = eager_attention(
        q, k, v, AttendSpec(mask=m, fusion="mul", key_padding_mask=pad, return_attn=True)
    )
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / D_HEAD**0.5 * m[:, None]
    logits = logits.masked_fill(pad[:, None, None], float("-inf"))
    expected = torch.softmax(logits, -1) @ v
    torch.testing.assert_close(out, expected)
    assert torch.all(probs.masked_select(pad[:, None, None].expand_as(probs)) == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


@pytest.mark.parametrize("nq,nk", [(7, 7), (5, 9)], ids=["self", "cross"])
def test_sdpa_additive_matches_eager_outputs_and_gradients(nq, nk):
    q, k, v = qkv(nq, nk)
    m, pad = soft_mask(nq, nk), padding(nk)
    bias = torch.randn(1, 1, nq, nk, dtype=torch.float64)
    ref, _ = eager_attention(
        q, k, v, AttendSpec(mask=m, fusion="add", key_padding_mask=pad, attn_bias=bias)
    )
    out, _ = sdpa_attention(
        q, k, v, AttendSpec(mask=m, fusion="add", key_padding_mask=pad, attn_bias=bias)
    )
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for g_out, g_ref in zip(grads(out, q, k, v, m), grads(ref, q, k, v, m), strict=True):
        torch.testing.assert_close(g_out, g_ref, atol=1e-6, rtol=1e-6)


def test_sdpa_refuses_multiplicative_mask_with_guidance():
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="attention=flex.*mask.fusion=add"):
        sdpa_attention(q, k, v, AttendSpec(mask=soft_mask(4, 4), fusion="mul"))


@pytest.mark.parametrize(
    "nq,nk,fusion,compiled",
    [
        (7, 7, "mul", True),
        pytest.param(5, 9, "add", True, marks=pytest.mark.slow),
        (5, 9, "mul", False),
        (7, 7, "add", False),
    ],
    ids=["self-mul-compiled", "cross-add-compiled", "cross-mul-uncompiled", "self-add-uncompiled"],
)
def test_flex_forward_matches_eager(nq, nk, fusion, compiled, monkeypatch):
    """flex attention (CPU forward) with the score_mod reading M, bias and padding. The compiled
    kernel is what runs; the uncompiled one checks the same score_mod without a ~20 s compile."""
    if not compiled:
        from torch.nn.attention.flex_attention import flex_attention

        import stamp.attention

        monkeypatch.setattr(stamp.attention, "_flex_kernel", lambda: flex_attention)
    q, k, v = (t.detach().float() for t in qkv(nq, nk))
    m, pad = soft_mask(nq, nk).detach().float(), padding(nk)
    bias = torch.randn(B, 1, nq, nk)
    with torch.no_grad():
        ref, _ = eager_attention(
            q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad, attn_bias=bias)
        )
        out, _ = flex_attention_backend(
            q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad, attn_bias=bias)
        )
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex backward needs a GPU")
@pytest.mark.parametrize("fusion", ["mul", "add"])
def test_flex_gradients_match_eager_on_gpu(fusion):
    q, k, v = (t.detach().float().cuda().requires_grad_() for t in qkv(33, 40))
    m = soft_mask(33, 40).detach().float().cuda().requires_grad_()
    pad = padding(40).cuda()
    ref, _ = eager_attention(q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad))
    out, _ = flex_attention_backend(
        q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad)
    )
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
    for g_out, g_ref in zip(grads(out, q, k, v, m), grads(ref, q, k, v, m), strict=True):
        torch.testing.assert_close(g_out, g_ref, atol=1e-3, rtol=1e-3)


def test_identity_masks_equal_plain_attention():
    q, k, v = qkv(6, 6)
    pad = padding(6)
    plain = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=torch.zeros(B, 1, 6, 6, dtype=q.dtype).masked_fill(
            pad[:, None, None], float("-inf")
        ),
    )
    ones, zeros = torch.ones(B, 6, 6, dtype=q.dtype), torch.zeros(B, 6, 6, dtype=q.dtype)
    mul, _ = eager_attention(q, k, v, AttendSpec(mask=ones, fusion="mul", key_padding_mask=pad))
    add, _ = eager_attention(q, k, v, AttendSpec(mask=zeros, fusion="add", key_padding_mask=pad))
    torch.testing.assert_close(mul, plain)
    torch.testing.assert_close(add, plain)


def test_padding_after_fusion_avoids_nan_for_zero_and_negative_masks():
    q, k, v = qkv(4, 6)
    pad = padding(6)
    m = torch.zeros(B, 4, 6, dtype=q.dtype)
    m[..., 0] = -3.0
    out, probs = eager_attention(
        q, k, v, AttendSpec(mask=m, fusion="mul", key_padding_mask=pad, return_attn=True)
    )
    assert torch.isfinite(out).all()
    assert torch.all(probs.masked_select(pad[:, None, None].expand_as(probs)) == 0)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_module_without_mask_matches_torch_multihead_attention(cross):
    """StampAttention with no mask == nn.MultiheadAttention with the same weights."""
    dim, heads, nq, nk = 16, 4, 5, 7
    ours = StampAttention(dim, heads, cross=cross).eval()
    ref = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        if cross:
            w = torch.cat([ours.q.weight, ours.kv.weight])
            b = torch.cat([ours.q.bias, ours.kv.bias])
        else:
            w, b = ours.qkv.weight, ours.qkv.bias
        ref.in_proj_weight.copy_(w)
        ref.in_proj_bias.copy_(b)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, nq, dim)
    ctx = torch.randn(2, nk, dim) if cross else x
    pad = torch.zeros(2, ctx.shape[1], dtype=torch.bool)
    pad[1, -2:] = True
    expected, _ = ref(x, ctx, ctx, key_padding_mask=pad)
    got = ours(x, ctx if cross else None, key_padding_mask=pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_module_positions_enter_queries_and_keys_only():
    """DETR convention: q = W_q(x + pos), k = W_k(x + pos), v = W_v(x)."""
    dim, heads = 16, 4
    attn = StampAttention(dim, heads).eval()
    x, pos = torch.randn(2, 5, dim), torch.randn(2, 5, dim)
    q, k, _ = attn.qkv(x + pos).chunk(3, -1)
    _, _, v = attn.qkv(x).chunk(3, -1)
    split = lambda t: t.view(2, 5, heads, dim // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    expected = attn.proj(out.transpose(1, 2).reshape(2, 5, dim))
    torch.testing.assert_close(attn(x, pos=pos), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["mul", "add"])
def test_module_backends_agree_on_outputs_and_gradients(fusion):
    dim, heads = 16, 4
    torch.manual_seed(0)
    ref = StampAttention(dim, heads, fusion=fusion, attention=AttentionConfig(backend="eager"))
    backends = ["sdpa"] if fusion == "add" else []
    x = torch.randn(2, 6, dim)
    m = torch.randn(2, 6, 6)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, -1] = True
    out_ref = ref(x, mask=m, key_padding_mask=pad)
    g_ref = torch.autograd.grad(out_ref.square().sum(), list(ref.parameters()))
    for backend in backends:
        other = StampAttention(
            dim, heads, fusion=fusion, attention=AttentionConfig(backend=backend)
        )
        other.load_state_dict(ref.state_dict())
        out = other(x, mask=m, key_padding_mask=pad)
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-4)
        g = torch.autograd.grad(out.square().sum(), list(other.parameters()))
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_flex_refuses_cpu_training_with_a_clear_message():
    attn = StampAttention(16, 4, attention=AttentionConfig(backend="flex"))
    x = torch.randn(2, 5, 16)
    with pytest.raises(RuntimeError, match="only the forward of flex attention on CPU"):
        attn(x, mask=torch.randn(2, 5, 5))


def test_flex_cpu_training_fallback_uses_eager_path():
    cfg = AttentionConfig(backend="flex", flex_cpu_training="eager")
    flex = StampAttention(16, 4, attention=cfg)
    eager = StampAttention(16, 4)
    eager.load_state_dict(flex.state_dict())
    x, m = torch.randn(2, 5, 16), torch.randn(2, 5, 5)
    out = flex(x, mask=m)
    out.sum().backward()
    torch.testing.assert_close(out, eager(x, mask=m))
    assert flex.qkv.weight.grad is not None


@pytest.mark.slow
def test_compiled_eager_trains_on_cpu():
    cfg = AttentionConfig(backend="eager", compile=True)
    attn = StampAttention(16, 4, attention=cfg)
    ref = StampAttention(16, 4)
    ref.load_state_dict(attn.state_dict())
    x, m = torch.randn(2, 5, 16), torch.randn(2, 5, 5)
    out = attn(x, mask=m)
    out.sum().backward()
    torch.testing.assert_close(out, ref(x, mask=m), atol=1e-5, rtol=1e-4)
    assert attn.qkv.weight.grad is not None
