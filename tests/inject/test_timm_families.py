"""stamp.inject into timm's other model families: DeiT (distilled: two prefix tokens; timm's
``Attention``), EVA (``EvaAttention``: rotary embeddings, separate or fused q/k/v) and Swin
(``WindowAttention``: windows, relative position bias, shifted-window mask). With the same
weights the injected model gives timm's own features at injection (both of timm's attention
paths) and one STAMP-only training step changes them, in every mask mode."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva, EvaAttention
from timm.models.swin_transformer import SwinTransformer, WindowAttention

import stamp
from stamp.injection import injected_modules
from stamp.injection.timm_families import StampEvaAttention, StampWindowAttention
from stamp.injection.timm_vit import StampTimmAttention

TINY = dict(img_size=32, num_classes=5, drop_rate=0.1, attn_drop_rate=0.1)


def deit() -> torch.nn.Module:
    return VisionTransformerDistilled(patch_size=8, embed_dim=32, depth=2, num_heads=4, **TINY)


def eva(qkv_fused: bool = True) -> torch.nn.Module:
    return Eva(
        patch_size=8, embed_dim=32, depth=2, num_heads=4, use_rot_pos_emb=True,
        ref_feat_shape=(4, 4), qkv_fused=qkv_fused, qk_norm=True, **TINY,
    )  # fmt: skip


def swin() -> torch.nn.Module:
    # 8 x 8 patches in windows of 4 x 4 (block 1 shifted: the window mask), then 4 x 4
    return SwinTransformer(
        patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), **TINY
    )


FAMILIES = {
    "deit": (deit, StampTimmAttention, 16 + 2),  # patches + class and distillation tokens
    "eva": (eva, StampEvaAttention, 16 + 1),
    "eva_separate_qkv": (lambda: eva(qkv_fused=False), StampEvaAttention, 16 + 1),
    "swin": (swin, StampWindowAttention, 16),  # n_max: a window's area, 4 x 4
}
MODES = {
    "multilayer": None,
    "per_head": {"per_head": True},
    "lowrank": {"generator": "lowrank", "rank": 4},
}


def build(name: str, fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[name][0]()
    for module in model.modules():  # timm's switch between its SDPA and eager paths
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


def features(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return model.forward_features(x)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fused", [False, True], ids=["timm_eager", "timm_sdpa"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_timm_outputs_at_injection_then_one_step_moves_them(name, fused, mode):
    reference = build(name, fused).eval()
    model = copy.deepcopy(reference)
    stamp.inject(model, mask=MODES[mode])
    _, stamp_class, n_max = FAMILIES[name]
    stamps = injected_modules(model)
    assert stamps and all(type(model.get_submodule(n)) is stamp_class for n in stamps)
    if mode != "lowrank":
        assert {s.n_max for s in stamps.values()} == {n_max}
    with torch.no_grad():
        want, before = features(reference), features(model)
    torch.testing.assert_close(before, want, atol=1e-5, rtol=1e-5)

    stamp.mark_only_stamp_trainable(model)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    features(model).mul(torch.randn(before.shape)).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = features(model)
    assert (after - before).abs().max() > 1e-4
    frozen = {k: v for k, v in reference.state_dict().items()}
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())  # timm's weights, untouched


def test_every_attention_module_is_found():
    """Default targets: every attention module of each family (Swin: 2 + 2 window blocks)."""
    assert len(injected_modules(stamp.inject(build("deit", False)))) == 2
    assert len(injected_modules(stamp.inject(build("eva", False)))) == 2
    swin_model = stamp.inject(build("swin", False))
    assert sorted(injected_modules(swin_model)) == [
        f"layers.{i}.blocks.{j}.attn" for i in range(2) for j in range(2)
    ]


@pytest.mark.parametrize("fused", [False, True], ids=["timm_eager", "timm_sdpa"])
def test_eva_attention_masks_match_timm(fused):
    """EVA's attention with rope and a boolean mask / is_causal: timm's output at injection."""
    torch.manual_seed(0)
    attn = EvaAttention(32, 4, qk_norm=False, norm_layer=torch.nn.LayerNorm).eval()
    attn.fused_attn = fused
    model = torch.nn.ModuleDict({"attn": copy.deepcopy(attn)})
    stamp.inject(model, n_max=7)
    x = torch.randn(2, 7, 32)
    rope = torch.randn(6, 16)  # sin / cos for the 6 tokens after the class token
    keep = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    keep[..., 0] = True
    with torch.no_grad():
        for kwargs in ({"attn_mask": keep}, {"is_causal": True}, {}):
            torch.testing.assert_close(
                model["attn"](x, rope=rope, **kwargs), attn(x, rope=rope, **kwargs),
                atol=1e-5, rtol=1e-5,
            )  # fmt: skip


def test_swin_window_mask_and_bias_reach_the_core():
    """A shifted Swin block's window mask (0 / -100) and relative position bias go into the
    core's additive bias: with them removed, the output differs."""
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window_size=4).eval()
    model = torch.nn.ModuleDict({"attn": copy.deepcopy(attn)})
    stamp.inject(model)
    assert model["attn"].stamp.n_max == 16
    x = torch.randn(8, 16, 16)  # 4 windows x batch 2
    mask = torch.zeros(4, 16, 16)
    mask[1:, :8, 8:] = -100.0
    with torch.no_grad():
        want = attn(x, mask)
        torch.testing.assert_close(model["attn"](x, mask), want, atol=1e-5, rtol=1e-5)
        assert (model["attn"](x) - want).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["eva", "swin"])
def test_unload_gives_timm_back(name):
    model = build(name, False).eval()
    with torch.no_grad():
        want = features(model)
    stamp.unload(stamp.inject(model))
    assert not any(
        isinstance(m, (StampEvaAttention, StampWindowAttention)) for m in model.modules()
    )
    with torch.no_grad():
        assert torch.equal(features(model), want)
