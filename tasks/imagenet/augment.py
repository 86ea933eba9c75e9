"""MAE's RandAugment (timm ``rand-m9-mstd0.5-inc1``) with the installed Pillow.

timm's ``PosterizeIncreasing`` keeps ``4 - int(magnitude / 10 * 4)`` bits: 0 bits at magnitude 10,
which ``mstd0.5`` draws about 2 % of the time (magnitude ~ N(9, 0.5) clipped to [0, 10]). Pillow
before 13 turned 0 bits into an all-black image (its mask ``~(2 ** 8 - 1)`` clears every bit, as
TensorFlow's shift by 8 does in the original RandAugment); Pillow 13 raises
``ValueError: bits must be between or equal to 1 and 8`` and a training epoch dies. The op below
keeps the old result for 0 bits and calls Pillow otherwise, so the recipe stays exact with any
Pillow; :func:`register` puts it into timm's op table before the transforms are built.
"""

from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment

POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of every channel; 0 bits: all zero (the
    result of Pillow < 13 and of TensorFlow's RandAugment), 8 or more: unchanged (timm)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * (256 * len(img.getbands())))
    return ImageOps.posterize(img, bits_to_keep)


def register() -> None:
    """Use :func:`posterize` for timm's posterize ops (read when an ``AugmentOp`` is built)."""
    for name in POSTERIZE_OPS:
        auto_augment.NAME_TO_OP[name] = posterize
