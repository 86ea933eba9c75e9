"""MSR-VTT on one video: a caption.

The video is decoded and sampled as the evaluation reads a split (``decode_frames``: PyAV,
``data.num_frames`` frames spread uniformly; ``frames_to_tensor`` with the centre crop), and
captioned by the model's own decoding (``generate``: greedy or beam search as configured), so
a prediction is that video's caption in the validation predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common.launch.predict import TaskPrediction
from tasks.msrvtt.data import decode_frames, frames_to_tensor


def predict_caption(module: Any, datamodule: Any, *, video: str | Path) -> TaskPrediction:
    """The caption of one video.

    Args:
        module: the trained ``MSRVTTModule`` (eval mode).
        datamodule: its ``MSRVTTDataModule`` (frame count and resolution).
        video: a video file PyAV decodes (MSR-VTT's are .mp4).

    Returns the prediction: ``caption`` (text) and ``caption_ids`` (its token ids).
    """
    path = Path(video)
    if not path.is_file():
        raise FileNotFoundError(f"input.video: {path} not found")
    frames = decode_frames(path, datamodule.num_frames)
    x = frames_to_tensor(frames, datamodule.img_res, train=False)[None].to(module.device)
    ids = module.net.generate(x)
    caption = module.net.decode_text(ids)[0]
    output = {"video": str(path), "caption": caption, "caption_ids": list(ids[0])}
    return TaskPrediction(output, lambda: module.net.generate(x))
