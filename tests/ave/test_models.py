"""The AVE models against references: timm's ViT with the same weights (frozen path), line-by-
line transcriptions of the official forward passes (enyac-group/MA-AVT ``models/all_nets.py``),
hand-written formulas (LAVISH adapter, contrastive loss) and hand-counted parameters."""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from stamp import MaskConfig
from tasks.ave.losses import contrastive_loss, foreground_loss, lavish_bce_loss
from tasks.ave.models import (
    LAVISH,
    MAAVT,
    MBT,
    FrozenViT,
    VisualAdapter,
    build_model,
    official_decision,
)

TINY = {"vit": "tiny", "vit_depth": 2, "img_size": 32}  # 4 patches of 16x16, 2 blocks
B, T, S = 2, 3, 32


def tiny(name: str, mask: MaskConfig | None = None, **extra) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model({"name": name, **TINY, **extra}, mask_cfg=mask)


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(B, T, S, S, generator=g)
    frames = torch.randn(B, T, 3, S, S, generator=g)
    classes = torch.tensor([[3, 28, 5], [28, 7, 7]])
    return audio, frames, F.one_hot(classes, 29).float()


def timm_twin(vit: FrozenViT) -> nn.Module:
    """timm's own VisionTransformer of the same shape, holding the same weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = timm.create_model(vit.name, pretrained=False, img_size=S, depth=len(vit.v.blocks))
    ref.load_state_dict(vit.v.state_dict())
    return ref.eval()


# ------------------------------------------------------------------------- the frozen path
def test_frozen_path_equals_timm_forward_features():
    vit = tiny("lavish").ViT
    x = torch.randn(4, 3, S, S)
    torch.testing.assert_close(vit.forward_features(x), timm_twin(vit).forward_features(x))


def test_fbank_enters_as_three_equal_channels():
    model = tiny("lavish")
    audio, frames, _ = inputs()
    seen = {}

    def keep_first_input(module, args, output):
        seen.setdefault("x", args[0])

    model.ViT.v.patch_embed.proj.register_forward_hook(keep_first_input)
    model(audio, frames)
    x = seen["x"]  # the first embed call is the audio stream
    assert x.shape == (B * T, 3, S, S)
    for c in range(3):
        torch.testing.assert_close(x[:, c], audio.flatten(0, 1), rtol=0, atol=0)


def test_position_embedding_is_interpolated_for_the_background_token():
    vit = tiny("ma_avt").ViT
    x = torch.randn(2, 3, S, S)
    bg = torch.randn(1, vit.dim)
    got = vit.embed(x, bg_cls_token=bg)
    patches = vit.v.patch_embed.proj(x).flatten(2).transpose(1, 2)
    seq = torch.cat([vit.v.cls_token.expand(2, -1, -1), patches, bg.expand(2, 1, -1)], dim=1)
    pos = vit.v.pos_embed[0]  # (1 + 4, D) -> 6 positions, align_corners=False linear
    n_old, n_new = pos.shape[0], seq.shape[1]
    rows = []
    for i in range(n_new):
        src = max((i + 0.5) * n_old / n_new - 0.5, 0.0)
        lo = min(int(math.floor(src)), n_old - 1)
        hi, w = min(lo + 1, n_old - 1), src - math.floor(src)
        rows.append(pos[lo] * (1 - w) + pos[hi] * w)
    torch.testing.assert_close(got, seq + torch.stack(rows)[None])


# ------------------------------------------------------------------------------------ LAVISH
def test_lavish_at_init_is_the_frozen_vit_with_its_head():
    """Every adapter's gate starts at 0: the tokens are timm's, the head reads their [CLS]."""
    model = tiny("lavish")
    audio, frames, _ = inputs()
    ref = timm_twin(model.ViT)
    a = ref.forward_features(audio.flatten(0, 1)[:, None].expand(-1, 3, -1, -1))[:, 0]
    v = ref.forward_features(frames.flatten(0, 1))[:, 0]
    expected = model.mlp_class_2(model.mlp_class(torch.cat([a, v], dim=-1))).view(B, T, -1)
    torch.testing.assert_close(model(audio, frames).logits, expected)


def _grouped_1x1(x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1x1 conv on (N, C_in) rows as block-diagonal matrix products."""
    out_per, in_per = weight.shape[0] // groups, weight.shape[1]
    parts = [
        x[:, g * in_per : (g + 1) * in_per] @ weight[g * out_per : (g + 1) * out_per, :, 0, 0].T
        for g in range(groups)
    ]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("extra_convs", [0, 1])
