"""StampViT with ``mask.generator=lowrank`` / ``mask.per_head`` (issue 16): larger images (more
patches) than the model was built for with timm's ``dynamic_img_size``, one mask per head,
timm's init does not override the generators' own, and parameters independent of img_size."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.make_imagenet_folder import make_imagenet_folder
from stamp import LowRankMaskGenerator, MaskConfig, MaskGenerator, record_attention
from tasks.common.reporting.tables import row_id
from tasks.imagenet.model import StampViT
from tests.helpers import compose_cfg, run_cfg
from tests.imagenet.conftest import TINY, TOKENS
from tests.imagenet.test_train import TINY_OVERRIDES


def vit(mask: str = "multilayer", **kw) -> StampViT:
    model_kw = {k: kw.pop(k) for k in ("img_size", "dynamic_img_size") if k in kw}
    torch.manual_seed(0)
    return StampViT(**{**TINY, **model_kw}, mask=MaskConfig(type=mask, depth=2, **kw)).eval()


@pytest.mark.parametrize("mask", ["multilayer", "global"])
def test_lowrank_runs_on_more_patches_than_built_for(mask):
    """Built for 32x32 images (5 tokens), run on 64x64 (17 tokens): the position embedding is
    resampled by timm (``dynamic_img_size``), the low-rank generator takes any token count;
    the MLP generator's fixed n_max refuses."""
    big = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = vit(mask, generator="lowrank", init="kaiming", dynamic_img_size=True)
    with record_attention(model) as records:
        logits = model(big)
    assert logits.shape == (2, TINY["num_classes"]) and torch.isfinite(logits).all()
    assert {tuple(r["mask"].shape) for r in records} == {(2, 17, 17)}
    with pytest.raises(ValueError, match="n_max=5"):
        vit(mask, init="kaiming", dynamic_img_size=True)(big)


@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_per_head_masks_and_generator_init_survive_timm_init(generator, images):
    model = vit(generator=generator, per_head=True, init="identity")
    gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert len(gens) == TINY["depth"] and all(g.heads == TINY["num_heads"] for g in gens)
    with record_attention(model) as records:
        identity = model(images)
    assert {tuple(r["mask"].shape) for r in records} == {(3, TINY["num_heads"], TOKENS, TOKENS)}
    assert all(torch.all(r["mask"] == 1) for r in records)  # identity init after timm's init
    plain = vit("none")
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(identity, plain(images))


@pytest.mark.parametrize("per_head", [False, True])
def test_lowrank_parameters_do_not_depend_on_img_size(per_head):
    def count(generator: str, img_size: int) -> int:
        model = vit(generator=generator, per_head=per_head, img_size=img_size)
        gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
        return sum(p.numel() for g in gens for p in g.parameters())

    heads = TINY["num_heads"] if per_head else 1
    closed = LowRankMaskGenerator.lowrank_parameters(TINY["embed_dim"], 2, 16, heads=heads)
    assert count("lowrank", 32) == count("lowrank", 64) == TINY["depth"] * closed
    assert count("mlp", 64) > count("mlp", 32)


def test_tiny_run_trains_with_lowrank(tmp_path):
    """experiment=imagenet_tiny with mask.generator=lowrank (the task's identity init, depth 1):
    trains and validates; results.json reports the closed-form low-rank parameters."""
    root = make_imagenet_folder(
        tmp_path / "imagenet_tiny", num_classes=4, train_per_class=2, val_per_class=1, size=40
    )
    out = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, "mask=multilayer", "mask.generator=lowrank", f"data.root={root}"]
    run_cfg(compose_cfg(overrides, output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and "val/top1" in saved["metrics"]
    closed = LowRankMaskGenerator.lowrank_parameters(64, depth=1, rank=16)
    assert saved["params"]["params/mask"] == 2 * closed  # one generator per block
    assert row_id(saved) == "multilayer +lowrank(r=16)"
