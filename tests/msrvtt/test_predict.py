"""predict.py / tasks.common.launch.predict on MSR-VTT: one video file -> the caption the validation
wrote for that video (the same frame sampling, crop and decoding)."""

from __future__ import annotations

import json

from tasks.common.launch.predict import Predictor
from tests.helpers import compose_cfg, run_cfg


def test_caption_equals_the_validation_caption(tmp_path):
    from scripts.make_msrvtt_videos import make_dataset

    root = make_dataset(tmp_path / "msrvtt")
    overrides = [
        "experiment=msrvtt_tiny",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "test=false",
        "trainer.max_epochs=1",
        "+module.metrics.metrics=[BLEU_4,ROUGE_L,CIDEr]",
        "module.metrics.tokenize=simple",
    ]
    record = run_cfg(compose_cfg(overrides, tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "captions" / "val_epoch000.json").read_text())
    predictor = Predictor.from_checkpoint(record["best"]["ckpt"])
    predictor.datamodule.setup("validate")
    videos = predictor.datamodule.val_set.video_paths
    assert set(videos) == set(written["predictions"])
    for video_id, path in videos.items():
        out = predictor.predict(video=path)
        assert out["caption"] == written["predictions"][video_id]
    assert predictor.mask_picture(tmp_path / "mask.png").stat().st_size > 1000
