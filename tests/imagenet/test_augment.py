"""MAE's RandAugment (``rand-m9-mstd0.5-inc1``) as the datamodule builds it, with the installed
Pillow: every op at the extreme magnitudes, on a real (JPEG-decoded) image. Pillow 13 rejected
posterize with 0 bits (magnitude 10) and ImageNet training died in epoch 3."""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS, LEVEL_TO_ARG, RandAugment

from tasks.imagenet.augment import posterize
from tasks.imagenet.data import ImageNetDataModule

SIZE = 48


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A JPEG-decoded RGB image with gradients, edges and noise (every channel's 256 levels)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x * 255 // (SIZE - 1), y * 255 // (SIZE - 1), (x + y) * 255 // 94], -1)
    pixels[10:30, 12:20] = [250, 30, 60]
    noise = np.random.default_rng(0).integers(-20, 21, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def rand_augment() -> RandAugment:
    dm = ImageNetDataModule(str(Path("unused")), num_classes=4, img_size=32, num_workers=0)
    found = [t for t in dm.train_transform.transforms if isinstance(t, RandAugment)]
    assert len(found) == 1
    return found[0]


def test_the_recipe_is_maes(rand_augment):
    assert sorted(op.name for op in rand_augment.ops) == sorted(_RAND_INCREASING_TRANSFORMS)
    assert rand_augment.num_layers == 2
    assert {(op.magnitude, op.magnitude_std) for op in rand_augment.ops} == {(9, 0.5)}
    # magnitude 10 (drawn from N(9, 0.5) and clipped) keeps 0 bits
    assert LEVEL_TO_ARG["PosterizeIncreasing"](10.0, {}) == (0,)


@pytest.mark.parametrize("draw", [-100.0, 7.5, 9.0, 10.5, 100.0])
def test_every_op_at_the_extreme_magnitudes(rand_augment, image, draw, monkeypatch):
    """Each op as built, applied always, with the magnitude draw N(9, 0.5) replaced by ``draw``
    (clipped by timm to [0, 10]: both ends of every op's range)."""
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: draw)
    for built in rand_augment.ops:
        op = copy.copy(built)
        op.prob = 1.0
        out = op(image.copy())
        assert isinstance(out, Image.Image), op.name
        assert out.size == image.size and out.mode == "RGB", op.name
        arr = np.asarray(out)
        assert arr.dtype == np.uint8
        if op.name == "PosterizeIncreasing" and draw >= 10:  # 0 bits: black, as Pillow < 13
            assert not arr.any()
        if op.name in ("Invert",):
            assert np.array_equal(arr, 255 - np.asarray(image))


def test_posterize_matches_the_bit_mask(image):
    """Keep the top ``bits`` bits (the old Pillow / TensorFlow formula), 0 bits included."""
    source = np.asarray(image).astype(np.int64)
    for bits in range(0, 9):
        expected = source & (0xFF << (8 - bits)) & 0xFF
        assert np.array_equal(np.asarray(posterize(image, bits)), expected), bits
