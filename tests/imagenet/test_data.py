"""The ImageNet folder datamodule: MAE's transforms, mixup / cutmix, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scripts.make_imagenet_folder import make_imagenet_folder
from tasks.imagenet.data import ImageNetDataModule


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_imagenet_folder(
        tmp_path / "imagenet", num_classes=3, train_per_class=4, val_per_class=2, size=40
    )


def datamodule(root: Path, **overrides) -> ImageNetDataModule:
    kwargs = dict(num_classes=3, img_size=32, batch_size=4, num_workers=0, pin_memory=False)
    return ImageNetDataModule(str(root), **{**kwargs, **overrides})


def test_folder_layout(folder: Path) -> None:
    assert sorted(p.name for p in (folder / "train").iterdir()) == [
        "n00000000",
        "n00000001",
        "n00000002",
    ]
    assert len(list((folder / "val" / "n00000001").glob("*.JPEG"))) == 2


def test_batches_and_transforms(folder: Path) -> None:
    dm = datamodule(folder)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    # MAE's recipe through timm: RandAugment m9 mstd0.5 inc1, bicubic, random erasing 0.25
    described = repr(dm.train_transform)
    assert "RandAugment" in described and "RandomErasing" in described and "bicubic" in described
    val_images, val_labels = next(iter(dm.val_dataloader()))
    # eval: resize to 32 / 0.875 = 36, centre crop 32; unshuffled, so class 0 comes first
    assert val_images.shape == (4, 3, 32, 32) and val_labels.tolist() == [0, 0, 1, 1]


def test_mixup_only_on_training_batches(folder: Path) -> None:
    dm = datamodule(folder)
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    dm.trainer = SimpleNamespace(training=True)
    mixed, targets = dm.on_after_batch_transfer((images.clone(), labels), 0)
    assert targets.shape == (4, 3)
    torch.testing.assert_close(targets.sum(-1), torch.ones(4))
    assert targets.min() >= 0.1 / 3 - 1e-6  # label smoothing 0.1 folded into the mixed targets
    dm.trainer = SimpleNamespace(training=False)
    _, untouched = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(untouched, labels)


def test_no_mixup_keeps_hard_labels(folder: Path) -> None:
    dm = datamodule(folder, mixup=0.0, cutmix=0.0)
    assert dm.mixup_fn is None


def test_missing_folder_and_class_mismatch(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        datamodule(tmp_path / "absent").setup("fit")
    with pytest.raises(ValueError, match="3 class folders but num_classes=1000"):
        datamodule(folder, num_classes=1000).setup("fit")
