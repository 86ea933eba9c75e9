"""The generator forms of ``mask.generator`` (mlp / lowrank) and ``mask.per_head``: shapes,
hand-computed values, length independence, parameter counts, inits, and every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stamp import (
    AttendSpec,
    LowRankMaskGenerator,
    MaskConfig,
    MaskGenerator,
    MaskPlan,
    StampCrossAttentionLayer,
    StampEncoder,
)
from stamp.attention import eager_attention, flex_attention_backend, sdpa_attention
from stamp.diagnostics import token_dependence
from stamp.fused import fused_attention
from stamp.mask import generator_parameters

B, N, D, H, R = 2, 7, 16, 4, 3


def _cfg(**kw) -> MaskConfig:
    return MaskConfig(**{"depth": 2, "init": "kaiming", **kw})


def test_mlp_per_head_matches_hand_formula():
    gen = MaskGenerator.from_config(_cfg(per_head=True), D, 10, num_heads=H)
    x = torch.randn(B, N, D)
    m = gen(x)
    assert m.shape == (B, H, N, N)
    h = torch.relu(gen.hidden[0](x))
    full = gen.out(h).view(B, N, H, 10)  # head-major output columns
    torch.testing.assert_close(m, full[..., :N].permute(0, 2, 1, 3))
    assert sum(p.numel() for p in gen.parameters()) == MaskGenerator.num_parameters(
        D, 10, 2, heads=H
    )


def test_lowrank_matches_hand_formula_and_has_no_n_max():
    gen = MaskGenerator.from_config(_cfg(generator="lowrank", rank=R, bound="softplus"), D, None)
    assert isinstance(gen, LowRankMaskGenerator) and gen.n_max is None
    x = torch.randn(B, N, D)
    h = torch.relu(gen.hidden[0](x))
    f, g = gen.query(h), gen.key(h)
    expected = F.softplus(f @ g.transpose(-2, -1) / R**0.5 + gen.offset)
    torch.testing.assert_close(gen(x), expected)
    # cross-attention: keys from the context tokens
    ctx = torch.randn(B, 11, D)
    hk = torch.relu(gen.hidden[0](ctx))
    expected = F.softplus(f @ gen.key(hk).transpose(-2, -1) / R**0.5 + gen.offset)
    torch.testing.assert_close(gen(x, context=ctx), expected)
    torch.testing.assert_close(gen(x, n_keys=5, context=ctx), expected[..., :5])


def test_lowrank_accepts_any_length_and_parameters_do_not_depend_on_n():
    counts = set()
    for n_max in (8, 512, None):
        gen = MaskGenerator.from_config(_cfg(generator="lowrank", rank=R), D, n_max)
        counts.add(sum(p.numel() for p in gen.parameters()))
        assert gen(torch.randn(1, 1000, D)).shape == (1, 1000, 1000)
    assert counts == {LowRankMaskGenerator.lowrank_parameters(D, 2, R)}
    mlp = MaskGenerator.from_config(_cfg(), D, 8)
    with pytest.raises(ValueError, match="generator=lowrank"):
        mlp(torch.randn(1, 9, D))
    with pytest.raises(ValueError, match="needs the longest key sequence"):
        MaskGenerator.from_config(_cfg(), D, None)


def test_lowrank_cached_factors_equal_the_full_mask():
    gen = MaskGenerator.from_config(
        _cfg(generator="lowrank", rank=R, per_head=True), D, None, num_heads=H
    )
    x = torch.randn(B, N, D)
    full = gen(x)
    assert full.shape == (B, H, N, N)
    keys = torch.cat([gen.key_factor(x[:, :4]), gen.key_factor(x[:, 4:])], dim=2)
    last = gen.combine(gen.query_factor(x[:, -1:]), keys)
    torch.testing.assert_close(last, full[:, :, -1:])


def test_lowrank_context_of_another_width():
    gen = MaskGenerator.from_config(_cfg(generator="lowrank", rank=R), D, None, context_dim=6)
    m = gen(torch.randn(B, N, D), context=torch.randn(B, 5, 6))
    assert m.shape == (B, N, 5)
    n = sum(p.numel() for p in gen.parameters())
    assert n == LowRankMaskGenerator.lowrank_parameters(D, 2, R, context_dim=6)


@pytest.mark.parametrize("fusion", ["mul", "add"])
@pytest.mark.parametrize("per_head", [False, True])
def test_lowrank_identity_init_is_exact_and_trains(fusion, per_head):
    cfg = _cfg(generator="lowrank", rank=R, init="identity", fusion=fusion, per_head=per_head)
    gen = MaskGenerator.from_config(cfg, D, None, num_heads=H)
    x = torch.randn(B, N, D)
    m = gen(x)
    assert torch.equal(m, torch.full_like(m, 1.0 if fusion == "mul" else 0.0))
    (m * torch.randn_like(m)).sum().backward()
    assert gen.query.weight.grad.abs().sum() > 0  # M moves at the first step


def test_kaiming_lowrank_is_token_dependent_at_depth():
    # measured (seed 0): depth 2 0.73, 16 0.38, 32 0.10 (MLP kaiming: 0.71, 0.25, 0.18); a deep
    # random ReLU stack makes token features alike, so dependence falls with depth in both forms
    torch.manual_seed(0)
    x = torch.randn(4, 64, 256)
    for depth in (2, 16):
        gen = MaskGenerator.from_config(_cfg(generator="lowrank", depth=depth, rank=16), 256, None)
        with torch.no_grad():
            dep = token_dependence(gen(x))
        assert dep > 0.1, (depth, dep)


def test_invalid_generator_lists_the_choices():
    with pytest.raises(ValueError, match="mask.generator='conv'.*mlp, lowrank"):
        MaskConfig(generator="conv")
    with pytest.raises(ValueError, match="mask.rank"):
        MaskConfig(rank=0)


def test_per_head_mask_on_every_backend():
    q, k, v = (torch.randn(B, H, N, 8) for _ in range(3))
    m = torch.randn(B, H, N, N)
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, -2:] = True
    for fusion in ("mul", "add"):
        ref, _ = eager_attention(q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad))
        per_head_loop = torch.stack(
            [
                eager_attention(
                    q[:, i : i + 1],
                    k[:, i : i + 1],
                    v[:, i : i + 1],
                    AttendSpec(mask=m[:, i], fusion=fusion, key_padding_mask=pad),
                )[0][:, 0]
                for i in range(H)
            ],
            dim=1,
        )
        torch.testing.assert_close(ref, per_head_loop)
        out, _ = fused_attention(q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            out, _ = flex_attention_backend(
                q, k, v, AttendSpec(mask=m, fusion=fusion, key_padding_mask=pad)
            )
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out, _ = sdpa_attention(q, k, v, AttendSpec(mask=m, fusion="add", key_padding_mask=pad))
    ref, _ = eager_attention(q, k, v, AttendSpec(mask=m, fusion="add", key_padding_mask=pad))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_type", ["global", "multilayer"])
@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_encoder_with_every_generator_form(mask_type, generator):
    cfg = _cfg(type=mask_type, generator=generator, per_head=True, rank=R)
    enc = StampEncoder(2, D, H, n_max=N, mask=cfg)
    x = torch.randn(B, N, D)
    enc(x).sum().backward()
    gens = [m for m in enc.modules() if isinstance(m, MaskGenerator)]
    assert len(gens) == (1 if mask_type == "global" else 2)
    assert all(g.heads == H for g in gens)
    assert all(g.first_linear.weight.grad.abs().sum() > 0 for g in gens)
    if generator == "lowrank":  # longer than n_max: accepted
        assert enc(torch.randn(1, 3 * N, D)).shape == (1, 3 * N, D)


def test_cross_attention_lowrank_reads_the_context():
    plan = MaskPlan(_cfg(generator="lowrank", rank=R), dim=D, num_heads=H, context_dim=6)
    layer = StampCrossAttentionLayer(D, H, plan=plan)
    x, ctx = torch.randn(B, N, D), torch.randn(B, 5, 6)
    m = layer.mask_generator(x, n_keys=5, context=ctx)
    assert m.shape == (B, N, 5)
    out1 = layer(x, ctx)
    ctx2 = ctx.clone()
    ctx2[:, 0] += 1.0
    # the mask (not only the values) changes with the keys' content
    assert not torch.allclose(layer.mask_generator(x, context=ctx2), m)
    assert out1.shape == (B, N, D)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_generator_parameters_is_the_built_count(generator, per_head):
    cfg = _cfg(generator=generator, per_head=per_head, rank=R, depth=3)
    gen = MaskGenerator.from_config(cfg, D, 40, num_heads=H)
    assert generator_parameters(cfg, D, 40, H) == sum(p.numel() for p in gen.parameters())


def test_controls_match_the_chosen_generator_form():
    """The +Linear / +layers controls are sized to the generator form that mask describes."""
    dim, n, depth = 32, 400, 2
    counts = {}
    for generator in ("mlp", "lowrank"):
        cfg = _cfg(type="extra_linear", generator=generator, depth=depth, rank=4)
        enc = StampEncoder(1, dim, 4, n_max=n, mask=cfg)
        extra = sum(p.numel() for p in enc.layers[0].extra.parameters())
        counts[generator] = extra
        reference = generator_parameters(cfg, dim, n)
        assert abs(extra - reference) <= (dim * dim + dim) / 2  # the nearest count of Linears
    # at N=400 the MLP generator has ~12x the low-rank one's parameters: so do the controls
    assert counts["mlp"] > 5 * counts["lowrank"]