def test_lavish_adapter_against_the_written_formula(extra_convs):
    torch.manual_seed(0)
    adapter = VisualAdapter(8, 4, num_tokens=2, groups=2, extra_convs=extra_convs).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn_like(p))
        for bn in [adapter.bn1, adapter.bn2, *adapter.mid_bns]:
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    x, other = torch.randn(3, 5, 8), torch.randn(3, 6, 8)

    def bn(z, m):
        return (z - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    expected = []
    for b in range(3):
        tk = adapter.my_tokens
        tk = tk + adapter.gate_tk * torch.softmax(tk @ other[b].T, -1) @ other[b]
        xb = x[b] + adapter.gate_av * torch.softmax(x[b] @ tk.T, -1) @ tk
        xb = F.layer_norm(xb, (8,), adapter.ln_before.weight, adapter.ln_before.bias)
        z = torch.relu(bn(_grouped_1x1(xb, adapter.down_sampler.weight, 2), adapter.bn1))
        for k in range(extra_convs):
            z = _grouped_1x1(z, adapter.mid_samplers[k].weight, 2)
            z = torch.relu(bn(z, adapter.mid_bns[k]))
        z = bn(_grouped_1x1(z, adapter.up_sampler.weight, 2), adapter.bn2)
        z = F.layer_norm(z, (8,), adapter.ln_post.weight, adapter.ln_post.bias)
        expected.append(adapter.gate * z)
    torch.testing.assert_close(adapter(x, other), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_lavish_losses():
    model = tiny("lavish")
    audio, frames, labels = inputs()
    out = model(audio, frames)
    flat = out.logits.reshape(-1, 29)
    target = labels.reshape(-1, 29).argmax(-1)
    torch.testing.assert_close(model.losses(out, labels)["total"], F.cross_entropy(flat, target))
    bce = nn.BCELoss()(torch.softmax(flat, -1), labels.reshape(-1, 29))
    torch.testing.assert_close(lavish_bce_loss(out.logits, labels), bce)


# ------------------------------------------------------------------------------------ MA-AVT
def official_ma_avt(model: MAAVT, audio, vis, labels):
    """``MA_AVT.forward_vit`` of the official code transcribed (1 GPU, README flags), on the
    same modules: returns (p_fg, p_bg, fg_loss, bg_loss, cnt_loss)."""
    vit = model.ViT
    label = labels.argmax(-1).view(-1)
    bg_label = (label == 28).long()
    audio = audio[:, :, None].repeat(1, 1, 3, 1, 1).flatten(0, 1)
    f_a = vit.embed(audio, bg_cls_token=model.bg_cls_token)
    f_v = vit.embed(vis.flatten(0, 1), bg_cls_token=model.bg_cls_token)
    n = model.n_shared
    cnt_loss = 0
    for i, blk in enumerate(vit.v.blocks):
        if i == 0:
            bt = f_a.shape[0]
            f_a = torch.cat([f_a, model.audio_attn(model.audio_tokens.repeat(bt, 1, 1))], 1)
            f_v = torch.cat([f_v, model.visual_attn(model.visual_tokens.repeat(bt, 1, 1))], 1)
            shared = model.shared_attn(model.shared_tokens.repeat(bt, 1, 1))
            f_a, f_v = torch.cat([f_a, shared], 1), torch.cat([f_v, shared], 1)
        f_v = f_v + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(f_v))))
        f_a = f_a + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(f_a))))
        f_v = f_v + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(f_v))))
        f_a = f_a + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(f_a))))
        audio_feat = F.normalize(model.audio_proj[i](f_a[:, -n:].mean(1)).squeeze(), dim=1)
        image_feat = F.normalize(model.vis_proj[i](f_v[:, -n:].mean(1)).squeeze(), dim=1)
        keep = torch.where(bg_label == 0)[0]
        img, aud = image_feat[keep], audio_feat[keep]
        pred_img = (1 / 0.07) * (img @ aud.T)
        target = torch.arange(len(img))
        cnt_loss += (F.cross_entropy(pred_img, target) + F.cross_entropy(pred_img.T, target)) / 2
    cnt_loss = cnt_loss / len(vit.v.blocks)
    f_v, f_a = vit.v.norm(f_v), vit.v.norm(f_a)
    p_fg = model.fg_class(torch.cat((f_v[:, 0:1].squeeze(), f_a[:, 0:1].squeeze()), dim=-1))
    at = slice(-(1 + 2 * n), -(2 * n))
    bg_feat = torch.cat((f_v[:, at].squeeze(), f_a[:, at].squeeze()), dim=-1)
    p_bg = model.bg_class(bg_feat).squeeze()
    bg_loss = F.binary_cross_entropy_with_logits(p_bg, bg_label.float())
    mask = torch.where(bg_label == 0)[0]
    fg_loss = F.cross_entropy(p_fg[mask], label[mask])
    return p_fg, p_bg, fg_loss, bg_loss, cnt_loss


