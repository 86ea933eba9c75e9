"""Mask generator, sparse mask, mask modes of the encoder, parameter counts, config validation."""

from __future__ import annotations

import pytest
import torch

from stamp import (
    AttentionConfig,
    MaskConfig,
    MaskGenerator,
    MaskPlan,
    SparseMask,
    StampCrossAttentionLayer,
    StampEncoder,
    StampEncoderLayer,
    collect_aux_loss,
    mask_parameter_count,
    record_attention,
)

DIM, HEADS, FFN, N_MAX, LAYERS = 16, 4, 32, 12, 3


def encoder(mask_type: str, depth: int = 3, **kw) -> StampEncoder:
    return StampEncoder(
        LAYERS,
        DIM,
        HEADS,
        FFN,
        n_max=N_MAX,
        mask=MaskConfig(type=mask_type, depth=depth, **kw),
        dropout=0.0,
    ).eval()


def test_generator_is_the_papers_mlp():
    gen = MaskGenerator(DIM, N_MAX, depth=3)
    linears = [m for m in gen.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (DIM, DIM),
        (DIM, DIM),
        (DIM, N_MAX),
    ]
    x = torch.randn(2, 5, DIM)
    h = torch.relu(linears[1](torch.relu(linears[0](x))))
    torch.testing.assert_close(gen(x), linears[2](h)[..., :5])
    assert gen(x, n_keys=9).shape == (2, 5, 9)


def test_generator_depth_one_is_a_single_linear():
    gen = MaskGenerator(DIM, N_MAX, depth=1)
    assert sum(p.numel() for p in gen.parameters()) == DIM * N_MAX + N_MAX


def test_generator_rejects_sequences_longer_than_n_max():
    gen = MaskGenerator(DIM, N_MAX, depth=2)
    with pytest.raises(ValueError, match=r"13 key tokens.*n_max=12"):
        gen(torch.randn(1, 13, DIM))


@pytest.mark.parametrize(
    "bound,check",
    [
        ("sigmoid", lambda m: (m > 0).all() and (m < 1).all()),
        ("softplus", lambda m: (m > 0).all()),
    ],
)
def test_bounded_masks(bound, check):
    m = MaskGenerator(DIM, N_MAX, depth=2, bound=bound)(torch.randn(2, 6, DIM) * 10)
    assert check(m)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_parameter_counts_follow_the_formulas(depth):
    gen = MaskGenerator.num_parameters(DIM, N_MAX, depth)
    h = DIM
    assert gen == (
        DIM * N_MAX + N_MAX
        if depth == 1
        else (DIM * h + h) + (depth - 2) * (h * h + h) + h * N_MAX + N_MAX
    )
    base = sum(p.numel() for p in encoder("none", depth).parameters())
    glob = encoder("global", depth)
    multi = encoder("multilayer", depth)
    assert mask_parameter_count(glob) == gen
    assert mask_parameter_count(multi) == LAYERS * gen
    assert sum(p.numel() for p in multi.parameters()) == base + LAYERS * gen
    # +Linear control: per layer k Linear(D, D) with k = round(gen / (D^2 + D)), at least 1
    lin = encoder("extra_linear", depth)
    k = max(1, round(gen / (DIM * DIM + DIM)))
    assert mask_parameter_count(lin) == LAYERS * k * (DIM * DIM + DIM)
    assert sum(p.numel() for p in lin.parameters()) == base + LAYERS * k * (DIM * DIM + DIM)
    # +Transformer-layers control: j extra layers with j = round(LAYERS * gen / layer params)
    layer_params = sum(p.numel() for p in encoder("none").layers[0].parameters())
    extra = encoder("extra_layers", depth)
    j = max(1, round(LAYERS * gen / layer_params))
    assert len(extra.layers) == LAYERS + j
    assert mask_parameter_count(extra) == j * layer_params


def test_sparse_mask_follows_swinbert():
    sparse = SparseMask(4)
    with torch.no_grad():
        sparse.weight.copy_(torch.tensor([[0.0, 2.0, -2.0, 0.0]] * 4))
    a = sparse.probabilities()
    s = torch.sigmoid(torch.tensor([0.0, 2.0, -2.0, 0.0]))
    expected = s.repeat(4, 1)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(sparse(), -1e4 * (1 - expected))
    off = s.repeat(4, 1)
    off.fill_diagonal_(0.0)
    torch.testing.assert_close(sparse.sparsity_loss(), off.abs().sum() / 16)


def test_sparse_encoder_exposes_weighted_aux_loss():
    enc = encoder("sparse", sparse_loss_weight=0.5)
    torch.testing.assert_close(collect_aux_loss(enc), 0.5 * enc.sparse_mask.sparsity_loss())
    assert collect_aux_loss(encoder("multilayer")) is not None  # zero, but defined
    assert float(collect_aux_loss(encoder("multilayer"))) == 0.0


@pytest.mark.parametrize(
    "mask_type", ["none", "global", "multilayer", "sparse", "extra_linear", "extra_layers"]
)
@pytest.mark.parametrize("fusion", ["mul", "add"])
def test_valid_outputs_do_not_depend_on_padding(mask_type, fusion):
    enc = encoder(mask_type, fusion=fusion)
    x = torch.randn(1, 7, DIM)
    short = enc(x, key_padding_mask=torch.zeros(1, 7, dtype=torch.bool))
    padded_x = torch.cat([x, 100 * torch.randn(1, 5, DIM)], dim=1)
    pad = torch.zeros(1, 12, dtype=torch.bool)
    pad[:, 7:] = True
    long = enc(padded_x, key_padding_mask=pad)
    torch.testing.assert_close(long[:, :7], short, atol=1e-5, rtol=1e-4)


