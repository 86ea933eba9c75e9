"""ImageNet folders for MAE pre-training: MAE's "simple augmentation" (``main_pretrain.py``).

Train: ``RandomResizedCrop(img_size, scale=(0.2, 1.0), bicubic)``, horizontal flip, normalise
(ImageNet mean / std); labels are read but unused. Val: the fine-tuning evaluation transform
(resize ``img_size / crop_pct``, centre crop), on which the module reports the reconstruction
loss with a fixed masking draw (MAE itself does not evaluate during pre-training). The folder
layout, image checks, seeded order and ``drop_last`` are those of ``ImageNetDataModule``.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from tasks.imagenet.data import ImageNetDataModule


def pretrain_transform(
    img_size: int, scale: tuple[float, float] = (0.2, 1.0)
) -> transforms.Compose:
    """MAE's pre-training transform (``transform_train`` of ``main_pretrain.py``)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                img_size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


class MAEPretrainDataModule(ImageNetDataModule):
    """``ImageNetDataModule`` with MAE's pre-training transform and no mixup / cutmix."""

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
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_pct: float = 224 / 256,
        validate_images: bool = True,
    ) -> None:
        super().__init__(
            root,
            num_classes=num_classes,
            img_size=img_size,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            auto_augment=None,
            re_prob=0.0,
            crop_pct=crop_pct,
            mixup=0.0,
            cutmix=0.0,
            validate_images=validate_images,
        )
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must be (min, max) in (0, 1], got {crop_scale}")
        self.train_transform = pretrain_transform(img_size, tuple(crop_scale))
