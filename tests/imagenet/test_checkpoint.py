"""Loading MAE pre-trained checkpoints and timm weights from local files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stamp import MaskConfig
from tasks.imagenet.model import StampViT, load_pretrained
from tests.imagenet.conftest import TINY, timm_vit


def mae_pretrain_state(img_size: int) -> dict[str, torch.Tensor]:
    """The key layout of MAE's ``mae_pretrain_vit_base.pth``: the encoder as timm names it with
    its final ``norm`` (no fc_norm, no head), plus decoder tensors of the pre-training model."""
    torch.manual_seed(1)
    encoder = timm_vit(img_size=img_size, global_pool="token", num_classes=0)
    state = dict(encoder.state_dict())
    dim = TINY["embed_dim"]
    state["mask_token"] = torch.zeros(1, 1, 32)
    state["decoder_embed.weight"] = torch.randn(32, dim)
    state["decoder_pos_embed"] = torch.randn(1, state["pos_embed"].shape[1], 32)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.randn(96, 32)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 32)
    return state


def mae_interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: int) -> torch.Tensor:
    """MAE's ``util/pos_embed.interpolate_pos_embed`` formula (class token kept, bicubic)."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(math.isqrt(grid.shape[1]))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def test_mae_checkpoint(tmp_path: Path) -> None:
    state = mae_pretrain_state(img_size=48)  # 3x3 grid; the model below is 2x2
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="mae_vit_base")}, path)
    model = StampViT(**TINY, mask=MaskConfig(type="multilayer", depth=1), pretrained=str(path))

    report = model.load_report
    generators = {
        f"blocks.{i}.mask_generator.out.{p}" for i in range(2) for p in ("weight", "bias")
    }
    # as MAE's main_finetune asserts (global pool): head and fc_norm are new; plus the generators
    assert (
        set(report["missing"])
        == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} | generators
    )
    assert set(report["unexpected"]) == {"norm.weight", "norm.bias"}  # encoder norm, unused
    own = model.state_dict()
    torch.testing.assert_close(own["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(
        own["pos_embed"], mae_interpolate_pos_embed(state["pos_embed"], 2), rtol=1e-5, atol=1e-6
    )
    assert model.head.weight.std() < 1e-4  # trunc_normal(std=2e-5), MAE's head init


def test_timm_weights_give_timm_logits(tmp_path: Path, images: torch.Tensor) -> None:
    torch.manual_seed(2)
    reference = timm_vit().eval()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = StampViT(**TINY, mask=MaskConfig(type="none"), pretrained=str(path)).eval()
    assert model.load_report == {"missing": [], "unexpected": [], "skipped": []}
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=1e-5, atol=1e-5)


def test_head_of_another_class_count_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "in21k.pth"
    torch.save({"state_dict": timm_vit(num_classes=7).state_dict()}, path)
    model = StampViT(**TINY, mask=MaskConfig(type="none"))
    report = load_pretrained(model, path)
    assert set(report["missing"]) == {"head.weight", "head.bias"}


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        StampViT(**TINY, mask=MaskConfig(type="none"), pretrained=str(tmp_path / "nope.pth"))


def test_files_with_other_objects_are_refused(tmp_path: Path) -> None:
    """Weights only: a pickled object of any type but MAE's argparse.Namespace is not loaded."""
    path = tmp_path / "odd.pth"
    torch.save({"model": timm_vit().state_dict(), "extra": SimpleNamespace(run=1)}, path)
    with pytest.raises(ValueError, match="odd.pth .model.pretrained. holds objects other than"):
        StampViT(**TINY, mask=MaskConfig(type="none"), pretrained=str(path))
