"""stamp.inject into models built on ``nn.MultiheadAttention``: ``nn.Transformer`` (batch-first
and sequence-first), a DETR / Moment-DETR style transformer, torchvision's ViT, OpenCLIP's CLIP
and CoCa. Outputs equal the original's at injection (eval, padding masks, causal masks), one
training step of STAMP's parameters alone changes them, in every mask mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stamp
from stamp.injection import InjectedStamp, injected_modules
from tests.inject.mha_models import FAMILIES, MhaFamily

MODES = {
    "multilayer": None,
    "per_head": {"per_head": True},
    "lowrank": {"generator": "lowrank", "rank": 4},
}


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum()


def inject(family: MhaFamily, model: nn.Module, mask: dict | None = None) -> nn.Module:
    lowrank = (mask or {}).get("generator") == "lowrank"
    return stamp.inject(model, mask=mask, n_max=None if lowrank else family.n_max)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_unchanged_at_injection_and_one_step_moves_it(name, mode):
    family = FAMILIES[name]
    model = family.build().eval()
    with torch.no_grad():
        want = family.run(model)
    inject(family, model, MODES[mode])
    stamps = injected_modules(model)
    assert len(stamps) == family.layers
    calls = []
    for s in stamps.values():  # every injected layer runs (no fused path bypasses it)
        s.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        before = family.run(model)
    assert len(calls) == family.layers
    torch.testing.assert_close(before, want, atol=1e-5, rtol=1e-5)

    stamp.mark_only_stamp_trainable(model)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".stamp." not in k}
    model.train()  # dropout on, as in training
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_of(family.run(model)).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = family.run(model)
    assert (after - before).abs().max() > 1e-4
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())


def test_the_default_n_max_is_the_position_table():
    """torchvision's ViT: patches + class token (pos_embedding); OpenCLIP: the text context
    length and the image's patches + class token (positional_embedding)."""
    vit = stamp.inject(FAMILIES["torchvision_vit"].build())
    assert {s.n_max for s in injected_modules(vit).values()} == {(32 // 8) ** 2 + 1}
    clip = stamp.inject(FAMILIES["open_clip"].build())
    assert {n: s.n_max for n, s in injected_modules(clip).items()} == {
        "visual.transformer.resblocks.0.attn": 17,
        "visual.transformer.resblocks.1.attn": 17,
        "transformer.resblocks.0.attn": 16,
        "transformer.resblocks.1.attn": 16,
    }
    with pytest.raises(ValueError, match="pass n_max= or use mask.generator=lowrank"):
        stamp.inject(FAMILIES["detr"].build())  # sine / given positions: no table


def test_cross_attention_layers_read_their_key_tokens():
    """In DETR's decoder and CoCa, the cross-attentions (query tokens != key tokens) pass the
    key tokens to the generator; the self-attentions do not."""
    for name, cross in {
        "detr": {"decoder.0.multihead_attn", "decoder.1.multihead_attn"},
        "open_clip_coca": {"visual.attn_pool.attn", "text_decoder.cross_attn.0.attn"},
    }.items():
        family = FAMILIES[name]
        model = inject(family, family.build().eval(), MODES["lowrank"])
        with torch.no_grad():
            family.run(model)
        assert {n for n, s in injected_modules(model).items() if s.cross} == cross


def test_transformer_encoder_leaves_its_fast_paths():
    """Injected, an nn.TransformerEncoder neither runs its fused layer kernel nor its
    nested-tensor path (both skip self_attn.forward); the original's output at padded
    positions is 0 on the nested path, the injected model's is computed."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2).eval()
    x = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    with torch.no_grad():
        want = encoder(x, src_key_padding_mask=pad)
    assert encoder.use_nested_tensor and torch.equal(want[1, 6:], torch.zeros(3, 32))
    stamp.inject(encoder, n_max=9)
    assert not encoder.use_nested_tensor
    with torch.no_grad():
        got = encoder(x, src_key_padding_mask=pad)
    valid = ~pad
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)
    assert got[1, 6:].abs().min() > 0
    assert all(isinstance(s, InjectedStamp) for s in injected_modules(encoder).values())


@pytest.mark.parametrize("name", ["detr", "open_clip_coca"])
def test_save_load_round_trip(name, tmp_path):
    family = FAMILIES[name]
    model = inject(family, family.build())
    stamp.mark_only_stamp_trainable(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss_of(family.run(model)).backward()
    opt.step()
    stamp.save(model.eval(), tmp_path)
    fresh = stamp.load(family.build().eval(), tmp_path)
    # the same requires_grad flags on both: PyTorch may pick another MHA kernel for frozen
    # weights (a 1e-6 difference with 2 threads), which is not what this test is about
    stamp.mark_only_stamp_trainable(fresh)
    with torch.no_grad():
        assert torch.equal(family.run(fresh), family.run(model))


@pytest.mark.slow  # about 10 s on 2 busy cores: an 86M-parameter model at 224 x 224
def test_torchvision_vit_b_16():
    """torchvision's ``vit_b_16`` itself (random weights): 12 layers found, n_max = 14² + 1,
    the logits unchanged at injection."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    model = vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at 0
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        stamp.inject(model)
        got = model(x)
    stamps = injected_modules(model)
    assert len(stamps) == 12 and {s.n_max for s in stamps.values()} == {197}
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_record_attention_sees_self_and_cross_attention():
    """stamp.record_attention on an injected DETR: the probabilities and M of each of the six
    layers, (B, H, Nq, Nk) and (B, Nq, Nk): 9 clips, 5 queries; the padded clips get 0."""
    family = FAMILIES["detr"]
    model = inject(family, family.build().eval())
    with torch.no_grad(), stamp.record_attention(model) as records:
        family.run(model)
    shapes = {r["name"].removesuffix(".stamp"): (r["attn"].shape, r["mask"].shape) for r in records}
    assert shapes == {
        "encoder.0.self_attn": ((2, 4, 9, 9), (2, 9, 9)),
        "encoder.1.self_attn": ((2, 4, 9, 9), (2, 9, 9)),
        "decoder.0.self_attn": ((2, 4, 5, 5), (2, 5, 5)),
        "decoder.0.multihead_attn": ((2, 4, 5, 9), (2, 5, 9)),
        "decoder.1.self_attn": ((2, 4, 5, 5), (2, 5, 5)),
        "decoder.1.multihead_attn": ((2, 4, 5, 9), (2, 5, 9)),
    }
    with stamp.record_attention(model):  # the caller still gets no weights
        assert (
            model.decoder[0].self_attn(*(torch.randn(5, 2, 32),) * 3, need_weights=False)[1] is None
        )
    cross = next(r for r in records if r["name"] == "decoder.0.multihead_attn.stamp")
    assert torch.equal(cross["attn"][1, ..., 6:], torch.zeros(4, 5, 3))


@pytest.mark.parametrize("name", ["transformer_batch_first", "open_clip_coca"])
def test_unload_gives_the_original_back(name):
    """stamp.unload reverts the class swap, the pre-hook and nn.TransformerEncoder's
    use_nested_tensor: PyTorch's own modules and outputs, bit for bit, after a training step."""
    family = FAMILIES[name]
    model = family.build().eval()
    with torch.no_grad():
        want = family.run(model)
    inject(family, model)
    stamp.mark_only_stamp_trainable(model)
    loss_of(family.run(model)).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    stamp.unload(model)
    for p in model.parameters():  # mark_only_stamp_trainable's flags are the caller's to undo
        p.requires_grad_(True)  # (PyTorch picks other kernels without them: 1.7e-6 apart)
    assert {type(m) for m in model.modules() if isinstance(m, nn.MultiheadAttention)} == {
        nn.MultiheadAttention
    }
    assert all(not m._forward_pre_hooks for m in model.modules())
    if name.startswith("transformer"):
        assert model.encoder.use_nested_tensor
    with torch.no_grad():
        assert torch.equal(family.run(model), want)


def test_global_mask_over_an_encoder():
    """mask=global: one generator on the first targeted layer's input, its M shared by the
    encoder's layers; unchanged at injection, one step moves it, one generator's parameters."""
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 3)
    encoder.eval()
    x = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    with torch.no_grad():
        want = encoder(x, src_key_padding_mask=pad)
    stamp.inject(encoder, mask={"type": "global"}, n_max=9)
    n = stamp.mark_only_stamp_trainable(encoder)
    assert n == sum(p.numel() for p in injected_modules(encoder)["layers.0.self_attn"].parameters())
    with torch.no_grad():
        before = encoder(x, src_key_padding_mask=pad)
    torch.testing.assert_close(before[~pad], want[~pad], atol=1e-5, rtol=1e-5)
    loss_of(encoder(x, src_key_padding_mask=pad)).backward()
    torch.optim.Adam([p for p in encoder.parameters() if p.requires_grad], lr=0.1).step()
    with torch.no_grad():
        assert (encoder(x, src_key_padding_mask=pad) - before).abs().max() > 1e-4
