"""The mask heatmap is a default callback: cheap, once per validation, nothing without a mask."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from stamp import MaskConfig, StampEncoder
from tasks.common.reporting.plot_callback import MaskHeatmapCallback
from tests.helpers import compose_cfg

PNG = b"\x89PNG\r\n\x1a\n"


class ImageLogger:
    """Stands in for the WandbLogger: records its log_image calls."""

    def __init__(self) -> None:
        self.images: list[tuple[str, str, int]] = []

    def log_image(self, key: str, images: list[str], step: int) -> None:
        self.images += [(key, image, step) for image in images]


def validate(callback: MaskHeatmapCallback, trainer, model, x: torch.Tensor) -> bool:
    """One validation batch through the callback's hooks; whether the model recorded it."""
    callback.on_validation_batch_start(trainer, model, x, 0)
    recording = any(getattr(m, "record", 0) for m in model.modules())
    with torch.no_grad():
        model(x)
    callback.on_validation_batch_end(trainer, model, None, x, 0)
    callback.on_validation_epoch_end(trainer, model)
    return recording


def test_the_heatmap_is_on_by_default_and_skips_models_without_a_mask(tmp_path) -> None:
    cfg = compose_cfg([], tmp_path)
    assert cfg.callbacks.mask_plot._target_.endswith("MaskHeatmapCallback")
    assert cfg.callbacks.mask_plot.style == "image"
    logger = ImageLogger()
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        global_step=7,
        is_global_zero=True,
        loggers=[logger],
        default_root_dir=str(tmp_path),
    )
    x = torch.randn(2, 6, 16)
    torch.manual_seed(0)
    full = StampEncoder(2, 16, 4, 32, n_max=6, mask=MaskConfig(type="none")).eval()
    callback = MaskHeatmapCallback(dirpath=str(tmp_path / "none"))
    callback.setup(trainer, full, "fit")
    assert not validate(callback, trainer, full, x)  # mask=none: not even recorded
    assert logger.images == [] and not (tmp_path / "none").exists()

    stamp = StampEncoder(2, 16, 4, 32, n_max=6, mask=MaskConfig(depth=2)).eval()
    callback = MaskHeatmapCallback(dirpath=str(tmp_path / "stamp"))
    callback.setup(trainer, stamp, "fit")
    assert validate(callback, trainer, stamp, x)
    png = tmp_path / "stamp" / "mask_epoch000.png"
    assert png.read_bytes()[:8] == PNG and logger.images == [("val/mask", str(png), 7)]
    # the best checkpoint's re-validation (weights of epoch 0): logged again, not redrawn
    stamp.weights_epoch = 0
    trainer.current_epoch, trainer.global_step = 1, 9
    assert not validate(callback, trainer, stamp, x)
    assert logger.images[-1] == ("val/mask", str(png), 9) and callback.saved == [png]


def test_records_are_trimmed_as_they_are_made(tmp_path) -> None:
    """The callback keeps the masks up to its sample, not every layer's probabilities."""
    from stamp import record_attention

    torch.manual_seed(0)
    stamp = StampEncoder(2, 16, 4, 32, n_max=6, mask=MaskConfig(depth=2)).eval()
    x = torch.randn(3, 6, 16)
    callback = MaskHeatmapCallback(dirpath=str(tmp_path), sample=1)
    with torch.no_grad(), record_attention(stamp) as full:
        stamp(x)
    with torch.no_grad(), record_attention(stamp, keep=callback._keep) as kept:
        stamp(x)
    assert [r["name"] for r in kept] == [r["name"] for r in full]
    for a, b in zip(kept, full, strict=True):
        assert set(a) == {"name", "mask", "key_padding_mask"}  # no probabilities kept
        assert torch.equal(a["mask"], b["mask"][:2])
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        global_step=0,
        is_global_zero=True,
        loggers=[],
        default_root_dir=str(tmp_path),
    )
    callback.setup(trainer, stamp, "validate")
    assert validate(callback, trainer, stamp, x)
    assert (tmp_path / "mask_epoch000.png").read_bytes()[:8] == PNG
