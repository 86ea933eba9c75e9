"""The audio input of MA-AVT / LAVISH / MBT on AVE: one normalised Kaldi fbank "image" per
one-second segment, exactly as the official readers compute it (MA-AVT ``datasets/ave.py``
``AVE._wav2fbank``, LAVISH ``AVE/dataloader.py``, ViT branch):

* the whole waveform's mean is removed;
* segment ``i`` of 10 starts at ``np.linspace(0, n - 16000 * 1.1, 10, dtype=int)[i]`` and is
  16,000 samples long (a file of at most 1.1 s is used whole for every segment);
* ``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
  window_type='hanning', num_mel_bins=224, dither=0.0, frame_shift=4.4)`` at the file's rate;
* ``(fbank - (-4.1426)) / (3.2001 * 2)``, then zero-padded / cut to 224 frames.

torchaudio is not a dependency of this framework (its wheels pin one torch version), so the
fbank is computed with ``transformers.audio_utils`` (its numpy port of Kaldi's fbank, the one
``ASTFeatureExtractor`` uses without torchaudio) with Kaldi's settings spelled out below;
tests/ave/test_audio.py compares it with ``torchaudio.compliance.kaldi.fbank`` (when
torchaudio is installed) and with Kaldi's algorithm written out in torch.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

NUM_SEGMENTS = 10  # AVE: ten one-second segments a video
SEGMENT_SECONDS = 1.0  # opt.audio_length in the official reader
NUM_MEL_BINS = 224  # ViT branch: the fbank is a 224 x 224 image
TARGET_FRAMES = 224
FRAME_SHIFT_MS = 4.4
FRAME_LENGTH_MS = 25.0  # Kaldi default
LOW_FREQ = 20.0  # Kaldi default (high_freq 0 -> Nyquist)
PREEMPHASIS = 0.97  # Kaldi default
NORM_MEAN = -4.1426  # "yb calculate: AVE dataset" (official reader, vis_encoder_type vit)
NORM_STD = 3.2001
KALDI_EPSILON = float(np.finfo(np.float32).eps)  # log floor of Kaldi's fbank


def segment_starts(num_samples: int, sample_rate: int = 16000) -> list[int] | None:
    """Start sample of each of the 10 one-second segments, or None when the file is too short
    to be cut (<= 1.1 s: the official reader then uses the whole waveform for every segment).

    The official reader hard-codes 16000 samples a second here whatever the file's rate."""
    del sample_rate  # the official code uses 16000 regardless; kept for the call sites' clarity
    if num_samples <= 16000 * (SEGMENT_SECONDS + 0.1):
        return None
    starts = np.linspace(
        0, num_samples - 16000 * (SEGMENT_SECONDS + 0.1), num=NUM_SEGMENTS, dtype=int
    )
    return [int(s) for s in starts]


@functools.lru_cache(maxsize=8)
def _kaldi_mel_filters(sample_rate: int, fft_length: int) -> np.ndarray:
    """Kaldi's mel banks (triangles in mel space, 1127 ln(1 + f/700), 20 Hz .. Nyquist),
    (fft_length // 2 + 1, 224); the Nyquist bin has weight 0 as in Kaldi."""
    with warnings.catch_warnings():  # 224 bins over 256 FFT bins: the lowest triangles are empty
        warnings.simplefilter("ignore", UserWarning)
        filters = mel_filter_bank(
            num_frequency_bins=fft_length // 2 + 1,
            num_mel_filters=NUM_MEL_BINS,
            min_frequency=LOW_FREQ,
            max_frequency=sample_rate / 2,
            sampling_rate=sample_rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
            dtype=np.float64,
        )
    filters[-1, :] = 0.0  # Kaldi: banks over bins 0 .. N/2 - 1, a zero column for Nyquist
    return filters


def kaldi_fbank(waveform: np.ndarray, sample_rate: int) -> Tensor:
    """``torchaudio.compliance.kaldi.fbank`` with the official AVE settings.

    Args:
        waveform: (num_samples,) float samples in [-1, 1] (as ``torchaudio.load`` returns them).
        sample_rate: the file's sampling rate (AVE: 16 kHz).

    Returns:
        (num_frames, 224) float32 log mel energies; ``num_frames = 1 + (n - 400) // 70`` at
        16 kHz (snip_edges: only whole 25 ms windows).
    """
    window_size = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    window_shift = int(sample_rate * FRAME_SHIFT_MS * 0.001)
    fft_length = 1 << (window_size - 1).bit_length()  # round_to_power_of_two
    if len(waveform) < window_size:
        raise ValueError(
            f"{len(waveform)} samples: shorter than one {FRAME_LENGTH_MS} ms fbank window "
            f"({window_size} samples)"
        )
    features = spectrogram(
        np.asarray(waveform, dtype=np.float64),
        window_function(window_size, "hann", periodic=False),  # Kaldi 'hanning'
        frame_length=window_size,
        hop_length=window_shift,
        fft_length=fft_length,
        power=2.0,  # use_power
        center=False,  # snip_edges
        preemphasis=PREEMPHASIS,
        remove_dc_offset=True,
        mel_filters=_kaldi_mel_filters(sample_rate, fft_length),
        mel_floor=KALDI_EPSILON,
        log_mel="log",
        dtype=np.float64,
    )
    return torch.from_numpy(features.T.astype(np.float32))  # (frames, mel)


def normalise_and_fit(fbank: Tensor, target_frames: int = TARGET_FRAMES) -> Tensor:
    """The official normalisation ``(x - mean) / (2 std)``, then zero rows appended (or rows
    cut) to ``target_frames``; (frames, mel) -> (target_frames, mel)."""
    fbank = (fbank - NORM_MEAN) / (NORM_STD * 2)
    missing = target_frames - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, missing))
    return fbank[:target_frames]


def audio_segments(waveform: np.ndarray, sample_rate: int) -> Tensor:
    """The 10 segment fbanks of one video, (10, 224, 224), from its (num_samples,) or
    (channels, num_samples) waveform (the official code keeps channel 0 after removing the
    mean over all channels: ``kaldi.fbank`` reads channel 0 of a multi-channel input)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    waveform = waveform - waveform.mean()  # over all channels, as waveform.mean() there
    mono = waveform[0]
    starts = segment_starts(mono.shape[0], sample_rate)
    length = int(16000 * SEGMENT_SECONDS)
    segments = []
    for i in range(NUM_SEGMENTS):
        piece = mono if starts is None else mono[starts[i] : starts[i] + length]
        segments.append(normalise_and_fit(kaldi_fbank(piece, sample_rate)))
    return torch.stack(segments)
