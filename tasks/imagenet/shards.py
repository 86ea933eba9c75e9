"""ImageNet as streamed tar shards (tasks/common/runtime/shards.py): converter and data module.

    python scripts/make_shards.py imagenet --root <imagenet> --out <shards>   # train/ and val/
    python train.py task=imagenet data._target_=tasks.imagenet.shards.ImageNetShardsDataModule \
        data.shards=<shards or s3://bucket/imagenet-shards>

Each sample holds the original image file's bytes (``<key>.jpeg``; no re-encoding), its class
index (``<key>.cls``, ImageFolder's sorted-wnid order) and its path below the split
(``<key>.path``). The training split is written in an order shuffled once (seed 0) so that every
shard mixes classes; the streaming loader then permutes the shards and shuffles within a buffer
at every epoch. Decoding and the transforms are those of the folder loader (PIL ``RGB``,
``ImageNetDataModule``'s train / eval transforms, mixup on the device).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets

from tasks.common.runtime.shards import (
    ShardedDataset,
    ShardIndex,
    ShardWriter,
    distributed_rank,
    sharded_loader,
)
from tasks.imagenet.data import ImageNetDataModule

SPLITS = ("train", "val")


def convert_image_folder(
    root: str | Path,
    out: str | Path,
    splits: tuple[str, ...] = SPLITS,
    samples_per_shard: int = 1000,
    seed: int = 0,
) -> dict[str, Path]:
    """``<root>/<split>/<wnid>/*`` -> ``<out>/<split>/<split>-NNNNNN.tar`` + ``index.json``."""
    written = {}
    for split in splits:
        folder = datasets.ImageFolder(str(Path(root) / split))
        samples = list(folder.samples)
        if split == "train":
            random.Random(seed).shuffle(samples)
        meta = {"task": "imagenet", "split": split, "classes": folder.classes}
        with ShardWriter(Path(out) / split, split, samples_per_shard, meta) as writer:
            for path, label in samples:
                ext = Path(path).suffix.lstrip(".").lower() or "jpeg"
                rel = str(Path(path).relative_to(Path(root) / split))
                writer.write({ext: Path(path).read_bytes(), "cls": label, "path": rel})
        written[split] = Path(out) / split
    return written


IMAGE_EXTS = ("jpeg", "jpg", "png", "webp", "bmp")
# webdataset's decoders: PIL ``RGB`` (as ImageFolder's loader opens a file), ``cls`` -> int
DECODE = wds.autodecode.Decoder(
    [wds.autodecode.imagehandler("pilrgb", IMAGE_EXTS), wds.autodecode.basichandlers]
)


def decode_image(sample: dict[str, Any]) -> tuple[Image.Image, int]:
    """(RGB image, class index) of a raw shard sample."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise KeyError(f"shard sample {sample.get('__key__')} has no image ({sorted(sample)})")
    decoded = DECODE(sample)
    return decoded[ext], decoded["cls"]


class _Transformed:
    """Picklable decode + transform for the DataLoader workers."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> tuple[Any, int]:
        image, label = decode_image(sample)
        return self.transform(image), label


class ImageNetShardsDataModule(ImageNetDataModule):
    """ImageNetDataModule reading ``<shards>/{train,val}`` tar shards instead of folders
    (local paths or any fsspec URL); the same transforms, batch sizes and mixup."""

    def __init__(
        self,
        shards: str,
        *,
        root: str | None = None,
        shuffle_buffer: int = 2000,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("validate_images", None)  # no folder to check: the converter read every file
        super().__init__(root or shards, validate_images=False, **kwargs)
        self.shards = str(shards).rstrip("/")
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def _check(self, split: str) -> ShardIndex:
        index = ShardIndex.load(f"{self.shards}/{split}")
        classes = index.meta.get("classes") or []
        if len(classes) != self.num_classes:
            raise ValueError(
                f"{self.shards}/{split} has {len(classes)} classes but num_classes="
                f"{self.num_classes} (set data.num_classes to match the data)"
            )
        return index

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self._check("train")
            self.train_set = ShardedDataset(
                f"{self.shards}/train",
                _Transformed(self.train_transform),
                batch_size=self.batch_size,
                shuffle=True,
                drop_last=True,  # as MAE (mixup's batch mode needs an even batch)
                seed=self.seed,
                buffer_size=self.shuffle_buffer,
                item_seeds=True,
            )
        if self.val_set is None:
            self._check("val")
            self.val_set = ShardedDataset(
                f"{self.shards}/val",
                _Transformed(self.eval_transform),
                batch_size=self.eval_batch_size,
            )

    def _loader(self, dataset: ShardedDataset) -> DataLoader:
        # the ranks are known here (setup may run before the process group exists)
        dataset.place(*distributed_rank(getattr(self, "trainer", None)))
        return sharded_loader(dataset, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)
