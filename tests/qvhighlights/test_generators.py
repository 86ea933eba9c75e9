"""QD-DETR with ``mask.generator=lowrank`` / ``mask.per_head`` (issue 16): the T2V generators
read the text tokens as keys, the model accepts more clips / query tokens than it was built for,
one mask per head reaches the attention, and the generator parameters do not depend on N."""

from __future__ import annotations

import json

import pytest
import torch

from stamp import LowRankMaskGenerator, MaskConfig, MaskGenerator, record_attention
from tasks.common.reporting.tables import row_id
from tasks.qvhighlights.model import QDDETR
from tests.helpers import compose_cfg, run_cfg
from tests.qvhighlights.test_model import INPUTS, random_batch
from tests.qvhighlights.test_train import features, tiny  # noqa: F401 (features: a fixture)

SMALL = dict(hidden_dim=32, num_heads=4, ffn_dim=64)


def model_of(mask: str = "multilayer", max_v_l: int = 20, max_q_l: int = 8, **mask_kw) -> QDDETR:
    torch.manual_seed(0)
    cfg = MaskConfig(type=mask, depth=2, init="kaiming", **mask_kw)
    return QDDETR(12, 6, mask=cfg, max_v_l=max_v_l, max_q_l=max_q_l, **SMALL).eval()


def generator_params(model: QDDETR) -> int:
    return sum(
        p.numel() for m in model.modules() if isinstance(m, MaskGenerator) for p in m.parameters()
    )


@pytest.mark.parametrize("mask", ["multilayer", "global"])
def test_lowrank_accepts_longer_inputs_than_built_for(mask):
    """Built for 20 clips / 8 query tokens, run on 31 clips / 12 tokens (the MLP form refuses)."""
    batch = random_batch(lv=(31, 15, 9), lt=(12, 5, 3))
    out = model_of(mask, generator="lowrank")(**{k: batch[k] for k in INPUTS})
    assert out["saliency_scores"].shape == (3, 31)
    assert torch.isfinite(out["pred_spans"]).all() and torch.isfinite(out["saliency_scores"]).all()
    with pytest.raises(ValueError, match="max_q_l=8"):
        model_of(mask)(**{k: batch[k] for k in INPUTS})
    short = random_batch(lv=(31, 15, 9), lt=(7, 5, 3))
    with pytest.raises(ValueError, match="max_v_l=20"):
        model_of(mask)(**{k: short[k] for k in INPUTS})


def t2v_masks(model: QDDETR, batch: dict) -> list[torch.Tensor]:
    with record_attention(model) as records:
        model(**{k: batch[k] for k in INPUTS}, with_negative=False)
    return [r["mask"] for r in records if r["name"].startswith("t2v_layers")]


@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_t2v_mask_reads_the_text_only_with_lowrank(generator):
    """The first T2V layer's M comes from the video tokens; lowrank's also from the text keys:
    changing the text changes that M for lowrank and leaves it unchanged for the MLP form.
    It equals the generator applied by hand to (video, text) after the input projections."""
    model = model_of(generator=generator)
    batch = random_batch()
    other = {**batch, "src_txt": batch["src_txt"].flip(1) + 0.5 * batch["src_txt_mask"][..., None]}
    first, changed = t2v_masks(model, batch)[0], t2v_masks(model, other)[0]
    assert first.shape == (3, 20, 7)
    assert torch.equal(first, changed) is (generator == "mlp")
    gen = model.t2v_layers[0].mask_generator
    vid, txt = model.input_vid_proj(batch["src_vid"]), model.input_txt_proj(batch["src_txt"])
    torch.testing.assert_close(first, gen(vid, n_keys=7, context=txt))


@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_per_head_masks_reach_every_attention(generator):
    model = model_of(generator=generator, per_head=True)
    batch = random_batch()
    with record_attention(model) as records:
        model(**{k: batch[k] for k in INPUTS}, with_negative=False)
    shapes = {r["name"].split(".")[0]: tuple(r["mask"].shape) for r in records}
    assert shapes == {"t2v_layers": (3, 4, 20, 7), "encoder": (3, 4, 21, 21)}
    # heads differ (one mask each, not one broadcast)
    mask = next(r["mask"] for r in records if r["name"].startswith("encoder"))
    assert not torch.allclose(mask[:, 0], mask[:, 1])


@pytest.mark.parametrize("per_head", [False, True])
def test_lowrank_parameters_do_not_depend_on_lengths(per_head):
    """Generator parameters at (max_v_l, max_q_l) = (75, 32) and (150, 64): equal for lowrank
    (and equal to the closed form), larger for the MLP form."""

    def count(generator: str, v: int, q: int) -> int:
        model = model_of(generator=generator, max_v_l=v, max_q_l=q, per_head=per_head)
        return generator_params(model)

    assert count("lowrank", 75, 32) == count("lowrank", 150, 64)
    heads = 4 if per_head else 1
    closed = LowRankMaskGenerator.lowrank_parameters(32, depth=2, rank=16, heads=heads)
    assert count("lowrank", 75, 32) == 4 * closed  # 2 T2V + 2 encoder layers
    assert count("mlp", 150, 64) > count("mlp", 75, 32)


def test_tiny_run_trains_with_lowrank_per_head(features, tmp_path):  # noqa: F811
    """The real config (task=qvhighlights, its tiny test settings) with mask.generator=lowrank
    and mask.per_head=true: trains and validates; results.json reports the low-rank
    parameters (closed form, 4 generators) and the run is a row of its own."""
    out = tmp_path / "run"
    overrides = ["task=qvhighlights", "mask=multilayer", "mask.depth=2", *tiny(features)]
    overrides += ["mask.generator=lowrank", "mask.per_head=true", "mask.rank=8"]
    run_cfg(compose_cfg(overrides, output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and "val/MR-full-mAP" in saved["metrics"]
    closed = LowRankMaskGenerator.lowrank_parameters(32, depth=2, rank=8, heads=4)
    assert saved["params"]["params/mask"] == 4 * closed
    assert row_id(saved) == "multilayer +lowrank(r=8) +per-head"
