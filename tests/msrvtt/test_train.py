"""End to end: the real Hydra config (task=msrvtt), shrunk to a tiny Video Swin + BERT on
generated videos, trains, decodes captions and scores them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_cfg, run_cfg

TINY_OVERRIDES = [
    "experiment=msrvtt_tiny",
    "logger=csv",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
]
FIVE = {"BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}  # + SPICE, unavailable without CoreNLP jars


def _captions(out: Path, split: str) -> dict:
    files = sorted((out / "captions").glob(f"{split}_epoch*.json"))
    assert files, f"no {split} captions written under {out}"
    return json.loads(files[-1].read_text())


def test_train_tiny_videos(tmp_path: Path, tiny_data: Path) -> None:
    """Fast variant: the metrics without a JVM start-up of METEOR (13 s); SPICE must say why."""
    out = tmp_path / "run"
    cfg = compose_cfg(
        [
            *TINY_OVERRIDES,
            "mask=multilayer",
            f"data.root={tiny_data}",
            "test=false",
            "+module.metrics.metrics=[BLEU_4,ROUGE_L,CIDEr,SPICE]",
            "module.metrics.tokenize=simple",
        ],
        output_dir=out,
    )
    record = run_cfg(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "msrvtt" and saved["mask"] == "multilayer"
    assert {"val/BLEU_4", "val/ROUGE_L", "val/CIDEr", "train/mlm_loss"} <= set(saved["metrics"])
    assert all(0.0 <= saved["metrics"][f"val/{m}"] <= 100.0 for m in ("BLEU_4", "ROUGE_L", "CIDEr"))
    assert record["params"]["params/mask"] > 0  # one STAMP generator per BERT layer
    captions = _captions(out, "val")
    assert set(captions["predictions"]) == {"video4", "video5"}
    assert "SPICE" in captions["unavailable"] and "CoreNLP" in captions["unavailable"]["SPICE"]


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["sparse", "multilayer"])
def test_train_tiny_videos_five_metrics(tmp_path: Path, tiny_data: Path, mask: str) -> None:
    """Table 6's five metrics on the test split (METEOR / PTB via Java; ~1 min)."""
    out = tmp_path / "run"
    cfg = compose_cfg(
        [*TINY_OVERRIDES, f"mask={mask}", f"data.root={tiny_data}", "test=true"], output_dir=out
    )
    run_cfg(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["mask"] == mask
    assert {f"test/{m}" for m in FIVE} <= set(saved["metrics"])
    captions = _captions(out, "test")
    assert set(captions["predictions"]) == {"video6", "video7"}
    assert set(captions["metrics"]) | set(captions["unavailable"]) == FIVE | {"SPICE"}


def test_optimizer_groups_follow_swinbert(tmp_path: Path, tiny_data: Path) -> None:
    from hydra.utils import instantiate

    from stamp import MaskConfig

    cfg = compose_cfg([*TINY_OVERRIDES, f"data.root={tiny_data}"], output_dir=tmp_path)
    net = instantiate(cfg.model, mask=MaskConfig(type="sparse", depth=2))
    module = instantiate(cfg.module, net=net)
    groups = module.param_groups()
    lr = cfg.module.optimizer.lr
    backbone = {id(p) for p in net.backbone.parameters()}
    assert len(groups) == 4
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # a group is all backbone or all the rest
        assert group.get("lr", lr) == (lr * 0.05 if in_backbone.pop() else lr)
        no_decay = all(p.ndim <= 1 for p in group["params"])
        assert (group.get("weight_decay") == 0.0) == no_decay
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    sparse_group = next(g for g in groups if any(p is net.sparse_mask.weight for p in g["params"]))
    assert "weight_decay" not in sparse_group  # SwinBERT decays its learn_vid_att weight
    optimizer = module.optimizer_factory(params=groups)
    assert isinstance(optimizer, torch.optim.AdamW)


def test_table6_experiment_composes(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=msrvtt_t6", "mask=multilayer"], output_dir=tmp_path)
    assert (cfg.table, cfg.row, cfg.experiment, cfg.test) == ("T6", "multilayer", "msrvtt_t6", True)
    assert cfg.hydra.sweeper.params.mask == "sparse,multilayer"
    assert (cfg.mask.depth, cfg.mask.sparse_loss_weight) == (16, 0.5)
    assert (cfg.data.num_frames, cfg.data.img_res, cfg.data.max_text_len) == (32, 224, 50)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (2, 16)
    assert (cfg.trainer.max_epochs, cfg.module.optimizer.lr, cfg.module.backbone_lr_scale) == (
        20,
        3e-4,
        0.05,
    )
    assert (cfg.data.mask_prob, cfg.data.max_masked_tokens) == (0.5, 45)
    assert cfg.model.backbone.arch == "swin3d_b" and cfg.monitor.metric == "val/CIDEr"
    assert cfg.model.bert.path.endswith("checkpoints/bert-base-uncased")
    # SwinBERT's backbone: the Kinetics-600 VidSwin release (load_swin.py), drop path 0.2
    assert cfg.model.backbone.weights.endswith(
        "checkpoints/swin_base_patch244_window877_kinetics600_22k.pth"
    )
    assert cfg.model.backbone.stochastic_depth_prob == 0.2
    assert cfg.mask.init == "identity"  # M = identity at step 0: BERT keeps its function
