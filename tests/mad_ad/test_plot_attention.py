"""Figs. S6-S9 on MAD-AD: a moment chosen by movie id and time, and panel (a) with the frames and
the audio waveform its tokens come from, read from generated media (a video, a wav)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf
from test_train import compose_train

from tasks.common.reporting import plots
from tasks.mad_ad.synthetic import VAL_MOVIES

SECONDS, FPS, RATE = 20, 5, 16000
MOVIE = VAL_MOVIES[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """The first 20 s of a validation movie: frame i (5 fps) has brightness 10 * (i % 25); a wav
    whose samples ramp linearly from 0 to 1 over the 20 s (value = t / 20)."""
    root = tmp_path_factory.mktemp("media")
    video = root / "videos" / f"{MOVIE}.mp4"
    video.parent.mkdir()
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.gop_size = 10  # keyframes every 2 s: seeking is exercised
        for i in range(SECONDS * FPS):
            image = np.full((32, 32, 3), 10 * (i % 25), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    wav = root / f"{MOVIE}.wav"
    soundfile.write(wav, np.arange(SECONDS * RATE, dtype=np.float32) / (SECONDS * RATE), RATE)
    return {"video": video, "videos": video.parent, "wav": wav}


def test_frames_and_waveform_of_a_window(media):
    frames = plots.read_frames(media["video"], 4.0, 25, FPS)  # frames 20 .. 44
    brightness = [np.asarray(f, dtype=float).mean() for f in frames]
    assert np.allclose(brightness, [10 * ((20 + k) % 25) for k in range(25)], atol=6)
    waveform, rate = plots.read_waveform(media["wav"], 4.0, 5.0, rate=RATE)
    assert rate == RATE and len(waveform) == 5 * RATE
    t = 4.0 + np.arange(len(waveform)) / RATE
    assert np.allclose(waveform.numpy(), t / SECONDS, atol=2e-3)


def test_moment_by_movie_and_time(mad_dir, tiny_llama, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(tmp_path, _tiny(mad_dir, tiny_llama))
    dm = instantiate(cfg.data)
    val = dm.splits["val"]
    ad = next(m for m in val if m.movie == MOVIE and m.start > 6.0)
    inside = 0.5 * (ad.start + ad.end)
    assert val[dm.find_moment("val", MOVIE, inside)] == ad
    gap = ad.end + 0.3  # between two ADs: the nearest centre
    nearest = min(
        (m for m in val if m.movie == MOVIE), key=lambda m: abs(0.5 * (m.start + m.end) - gap)
    )
    assert val[dm.find_moment("val", MOVIE, gap)] == nearest
    with pytest.raises(ValueError, match="movie 'nope' has no AD in the val split"):
        dm.find_moment("val", "nope", 1.0)
    batch, window = dm.moment_batch("val", MOVIE, inside)
    assert batch["visual"].shape[0] == 1 and batch["text"] == [ad.text]
    assert window["movie"] == MOVIE and window["seconds"] == 5.0
    # the window the tokens come from: 25 frames centred on the AD, kept inside the movie
    assert window["visual_start_s"] == max(0, round(inside * 5) - 12) / 5


def _tiny(mad_dir: Path, tiny_llama: Path) -> list[str]:
    return [
        "experiment=mad_ad_tiny",
        "mask=multilayer",
        "logger=csv",
        f"data.root={mad_dir}",
        f"model.llm_path={tiny_llama}",
        "model.visual_dim=16",
        "model.audio_dim=16",
        "model.dim=32",
        "model.num_queries=4",
    ]


def test_plot_attention_by_movie_and_time_with_panel_a(
    mad_dir, tiny_llama, media, tmp_path, monkeypatch
):
    from scripts.plot_attention import main

    run = tmp_path / "run"
    run.mkdir()
    cfg = compose_train(tmp_path, _tiny(mad_dir, tiny_llama))
    record = {
        "status": "ok",
        "mask": "multilayer",
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    (run / "results.json").write_text(json.dumps(record))
    seen = {}
    scene = plots.plot_scene

    def spy(mask, path, **kwargs):
        seen.update(kwargs, mask=mask)
        return scene(mask, path, **kwargs)

    monkeypatch.setattr(plots, "plot_scene", spy)
    out = tmp_path / "plots"
    args = [str(run), "--checkpoint", "none", "--out", str(out), "--movie", MOVIE, "--time", "8"]
    assert main([*args, "--video", str(media["videos"]), "--audio", str(media["wav"])]) == 0
    assert (out / "mask_run.png").read_bytes()[:4] == b"\x89PNG"
    window = seen["window"]
    assert window["movie"] == MOVIE and window["start"] <= 8.0 <= window["end"]
    assert len(seen["frames"]) == 25 and len(seen["waveform"]) == 5 * RATE
    assert seen["mask"].shape == (50, 50) and seen["boundaries"] == [0, 25]
    # the waveform is the audio window's: it starts at the window's first second
    assert abs(float(seen["waveform"][0]) - window["audio_start_s"] / SECONDS) < 2e-3
    with pytest.raises(SystemExit):
        main([str(run), "--movie", MOVIE])  # --time missing


def test_make_mad_data_media_are_readable_windows(tmp_path):
    from tasks.mad_ad.synthetic import write_synthetic_media

    (video,) = write_synthetic_media(tmp_path, ["m"], seconds=3.0)
    frames = plots.read_frames(video, 1.0, 10, FPS)  # 1.0 .. 2.8 s: seconds 1 and 2
    colours = [np.asarray(f, dtype=float).mean(axis=(0, 1)) for f in frames]
    assert np.allclose(colours[0], colours[4], atol=8) and np.allclose(
        colours[5], colours[9], atol=8
    )
    assert not np.allclose(colours[0], colours[5], atol=8)  # the colour changes every second
    waveform, rate = plots.read_waveform(video, 1.0, 1.0)
    assert abs(len(waveform) - rate) <= 1
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    assert abs(np.argmax(spectrum) * rate / len(waveform) - 440.0) < 5  # second 1: 440 Hz