def test_ma_avt_matches_the_official_forward_and_losses():
    model = tiny("ma_avt")
    audio, frames, labels = inputs()
    out = model(audio, frames)
    losses = model.losses(out, labels)
    p_fg, p_bg, fg, bg, cnt = official_ma_avt(model, audio, frames, labels)
    torch.testing.assert_close(out.fg_logits, p_fg)
    torch.testing.assert_close(out.bg_logits, p_bg)
    torch.testing.assert_close(losses["fg"], fg)
    torch.testing.assert_close(losses["bg"], bg)
    torch.testing.assert_close(losses["contrastive"], cnt)
    torch.testing.assert_close(losses["total"], fg + bg + cnt)


def test_ma_avt_prediction_is_the_official_total_accuracy_rule():
    torch.manual_seed(0)
    fg, bg = torch.randn(500, 29), torch.randn(500)
    pred = official_decision(fg, bg, 28).argmax(-1)
    expected = torch.where(torch.sigmoid(bg) > 0.5, torch.tensor(28), fg.argmax(-1))
    assert torch.equal(pred, expected)


def test_ma_avt_layerwise_tokens_keep_the_sequence_length():
    model = tiny("ma_avt", layerwise_token="common")
    audio, frames, labels = inputs()
    out = model(audio, frames)
    assert out.logits.shape == (B, T, 29) and len(out.shared) == 2
    assert torch.isfinite(model.losses(out, labels)["total"])


