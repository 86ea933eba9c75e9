"""SwinBERT's own Video Swin checkpoint (original VidSwin layout, ``backbone.*`` keys) loads by
path and computes what the original backbone computes; mask.init=identity keeps the model's
function at step 0."""

from __future__ import annotations

import pytest
import torch

from stamp import MaskConfig
from tasks.msrvtt.model import VideoSwinBackbone, backbone_prefix, vidswin_to_torchvision
from tests.msrvtt.conftest import IMG_RES, MAX_TEXT, NUM_FRAMES
from tests.msrvtt.vidswin_reference import random_vidswin_state, vidswin_forward

# two stages of two blocks (shifted windows used), padding in H / W (40 / 4 = 10 -> windows of
# 4), a clipped temporal window in stage 2 is not reached: 8 frames -> 4 >= 2
TINY = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window=(2, 4, 4), patch=(2, 4, 4))
BACKBONE = dict(
    arch="custom",
    embed_dim=16,
    depths=[2, 2],
    num_heads=[1, 2],
    window_size=[2, 4, 4],
    patch_size=[2, 4, 4],
)


def _video(frames: int, res: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, frames, 3, res, res, generator=g)


@pytest.mark.parametrize("frames, res", [(8, 40), (4, 32)])
def test_vidswin_checkpoint_gives_the_original_backbones_outputs(tmp_path, frames, res):
    """Same weights -> same tokens as the original Video Swin (re-implemented from its code).
    (4, 32): every window clipped to the feature size, so no dimension is shifted."""
    state = random_vidswin_state(**TINY)
    path = tmp_path / "swin_tiny_patch244_window877_kinetics600_22k.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    backbone = VideoSwinBackbone(**BACKBONE, weights=str(path)).eval()
    assert backbone.weights_layout == "vidswin"
    video = _video(frames, res)
    with torch.no_grad():
        ours = backbone(video)
        arch = {k: v for k, v in TINY.items() if k != "embed_dim"}
        ref = vidswin_forward(state, video.permute(0, 2, 1, 3, 4), **arch)
    assert ours.shape == (2, ref.shape[1] * ref.shape[2] * ref.shape[3], ref.shape[-1])
    assert ours.shape[1] == backbone.num_tokens(frames, res)
    torch.testing.assert_close(ours, ref.flatten(1, 3), atol=1e-5, rtol=1e-5)


def test_key_mapping_covers_every_backbone_tensor_and_drops_the_head():
    state = random_vidswin_state(**TINY)
    mapped = vidswin_to_torchvision(state)
    backbone = VideoSwinBackbone(**BACKBONE)
    own = backbone.swin.state_dict()
    assert set(mapped) == set(own)  # head is nn.Identity: cls_head.* has no place
    for key, value in mapped.items():
        assert value.shape == own[key].shape, key
    fc2, merge = "layers.0.blocks.1.mlp.fc2.weight", "layers.0.downsample.reduction.weight"
    assert mapped["features.0.1.mlp.3.weight"] is state["backbone." + fc2]
    assert mapped["features.1.reduction.weight"] is state["backbone." + merge]
    # a SwinBERT checkpoint nests the backbone as swin.backbone.*
    nested = {"swin." + k: v for k, v in state.items()} | {"fc.weight": torch.zeros(1)}
    assert backbone_prefix(nested) == "swin.backbone."
    assert set(vidswin_to_torchvision(nested)) == set(mapped)


def test_torchvision_layout_still_loads_and_a_wrong_arch_is_named(tmp_path):
    torch.manual_seed(0)
    source = VideoSwinBackbone(**BACKBONE)
    torch.save(source.swin.state_dict(), tmp_path / "tv.pth")
    loaded = VideoSwinBackbone(**BACKBONE, weights=str(tmp_path / "tv.pth"))
    assert loaded.weights_layout == "torchvision"
    wrong = random_vidswin_state(**{**TINY, "depths": (2, 4)})
    torch.save({"state_dict": wrong}, tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match="vidswin layout.*unexpected"):
        VideoSwinBackbone(**BACKBONE, weights=str(tmp_path / "deeper.pth"))
    torch.save({"state_dict": {"x.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="model.backbone.weights"):
        VideoSwinBackbone(**BACKBONE, weights=str(tmp_path / "other.pth"))


@pytest.mark.parametrize(
    "fusion, scope, order",
    [("mul", "video", "mask_first"), ("add", "video", "mask_first"), ("mul", "full", "bias_first")],
)
def test_identity_init_gives_the_same_outputs_as_no_mask(make_model, fusion, scope, order):
    """mask=multilayer mask.init=identity: at step 0 the model is the mask=none model with the
    same weights (pretrained BERT keeps its function) — the task default (configs/task)."""
    torch.manual_seed(0)
    plain = make_model("none", stamp_scope=scope).eval()
    with torch.no_grad():  # peaked attention (BERT's 0.02 init gives near-uniform attention)
        for layer in plain.layers:
            layer.attn.qkv.weight.mul_(15.0)
    cfg = MaskConfig(type="multilayer", depth=3, init="identity", fusion=fusion, fusion_order=order)
    stamp = make_model(mask_cfg=cfg, stamp_scope=scope).eval()
    missing = stamp.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("mask_generators.") for k in missing)
    frames = _video(NUM_FRAMES, IMG_RES)
    ids = torch.randint(5, 20, (2, MAX_TEXT))
    text_len = torch.tensor([5, MAX_TEXT])
    masked = torch.zeros(2, MAX_TEXT, dtype=torch.bool)
    masked[0, [1, 3]] = masked[1, [2, 7]] = True
    with torch.no_grad():
        ours = stamp(frames, ids, text_len, masked)
        theirs = plain(frames, ids, text_len, masked)
        assert stamp.generate(frames) == plain.generate(frames)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # the torch default init does change the function (the test would notice a no-op mask)
    torch.manual_seed(0)
    default = make_model(mask_cfg=MaskConfig(type="multilayer", depth=3, fusion=fusion))
    default.eval().load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        changed = (default(frames, ids, text_len, masked) - theirs).abs().max()
    assert changed > 1e-4, changed
