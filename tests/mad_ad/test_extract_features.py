"""Feature extraction on a generated 2 s video with sound: 5 fps frame sampling, resampled audio,
MAD h5 layout, audio aligned to the visual frames; a tiny random CLIP and random OpenL3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from scripts.extract_features import (  # noqa: E402
    ClipImageEmbedder,
    TorchOpenL3Embedder,
    align,
    extract,
    main,
    read_audio,
    read_video_frames,
)

SOURCE_FPS, SECONDS, AUDIO_RATE = 10, 2.0, 44100


def write_video(path: Path, with_audio: bool = True) -> None:
    """Grey frames whose brightness encodes the frame number; a 440 Hz tone at 44.1 kHz."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=SOURCE_FPS)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if with_audio else None
        for i in range(int(SECONDS * SOURCE_FPS)):
            image = np.full((64, 64, 3), 10 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            t = np.arange(int(SECONDS * AUDIO_RATE)) / AUDIO_RATE
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                chunk = wave[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = AUDIO_RATE
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "movie_0001.mp4"
    write_video(path)
    return path


def tiny_clip_config(tmp_path: Path) -> Path:
    config = {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "tiny-clip-test.json"
    path.write_text(json.dumps(config))
    return path


def test_frames_at_5_fps_and_audio_at_48k(video):
    frames = read_video_frames(video)
    assert len(frames) == int(SECONDS * 5)
    brightness = [np.asarray(f, dtype=float).mean() for f in frames]
    # frame k (time k / 5 s) is source frame 2k, whose brightness is 10 * 2k
    assert np.allclose(brightness, [20 * k for k in range(len(frames))], atol=4)
    audio = read_audio(video)
    assert abs(len(audio) - SECONDS * 48000) < 0.05 * 48000
    assert 0.1 < np.abs(audio).max() < 0.5


def test_align_pads_with_the_last_row_and_truncates():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert align(x, 2).tolist() == [[0, 1], [2, 3]]
    assert align(x, 4).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]


def test_extract_writes_the_mad_layout(tmp_path, video):
    clip = ClipImageEmbedder(
        "tiny-clip-test", model_config=str(tiny_clip_config(tmp_path)), allow_random=True
    )
    openl3 = TorchOpenL3Embedder(allow_random=True)
    visual_out, audio_out = tmp_path / "clip.h5", tmp_path / "audio.h5"
    assert extract([video], visual_out, audio_out, clip, openl3) == ["movie_0001"]
    with h5py.File(visual_out) as fv, h5py.File(audio_out) as fa:
        assert fv["movie_0001"].shape == (10, 24) and fa["movie_0001"].shape == (10, 512)
        assert fv["movie_0001"].dtype == np.float32 and np.isfinite(fa["movie_0001"][()]).all()
    # a second run resumes: nothing left to do
    assert extract([video], visual_out, audio_out, clip, openl3) == []
    # local OpenL3 weights (torchopenl3's .pth.tar holds a plain state dict) load
    weights = tmp_path / "torchopenl3_mel128_env_512.pth.tar"
    torch.save(openl3.model.state_dict(), weights)
    reloaded = TorchOpenL3Embedder(weights=str(weights))
    for a, b in zip(reloaded.model.parameters(), openl3.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--clip-weights"):
        ClipImageEmbedder("tiny-clip-test", model_config=str(tiny_clip_config(tmp_path)))
    with pytest.raises(FileNotFoundError, match="torchopenl3_mel128_env_512.pth.tar"):
        TorchOpenL3Embedder()
    with pytest.raises(SystemExit, match="no such video"):
        main([str(tmp_path / "absent.mp4"), "--visual-out", "v.h5", "--audio-out", "a.h5"])
