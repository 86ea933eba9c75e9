"""ImageNet on one image: the top classes with their probabilities.

The image is read as torchvision's ``ImageFolder`` reads the validation split (PIL, converted to
RGB) and goes through the task's evaluation transform (``ImageNetDataModule.eval_transform``:
MAE's resize + centre crop + normalisation), so a prediction is that image's row of the
validation forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.datasets.folder import find_classes, pil_loader

from tasks.common.launch.predict import TaskPrediction


def class_names(root: Path) -> list[str] | None:
    """The class folder names (wnids) in index order, as ``ImageFolder`` numbers them, from
    ``data.root``'s train (or val) split; None when neither is on this machine."""
    for split in ("train", "val"):
        if (root / split).is_dir():
            return find_classes(str(root / split))[0]
    return None


def predict_class(
    module: Any, datamodule: Any, *, image: str | Path, top_k: int = 5
) -> TaskPrediction:
    """The ``top_k`` classes of one image.

    Args:
        module: the trained ``ImageNetModule`` (eval mode).
        datamodule: its ``ImageNetDataModule`` (the evaluation transform, ``data.root``).
        image: an image file (any format PIL reads).
        top_k: how many classes to list.

    Returns the prediction: ``classes`` [{index, name (wnid, None without the class folders
    here), probability}] sorted by probability.
    """
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"input.image: {path} not found")
    x = datamodule.eval_transform(pil_loader(str(path)))[None].to(module.device)
    probs = module.net(x).float().softmax(-1)[0]
    top = probs.topk(min(int(top_k), probs.numel()))
    names = class_names(datamodule.root)
    classes = [
        {"index": i, "name": None if names is None else names[i], "probability": p}
        for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]
    return TaskPrediction({"image": str(path), "classes": classes}, lambda: module.net(x))
