"""The AVE audio input against the official settings: ``kaldi_fbank`` equals
``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False, window_type='hanning',
num_mel_bins=224, dither=0.0, frame_shift=4.4)`` called directly (when torchaudio is installed)
and Kaldi's fbank algorithm written out in torch (always); segment cutting, normalisation and
padding as ``AVE._wav2fbank``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.ave.audio import (
    NORM_MEAN,
    NORM_STD,
    audio_segments,
    kaldi_fbank,
    normalise_and_fit,
    segment_starts,
)


def reference_kaldi_fbank(wave: torch.Tensor, sr: int = 16000, bins: int = 224) -> torch.Tensor:
    """Kaldi's compute-fbank-feats with the official options, step by step (float64):
    25 ms windows every int(sr * 4.4 ms) samples (snip edges), per-frame DC removal,
    pre-emphasis 0.97 (first sample against itself), symmetric Hann window, zero pad to a power
    of two, power spectrum, triangular mel banks over bins 0 .. N/2 - 1 in mel space
    (1127 ln(1 + f / 700), 20 Hz .. Nyquist), log with the float32 epsilon floor."""
    size, shift = int(sr * 0.025), int(sr * 4.4e-3)
    padded = 1 << (size - 1).bit_length()
    frames = wave.unfold(0, size, shift)  # (m, size)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = (frames - 0.97 * previous) * torch.hann_window(size, periodic=False, dtype=wave.dtype)
    power = torch.fft.rfft(frames, n=padded).abs() ** 2  # (m, padded // 2 + 1)

    def mel(f):
        return 1127.0 * torch.log(1.0 + f / 700.0)

    low, high = 1127.0 * math.log(1 + 20 / 700), 1127.0 * math.log(1 + (sr / 2) / 700)
    delta = (high - low) / (bins + 1)
    b = torch.arange(bins, dtype=wave.dtype)[:, None]
    left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
    m = mel(sr / padded * torch.arange(padded // 2, dtype=wave.dtype))[None]
    banks = torch.clamp(
        torch.minimum((m - left) / (center - left), (right - m) / (right - center)), min=0
    )
    banks = torch.nn.functional.pad(banks, (0, 1))  # Nyquist column
    eps = torch.finfo(torch.float32).eps
    return torch.clamp(power @ banks.T, min=eps).log()


def _wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_fbank_equals_kaldi_algorithm() -> None:
    wave = _wave(16000)
    ours = kaldi_fbank(wave, 16000)
    ref = reference_kaldi_fbank(torch.from_numpy(wave).double()).float()
    assert ours.shape == ref.shape == (1 + (16000 - 400) // 70, 224) == (223, 224)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # 224 triangles over 256 FFT bins: some low ones cover no bin and give Kaldi's log floor
    floor = math.log(torch.finfo(torch.float32).eps)
    assert ours[:, 2].max() == pytest.approx(floor) and ours[:, 100].min() > floor


def test_fbank_equals_torchaudio_called_directly() -> None:
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    wave = _wave(16000, seed=1)
    ref = kaldi.fbank(
        torch.from_numpy(wave)[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=224,
        dither=0.0,
        frame_shift=4.4,
    )
    torch.testing.assert_close(kaldi_fbank(wave, 16000), ref, rtol=1e-4, atol=2e-4)


def test_segments_follow_the_official_reader() -> None:
    """10 s of audio: segment i is samples [linspace(0, n - 17600, 10)[i], + 16000), with the
    whole file's mean removed first; normalised and padded 223 -> 224 frames with zeros."""
    n = 16000 * 10
    wave = _wave(n, seed=2) + 0.25  # a DC offset the reader removes over the whole file
    starts = segment_starts(n)
    assert starts == [int(s) for s in np.linspace(0, n - 17600, 10, dtype=int)]
    out = audio_segments(wave, 16000)
    assert out.shape == (10, 224, 224) and out.dtype == torch.float32
    centred = wave - wave.mean()
    for i in (0, 4, 9):
        piece = centred[starts[i] : starts[i] + 16000]
        raw = reference_kaldi_fbank(torch.from_numpy(piece).double()).float()
        expected = (raw - NORM_MEAN) / (NORM_STD * 2)
        torch.testing.assert_close(out[i, :223], expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(out[i, 223], torch.zeros(224))  # ZeroPad2d((0, 0, 0, 1))


def test_short_file_is_used_whole_for_every_segment() -> None:
    wave = _wave(16000)  # 1.0 s <= 1.1 s: no cutting
    assert segment_starts(len(wave)) is None
    out = audio_segments(wave, 16000)
    assert torch.equal(out[0], out[9])


def test_long_fbank_is_cut_to_224_frames() -> None:
    fbank = torch.randn(300, 224)
    out = normalise_and_fit(fbank)
    assert out.shape == (224, 224)
    torch.testing.assert_close(out, (fbank[:224] - NORM_MEAN) / (2 * NORM_STD))
