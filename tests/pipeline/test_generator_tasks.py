"""mask.generator / mask.per_head from every task's config (issue 16), and the demo end to end.

The other tasks' tiny runs with the low-rank generator, their longer-input and parameter checks
live in tests/<task>/test_generators.py."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from stamp import LowRankMaskGenerator, MaskConfig, MaskGenerator
from tasks.common.reporting.tables import row_id
from tasks.common.runtime.pipeline import core_configs
from tasks.demo.model import DemoClassifier
from tests.helpers import DEMO_TINY, compose_cfg, run_cfg

TASKS = {
    "demo": ["task=demo"],
    "qvhighlights": ["task=qvhighlights"],
    "imagenet": ["experiment=imagenet_tiny"],
    "msrvtt": ["experiment=msrvtt_tiny"],
    "mad_ad": ["experiment=mad_ad_tiny"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_selects_the_generator_options(task, tmp_path):
    """``mask.generator`` / ``mask.rank`` / ``mask.per_head`` reach the core config of every
    task; the mask group files state the defaults (MLP, shared by the heads)."""
    cfg = compose_cfg([*TASKS[task], "mask=multilayer"], tmp_path)
    assert (cfg.mask.generator, cfg.mask.rank, cfg.mask.per_head) == ("mlp", 16, False)
    overrides = ["mask.generator=lowrank", "mask.rank=4", "mask.per_head=true"]
    cfg = compose_cfg([*TASKS[task], "mask=global", *overrides], tmp_path)
    core, _ = core_configs(cfg)
    assert (core.generator.value, core.rank, core.per_head) == ("lowrank", 4, True)


def test_demo_tiny_run_with_lowrank_per_head(tmp_path):
    """The demo trains one epoch with the low-rank per-head generator; results.json reports its
    closed-form parameters (2 layers, width 32, 4 heads) and the run is a row of its own."""
    out = tmp_path / "run"
    overrides = [*DEMO_TINY, "task=demo", "mask=multilayer", "trainer.max_epochs=1"]
    overrides += ["mask.generator=lowrank", "mask.per_head=true", "callbacks.progress_bar=null"]
    run_cfg(compose_cfg(overrides, output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and "val/acc" in saved["metrics"]
    closed = LowRankMaskGenerator.lowrank_parameters(32, depth=2, rank=16, heads=4)
    assert saved["params"]["params/mask"] == 2 * closed
    assert row_id(saved) == "multilayer +lowrank(r=16) +per-head"


def demo_model(max_len: int, **mask_kw) -> DemoClassifier:
    torch.manual_seed(0)
    mask = MaskConfig(type="multilayer", depth=2, init="kaiming", **mask_kw)
    return DemoClassifier(8, 4, max_len, max_len, 3, dim=32, ffn_dim=64, mask=mask).eval()


def test_demo_lowrank_encoder_takes_longer_sequences_and_params_do_not_grow():
    """The demo's learned position table fixes N = 1 + 2 x max length; its STAMP encoder with
    the low-rank generator takes longer sequences, the MLP one refuses; low-rank parameters are
    the same for max length 12 and 48 (the MLP's grow)."""
    model = demo_model(12, generator="lowrank", per_head=True)
    longer = torch.randn(2, 4 * 25, 32, generator=torch.Generator().manual_seed(0))
    out = model.encoder(longer)
    assert out.shape == longer.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="n_max=25"):
        demo_model(12).encoder(longer)

    def params(model) -> int:
        gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
        return sum(p.numel() for g in gens for p in g.parameters())

    lowrank = [params(demo_model(n, generator="lowrank")) for n in (12, 48)]
    assert lowrank[0] == lowrank[1]
    assert params(demo_model(48)) > params(demo_model(12))


def test_task_models_build_lowrank_generators_from_config(tmp_path):
    """The QVHighlights model from its real config: every generator is the low-rank form with
    one mask per head (the config reaches every generator of the model)."""
    cfg = compose_cfg(
        [
            "task=qvhighlights",
            "mask=multilayer",
            "mask.depth=2",
            "mask.generator=lowrank",
            "mask.per_head=true",
            "model.hidden_dim=32",
            "model.num_heads=4",
            "model.ffn_dim=64",
        ],
        tmp_path,
    )
    mask, attention = core_configs(cfg)
    model = instantiate(cfg.model, mask=mask, attention=attention)
    gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert len(gens) == 4
    assert all(isinstance(g, LowRankMaskGenerator) and g.heads == 4 for g in gens)
