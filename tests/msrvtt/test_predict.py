"""predict.py / tasks.common.launch.predict on MSR-VTT: one video file -> the caption the validation
wrote for that video (the same frame sampling, crop and decoding)."""

from __future__ import annotations

import json

from tasks.common.launch.predict import Predictor
from tests.helpers import compose_cfg, msrvtt_overrides, run_cfg


def test_caption_equals_the_validation_caption(tmp_path):
    from scripts.make_msrvtt_videos import make_dataset

    root = make_dataset(tmp_path / "msrvtt")
    record = run_cfg(compose_cfg(msrvtt_overrides(root), tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "captions" / "val_epoch000.json").read_text())
    predictor = Predictor.from_checkpoint(record["best"]["ckpt"])
    predictor.datamodule.setup("validate")
    videos = predictor.datamodule.val_set.video_paths
    assert set(videos) == set(written["predictions"])
    for video_id, path in videos.items():
        out = predictor.predict(video=path)
        assert out["caption"] == written["predictions"][video_id]
    assert predictor.mask_picture(tmp_path / "mask.png").stat().st_size > 1000
