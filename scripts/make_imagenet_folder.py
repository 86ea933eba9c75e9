"""Write a tiny ImageNet-layout folder of generated JPEGs (for tests and the CPU demo).

    python scripts/make_imagenet_folder.py data/imagenet_tiny --classes 4 --train 8 --val 2

gives ``<root>/train/<wnid>/<wnid>_<i>.JPEG`` and ``<root>/val/<wnid>/ILSVRC2012_val_<i>.JPEG``
(the folder layout of the official ImageNet-1K after the usual val re-sort into class folders).
Each class has its own mean colour plus noise, so a tiny model can learn to tell them apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_imagenet_folder(
    root: str | Path,
    num_classes: int = 4,
    train_per_class: int = 8,
    val_per_class: int = 2,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Create the folder and return its root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    val_index = 0
    for c in range(num_classes):
        wnid = f"n{c:08d}"
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 40, size=(size, size, 3))
                pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                if split == "train":
                    name = f"{wnid}_{i}.JPEG"
                else:
                    val_index += 1
                    name = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                Image.fromarray(pixels).save(folder / name, format="JPEG")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train", type=int, default=8, help="train images per class")
    parser.add_argument("--val", type=int, default=2, help="val images per class")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = make_imagenet_folder(args.root, args.classes, args.train, args.val, args.size, args.seed)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