def test_contrastive_loss_hand_computed():
    s = 1 / math.sqrt(2)
    img = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])
    aud = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]])
    is_bg = torch.tensor([False, False, True])  # the third pair is background: left out
    # sims (kept rows): img0.aud0 = 1, img0.aud1 = 0, img1.aud0 = s, img1.aud1 = s
    sims = [[1.0, 0.0], [s, s]]
    tau = 0.07

    def ce(row, j):
        return -(row[j] / tau) + math.log(sum(math.exp(v / tau) for v in row))

    by_image = (ce(sims[0], 0) + ce(sims[1], 1)) / 2
    cols = [[sims[0][0], sims[1][0]], [sims[0][1], sims[1][1]]]
    by_audio = (ce(cols[0], 0) + ce(cols[1], 1)) / 2
    expected = (by_image + by_audio) / 2
    got = contrastive_loss(img, aud, is_bg, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_foreground_loss_of_an_all_background_batch_is_zero():
    logits = torch.randn(4, 29, requires_grad=True)
    loss = foreground_loss(logits, torch.full((4,), 28), torch.ones(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# --------------------------------------------------------------------------------------- MBT
def official_mbt(model: MBT, audio, vis, fusion_layer=None):
    """``MBT.forward_vit`` transcribed (per segment, no mean over T), plus the MBT paper's
    bottleneck averaging from ``fusion_layer`` on."""
    audio = audio[:, :, None].repeat(1, 1, 3, 1, 1).flatten(0, 1)
    f_a, f_v = model.AViT.embed(audio), model.IViT.embed(vis.flatten(0, 1))
    shared = model.shared_tokens.repeat(f_v.shape[0], 1, 1)
    f_a, f_v = torch.cat([f_a, shared], 1), torch.cat([f_v, shared], 1)
    n = shared.shape[1]
    for i, (ablk, iblk) in enumerate(zip(model.AViT.v.blocks, model.IViT.v.blocks, strict=True)):
        f_v = f_v + iblk.drop_path1(iblk.ls1(iblk.attn(iblk.norm1(f_v))))
        f_v = f_v + iblk.drop_path2(iblk.ls2(iblk.mlp(iblk.norm2(f_v))))
        f_a = f_a + ablk.drop_path1(ablk.ls1(ablk.attn(ablk.norm1(f_a))))
        f_a = f_a + ablk.drop_path2(ablk.ls2(ablk.mlp(ablk.norm2(f_a))))
        if fusion_layer is not None and i >= fusion_layer:
            mean = (f_a[:, -n:] + f_v[:, -n:]) / 2
            f_a = torch.cat([f_a[:, :-n], mean], 1)
            f_v = torch.cat([f_v[:, :-n], mean], 1)
    f_v, f_a = model.IViT.v.norm(f_v), model.AViT.v.norm(f_a)
    return model.mlp_class_2(model.mlp_class(torch.cat((f_a[:, 0], f_v[:, 0]), dim=-1)))


@pytest.mark.parametrize("fusion_layer", [None, 1])
def test_mbt_matches_the_official_layer_order(fusion_layer):
    model = tiny("mbt", fusion_layer=fusion_layer)
    with torch.no_grad():  # two distinct ViTs, so a swapped stream would show
        for p in model.IViT.parameters():
            p.add_(0.05 * torch.randn_like(p))
    audio, frames, labels = inputs()
    out = model(audio, frames)
    expected = official_mbt(model, audio, frames, fusion_layer).view(B, T, -1)
    torch.testing.assert_close(out.logits, expected)
    loss = model.losses(out, labels)["total"]
    torch.testing.assert_close(
        loss, F.cross_entropy(expected.reshape(-1, 29), labels.reshape(-1, 29).argmax(-1))
    )


def test_mbt_without_fusion_keeps_the_streams_apart():
    model = tiny("mbt")
    audio, frames, _ = inputs()
    feats = {}

    def keep_input(module, args, output):
        feats[len(feats)] = args[0]

    model.mlp_class.register_forward_hook(keep_input)
    model(audio, frames)
    model(audio, frames + 1.0)  # other frames: the audio half of the head input is unchanged
    d = model.dim
    torch.testing.assert_close(feats[0][:, :d], feats[1][:, :d])
    assert not torch.allclose(feats[0][:, d:], feats[1][:, d:])


# ------------------------------------------------------------------------ trainability, counts
def test_official_trainability_rule():
    model = tiny("ma_avt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "ViT.v.cls_token" in trainable  # 'cls_token' in name -> trains, as the official loop
    assert not any(n.startswith("ViT.v.blocks") for n in trainable)
    assert {"audio_tokens", "shared_tokens", "bg_cls_token", "fg_class.weight"} <= trainable
    assert "audio_proj.0.weight" in trainable  # projectors train, but are not counted
    ids = {id(p) for p in model.trainable_parameters()}
    assert ids == {id(p) for n, p in model.named_parameters() if n in trainable}
    mbt = tiny("mbt")
    assert {n for n, p in mbt.named_parameters() if p.requires_grad} == {
        "AViT.v.cls_token",
        "IViT.v.cls_token",
        "shared_tokens",
        "mlp_class.weight",
        "mlp_class.bias",
        "mlp_class_2.weight",
        "mlp_class_2.bias",
    }
    assert all(p.requires_grad for p in tiny("mbt", full_tune=True).parameters())


def test_gradients_reach_only_the_trainable_parameters():
    model = tiny("lavish")
    audio, frames, labels = inputs()
    model.losses(model(audio, frames), labels)["total"].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def _linear(i: int, o: int) -> int:
    return i * o + o


@pytest.mark.parametrize("vit,d,depth", [("tiny", 192, 12), ("base", 768, 12), ("large", 1024, 24)])
def test_parameter_counts_by_hand(vit, d, depth):
    with torch.device("meta"):
        ma = build_model({"name": "ma_avt", "vit": vit})
        lav = build_model({"name": "lavish", "vit": vit})
        backbone = sum(p.numel() for p in ma.ViT.parameters())
    lsa = _linear(d, 3 * d) + _linear(d, d)
    ma_trainable = 3 * lsa + 15 * d + _linear(2 * d, 29) + _linear(2 * d, 1) + d + d
    report = ma.parameter_report()
    assert report["trainable"] == ma_trainable
    assert report["total"] == backbone + ma_trainable - d  # the ViT's cls_token counted once
    assert report["projector"] == 2 * depth * _linear(d, 512)
    ds = d // 8
    adapter = 2 * d + 3 + 2 * (d * ds // 2) + 2 * ds + 2 * d + 4 * d  # tokens gates convs bn ln
    lav_trainable = 4 * depth * adapter + _linear(2 * d, 512) + _linear(512, 29) + d
    assert lav.parameter_report()["trainable"] == lav_trainable


# --------------------------------------------------------------------------------- STAMP
@pytest.mark.parametrize("name", ["ma_avt", "lavish", "mbt"])
@pytest.mark.parametrize("kind", ["multilayer", "global"])
def test_stamp_at_identity_changes_nothing(name, kind):
    plain = tiny(name)
    stamped = tiny(name, mask=MaskConfig(type=kind, init="identity", depth=2))
    missing, unexpected = stamped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("mask_generator" in k for k in missing)
    audio, frames, _ = inputs()
    torch.testing.assert_close(
        stamped(audio, frames).logits, plain(audio, frames).logits, rtol=1e-5, atol=1e-5
    )
    vits = [stamped.AViT, stamped.IViT] if name == "mbt" else [stamped.ViT]
    generators = (
        [vits[0].mask_generator]
        if kind == "global"
        else [b.mask_generator for b in vits[0].v.blocks]
    )
    tokens = {"ma_avt": 1 + 4 + 1 + 2 * 5, "lavish": 1 + 4, "mbt": 1 + 4 + 5}[name]
    assert all(g.n_max == tokens for g in generators)  # the longest sequence, exactly
    report = stamped.parameter_report()
    stamp = sum(p.numel() for n, p in stamped.named_parameters() if "mask_generator" in n)
    assert report["stamp"] == stamp > 0
    assert report["trainable"] == plain.parameter_report()["trainable"] + stamp


def test_stamp_mask_reaches_the_attention():
    model = tiny("ma_avt", mask=MaskConfig(type="multilayer", init="identity", depth=1))
    audio, frames, _ = inputs()
    before = model(audio, frames).logits
    with torch.no_grad():
        model.ViT.v.blocks[0].mask_generator.out.bias.add_(0.5)
    assert not torch.allclose(model(audio, frames).logits, before)


# -------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_errors(tmp_path):
    from safetensors.torch import save_file

    source = tiny("lavish").ViT
    state = {k: v.contiguous() for k, v in source.v.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    torch.save(state, tmp_path / "vit.pth")
    for file in ("vit.safetensors", "vit.pth"):
        torch.manual_seed(5)
        loaded = FrozenViT("tiny", checkpoint=tmp_path / file, depth=2, img_size=S)
        for k, v in loaded.v.state_dict().items():
            assert torch.equal(v, state[k]), (file, k)
    shallow = FrozenViT("tiny", checkpoint=tmp_path / "vit.pth", depth=1, img_size=S)
    assert all(k.startswith("blocks.1.") for k in shallow.load_report["unexpected"])
    with pytest.raises(FileNotFoundError, match="model.vit_checkpoint"):
        FrozenViT("tiny", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="does not fit"):
        FrozenViT("small", checkpoint=tmp_path / "vit.pth", depth=2, img_size=S)
    with pytest.raises(ValueError, match="require_weights"):
        build_model({"name": "mbt", **TINY, "require_weights": True})
    with pytest.warns(UserWarning, match="randomly initialised"):
        FrozenViT("tiny", depth=1, img_size=S)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="ma_avt, lavish, lavish_large, mbt"):
        build_model({"name": "avt"})
    with pytest.raises(ValueError, match="model.vit"):
        build_model({"name": "mbt", "vit": "huge"})
    with pytest.raises(ValueError, match="mask types"):
        tiny("ma_avt", mask=MaskConfig(type="sparse"))


def test_lavish_large_is_deeper():
    small, large = tiny("lavish"), tiny("lavish_large")
    assert isinstance(large, LAVISH) and len(large.vis_adapter_blocks_p1[0].mid_samplers) == 1
    assert large.vis_adapter_blocks_p1[0].down_sampler.out_channels == 152
    assert large.parameter_report()["trainable"] > small.parameter_report()["trainable"]


@pytest.mark.parametrize("name", ["ma_avt", "lavish", "mbt"])
def test_official_state_dict_names_load(name):
    """The official checkpoints' names (DDP prefix, MA-AVT's unused logit_scale) map 1:1."""
    source, target = tiny(name), tiny(name)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    if name == "ma_avt":
        state.update({f"module.logit_scale.{i}": torch.tensor(2.65) for i in range(2)})
    target.load_official_state_dict(state)
    audio, frames, _ = inputs()
    torch.testing.assert_close(target(audio, frames).logits, source(audio, frames).logits)
    with pytest.raises(ValueError, match="does not fit"):
        target.load_official_state_dict({"module.extra.weight": torch.zeros(1), **state})