def test_multilayer_uses_one_mask_per_layer_and_global_shares_one():
    x = torch.randn(2, 6, DIM)
    for mask_type, distinct in [("multilayer", True), ("global", False)]:
        enc = encoder(mask_type)
        with record_attention(enc) as records:
            enc(x)
        masks = [r["mask"] for r in records]
        assert len(masks) == LAYERS and all(m.shape == (2, 6, 6) for m in masks)
        same = all(torch.equal(masks[0], m) for m in masks[1:])
        assert same is not distinct


def test_global_mask_is_computed_from_the_encoder_input():
    enc = encoder("global")
    x = torch.randn(2, 6, DIM)
    with record_attention(enc) as records:
        enc(x)
    torch.testing.assert_close(records[-1]["mask"], enc.mask_generator(x))


def test_cross_attention_mask_comes_from_queries():
    layer = StampCrossAttentionLayer(
        DIM,
        HEADS,
        FFN,
        plan=MaskPlan(MaskConfig(type="multilayer", depth=2), dim=DIM, num_heads=HEADS, n_max=8),
        dropout=0.0,
    ).eval()
    video, text = torch.randn(2, 10, DIM), torch.randn(2, 6, DIM)
    with record_attention(layer) as records:
        out = layer(video, text)
    assert out.shape == (2, 10, DIM)
    torch.testing.assert_close(records[0]["mask"], layer.mask_generator(video, n_keys=6))
    assert records[0]["attn"].shape == (2, HEADS, 10, 6)


def test_recorded_probabilities_sum_to_one_and_skip_padding():
    enc = encoder("multilayer")
    x = torch.randn(2, 6, DIM)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with record_attention(enc) as records:
        enc(x, key_padding_mask=pad)
    for r in records:
        torch.testing.assert_close(r["attn"].sum(-1), torch.ones(2, HEADS, 6))
        assert r["attn"][1, :, :, 4:].abs().max() == 0


def test_sdpa_backend_rejects_multiplicative_stamp_at_construction():
    with pytest.raises(ValueError, match="cannot fuse a multiplicative mask"):
        StampEncoder(
            2,
            DIM,
            HEADS,
            n_max=N_MAX,
            mask=MaskConfig(type="multilayer", fusion="mul"),
            attention=AttentionConfig(backend="sdpa"),
        )
    # additive STAMP and the sparse mask run on SDPA and match eager
    for mask in [MaskConfig(type="multilayer", fusion="add"), MaskConfig(type="sparse")]:
        torch.manual_seed(0)
        ref = StampEncoder(2, DIM, HEADS, n_max=N_MAX, mask=mask, dropout=0.0).eval()
        sdpa = StampEncoder(
            2,
            DIM,
            HEADS,
            n_max=N_MAX,
            mask=mask,
            dropout=0.0,
            attention=AttentionConfig(backend="sdpa"),
        ).eval()
        sdpa.load_state_dict(ref.state_dict())
        x = torch.randn(2, 6, DIM)
        torch.testing.assert_close(sdpa(x), ref(x), atol=1e-4, rtol=1e-4)


def test_encoder_layer_pre_and_post_norm():
    x = torch.randn(2, 5, DIM)
    post = StampEncoderLayer(DIM, HEADS, FFN, dropout=0.0, norm_first=False).eval()
    y = post(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)  # ends in a LN
    pre = StampEncoderLayer(DIM, HEADS, FFN, dropout=0.0, norm_first=True).eval()
    h = x + pre.attn(pre.attn_block.norm(x))
    torch.testing.assert_close(pre(x), h + pre.ffn(pre.ffn_block.norm(h)))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("fusion", "foo", "mask.fusion='foo' is not valid; choose one of: mul, add"),
        ("type", "bogus", "choose one of: none, global, multilayer, sparse"),
        ("bound", "tanh", "choose one of: none, sigmoid, softplus"),
        ("depth", 0, "mask.depth must be an integer >= 1"),
    ],
)
def test_mask_config_validation_lists_choices(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        MaskConfig(**{field: value})


def test_attention_config_validation_lists_choices():
    with pytest.raises(ValueError, match="choose one of: eager, sdpa, flex"):
        AttentionConfig(backend="bogus")


def test_aux_loss_collection_ignores_non_callable_attributes():
    """DETR models carry a boolean ``aux_loss`` flag; only methods are collected."""
    model = torch.nn.Sequential(encoder("sparse"))
    model.aux_loss = True
    torch.testing.assert_close(collect_aux_loss(model), 0.5 * model[0].sparse_mask.sparsity_loss())


def test_ffn_dropout_defaults_to_dropout_and_can_be_switched_off():
    layer = StampEncoderLayer(DIM, HEADS, FFN, dropout=0.3)
    assert layer.ffn.drop.p == 0.3
    bert_like = StampEncoderLayer(DIM, HEADS, FFN, dropout=0.3, ffn_dropout=0.0).train()
    x = torch.randn(2, 5, FFN // 2)
    torch.testing.assert_close(bert_like.ffn(x), bert_like.ffn(x))  # no dropout inside the FFN
