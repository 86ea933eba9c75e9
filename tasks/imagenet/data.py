"""ImageNet-1K in the standard folder layout, with MAE's fine-tuning augmentation.

    <root>/train/<wnid>/*.JPEG     <root>/val/<wnid>/*.JPEG

Train: timm ``create_transform`` (RandomResizedCrop bicubic, flip, RandAugment
``rand-m9-mstd0.5-inc1`` with posterize's 0 bits as before Pillow 13 (``augment.py``), random
erasing 0.25 'pixel'; colour jitter off as with RandAugment) and timm ``Mixup`` (mixup 0.8,
cutmix 1.0, switch 0.5, label smoothing 0.1) applied per batch after the transfer to the device,
as MAE's ``engine_finetune.py`` does. Val: resize to
``img_size / crop_pct`` (crop_pct 224/256) bicubic, centre crop, normalise (MAE's
``build_transform``). The val split doubles as the test split (ImageNet test labels are private).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from tasks.common.runtime.data import (
    DataValidationError,
    EpochShuffleSampler,
    SeededItems,
    current_epoch,
    training_seed,
)
from tasks.imagenet import augment

JPEG_END = b"\xff\xd9"


def check_image(path: str) -> None:
    """Open the image header, and check that a JPEG ends with its end-of-image marker (a
    truncated download does not; decoding it would fail in the middle of an epoch). Other formats
    are verified by PIL (PNG: every chunk's CRC)."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            if fmt != "JPEG":
                img.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for undecodable files
        raise DataValidationError(path, f"not a decodable image ({err})") from err
    if fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(-2, 2)
            tail = f.read(2)
        # some encoders pad after the marker: look for it near the end
        if tail != JPEG_END:
            with open(path, "rb") as f:
                f.seek(max(0, Path(path).stat().st_size - 1024))
                if JPEG_END not in f.read():
                    raise DataValidationError(path, "truncated JPEG (no end-of-image marker)")


def check_images(dataset: datasets.ImageFolder, num_threads: int = 8) -> None:
    """Every image of a split (threads: the checks are I/O bound)."""
    if not dataset.samples:
        raise DataValidationError(dataset.root, "no images in this split")
    with ThreadPoolExecutor(num_threads) as pool:
        list(pool.map(check_image, [p for p, _ in dataset.samples]))


def eval_transform(img_size: int, crop_pct: float = 224 / 256) -> transforms.Compose:
    """MAE's evaluation transform: resize the short side to img_size / crop_pct, centre crop."""
    crop_pct = crop_pct if img_size <= 224 else 1.0
    return transforms.Compose(
        [
            transforms.Resize(int(img_size / crop_pct), interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


def image_folder(
    root: Path, split: str, transform: object, num_classes: int
) -> datasets.ImageFolder:
    """``root/split`` as an ImageFolder; a missing folder or a class count that does not match
    the model's head is a clear error naming the config key."""
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet split not found: {folder} (config key data.root must hold "
            f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG)"
        )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    if len(dataset.classes) != num_classes:
        raise ValueError(
            f"{folder} has {len(dataset.classes)} class folders but num_classes={num_classes} "
            "(set num_classes to match the data)"
        )
    return dataset


class ImageNetDataModule(L.LightningDataModule):
    """ImageFolder train / val loaders; mixup / cutmix on training batches."""

    def __init__(
        self,
        root: str,
        *,
        num_classes: int = 1000,
        img_size: int = 224,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 10,
        pin_memory: bool = True,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float | None = None,
        interpolation: str = "bicubic",
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        crop_pct: float = 224 / 256,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        cutmix_minmax: list[float] | None = None,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        smoothing: float = 0.1,
        validate_images: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.validate_images = validate_images
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.smoothing = smoothing
        augment.register()  # posterize with 0 bits under Pillow >= 13 (tasks/imagenet/augment.py)
        self.train_transform = create_transform(
            input_size=img_size,
            is_training=True,
            color_jitter=color_jitter,
            auto_augment=auto_augment,
            interpolation=interpolation,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
        self.eval_transform = eval_transform(img_size, crop_pct)
        self.mixup_fn: Mixup | None = None
        if mixup > 0 or cutmix > 0 or cutmix_minmax is not None:
            self.mixup_fn = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                cutmix_minmax=cutmix_minmax,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode=mixup_mode,
                label_smoothing=smoothing,
                num_classes=num_classes,
            )
        self.train_set: datasets.ImageFolder | None = None
        self.val_set: datasets.ImageFolder | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = image_folder(
                self.root, "train", self.train_transform, self.num_classes
            )
            if self.validate_images:
                check_images(self.train_set)
        if self.val_set is None:
            self.val_set = image_folder(self.root, "val", self.eval_transform, self.num_classes)
            if self.validate_images:
                check_images(self.val_set)

    def train_dataloader(self) -> DataLoader:
        # drop_last as MAE (and mixup's 'batch' mode flips the batch, which needs an even size)
        # order and augmentation fixed by (seed, epoch, index): resuming is exact
        return DataLoader(
            SeededItems(self.train_set),
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(
                len(self.train_set), item_seeds=True, epoch=current_epoch(self)
            ),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        """Mix training batches on the device; targets become soft (B, num_classes)."""
        trainer = getattr(self, "trainer", None)
        if self.mixup_fn is not None and trainer is not None and trainer.training:
            images, targets = batch
            # mixup draws from the global RNGs before the per-batch reseed: seed it from
            # (seed, epoch, batch) so that a resumed run mixes the same way
            fit_loop = getattr(trainer, "fit_loop", None)
            if fit_loop is None:  # not inside Trainer.fit
                with torch.no_grad():
                    return self.mixup_fn(images, targets)
            seed = training_seed() + 1_000_003 * trainer.current_epoch
            seed = (seed + 7919 * fit_loop.epoch_loop.batch_progress.current.ready) % 2**32
            states = random.getstate(), np.random.get_state(), torch.get_rng_state()
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            try:
                with torch.no_grad():
                    return self.mixup_fn(images, targets)
            finally:
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])
        return batch
