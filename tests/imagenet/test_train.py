"""End to end: the real Hydra config (task=imagenet), shrunk to a tiny ViT on a generated folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.make_imagenet_folder import make_imagenet_folder
from tasks.imagenet.module import ImageNetModule
from tests.helpers import compose_cfg, run_cfg

TINY_OVERRIDES = [
    "experiment=imagenet_tiny",
    "logger=csv",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
]


@pytest.mark.parametrize("mask", ["multilayer", "none"])
def test_train_tiny_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask: str) -> None:
    root = make_imagenet_folder(
        tmp_path / "imagenet_tiny", num_classes=4, train_per_class=4, val_per_class=2, size=40
    )
    target_shapes = []
    training_step = ImageNetModule.training_step

    def spy(self, batch, batch_idx):
        target_shapes.append(tuple(batch[1].shape))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(ImageNetModule, "training_step", spy)
    out = tmp_path / "run"
    cfg = compose_cfg([*TINY_OVERRIDES, f"mask={mask}", f"data.root={root}"], output_dir=out)
    record = run_cfg(cfg)
    assert target_shapes and set(target_shapes) == {(8, 4)}  # mixup / cutmix soft targets
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "imagenet" and saved["mask"] == mask
    assert {"val/top1", "val/top5", "val/loss"} <= set(saved["metrics"])
    assert 0 <= saved["metrics"]["val/top1"] <= saved["metrics"]["val/top5"] == 100.0
    generators = {"multilayer": 2, "none": 0}[mask]
    assert record["params"]["params/mask"] == generators * (64 * 5 + 5)


def test_table5_experiment_composes(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=imagenet_t5", "mask=multilayer"], output_dir=tmp_path)
    assert (cfg.table, cfg.row, cfg.experiment) == ("T5", "multilayer", "imagenet_t5")
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (768, 12, 12)
    assert (cfg.mask.depth, cfg.trainer.accumulate_grad_batches, cfg.data.batch_size) == (1, 4, 128)
    assert cfg.model.pretrained.endswith("checkpoints/mae_pretrain_vit_base.pth")
    assert cfg.hydra.sweeper.params.mask == "none,multilayer"
