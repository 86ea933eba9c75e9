"""AVE (audio-visual event localisation) read as it is distributed, the way the official MA-AVT
reader (``datasets/ave.py``) and LAVISH's (``AVE/dataloader.py``) read it.

Layout under ``root`` (``paths.ave_dir``; the official ``--data_dir``):

    Annotations.txt              Category&VideoID&Quality&StartTime&EndTime, one row a video;
                                 the AVE zip's copy starts with that header line, LAVISH's has
                                 none (both accepted: the header is recognised and skipped)
    labels.h5                    ``avadataset``: (N, 10, 29) one-hot per one-second segment,
                                 row i = annotation row i; class 28 = background
    {train,val,test}_order.h5    ``order``: the annotation / label rows of each split
                                 (3,339 / 402 / 402 of N = 4,143)
    AVE_Dataset/raw_audio/<VideoID>.wav             16 kHz audio
    AVE_Dataset/video_frames/<VideoID>/%06d.jpg     frames from 000001.jpg

A video yields ``audio`` (10, 224, 224): one normalised Kaldi fbank per segment
(``tasks.ave.audio``); ``frames`` (10, 3, 224, 224): the frames numbered
``np.linspace(1, n_frames, 10, dtype=int)``, ``read_image / 255``, ``Resize([224, 224],
bicubic)``, ImageNet mean / std; ``labels`` (10, 29) float32 as in labels.h5; for the mask
diagnostics, ``key_relevance`` (10, 1): whether each segment is an event or background
(``KEY_CATEGORIES``). The STAMP layers sit in the ViT, which runs every segment as its own
sequence (B x T of them), so all keys of a sequence share its segment's category.

Before training, :func:`check_ave` reads every file the three splits use and stops with the
file's name on the first problem (missing or unreadable file, wrong h5 key / shape, order index
out of range, annotation rows that do not line up with labels.h5). What the reader fixes is
counted and logged (``AVEDataModule.report``): grey-scale frames read as RGB, videos with fewer
than 10 frames (frames repeat), label rows that disagree with their annotation row (labels.h5
is used, as the official code does), missing videos dropped when ``on_missing=drop``.
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from stamp.diagnostics import KeyCategories
from tasks.ave.audio import NUM_SEGMENTS, audio_segments
from tasks.common.runtime.data import DataValidationError, EpochShuffleSampler, current_epoch

log = logging.getLogger(__name__)

# Class index c of labels.h5 is AVE_CATEGORIES[c] (the order in which the categories first
# appear in Annotations.txt, and the list the AVE / LAVISH / CMBS code bases use);
# index 28 is background.
AVE_CATEGORIES = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)
BACKGROUND = len(AVE_CATEGORIES)  # 28
NUM_CLASSES = BACKGROUND + 1  # 29
# The keys of a segment's sequence in the ViT (code i = names[i]): an event segment (its label
# is one of the 28 categories) or a background one (class 28, as the metric's argmax reads it).
KEY_CATEGORIES = KeyCategories(
    names=("event", "background"), relevant=("event",), irrelevant=("background",)
)
EVENT_SEGMENT, BACKGROUND_SEGMENT = range(len(KEY_CATEGORIES.names))
HEADER = ("Category", "VideoID", "Quality", "StartTime", "EndTime")
SPLITS = ("train", "val", "test")
MEDIA_DIR = "AVE_Dataset"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm IMAGENET_DEFAULT_MEAN / STD
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class Annotation:
    """One row of Annotations.txt (its position is the labels.h5 row)."""

    category: str
    video_id: str
    quality: str
    start: int
    end: int


@dataclass
class DataReport:
    """What the checks found and what the reader fixes; logged at set-up."""

    header_line: bool = False
    videos: dict[str, int] = field(default_factory=dict)  # per split, after drops
    dropped_missing: list[str] = field(default_factory=list)
    label_rows_disagreeing: list[int] = field(default_factory=list)
    segments_not_one_hot: int = 0
    grey_frames: int = 0
    videos_under_10_frames: int = 0
    multichannel_audio: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "header_line": self.header_line,
            "videos": dict(self.videos),
            "dropped_missing": len(self.dropped_missing),
            "label_rows_disagreeing": len(self.label_rows_disagreeing),
            "segments_not_one_hot": self.segments_not_one_hot,
            "grey_frames_read_as_rgb": self.grey_frames,
            "videos_under_10_frames": self.videos_under_10_frames,
            "multichannel_audio": self.multichannel_audio,
        }


# ---------------------------------------------------------------- annotation and h5 files


def read_annotations(path: str | Path) -> tuple[list[Annotation], bool]:
    """Annotations.txt rows and whether the file had the header line.

    Raises DataValidationError naming the line of a row without 5 ``&`` fields, an unknown
    category or non-integer times."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(path, "missing (the AVE annotation file)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    rows, header = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("&")]
        if number == 1 and tuple(fields) == HEADER:
            header = True
            continue
        if len(fields) != 5:
            raise DataValidationError(
                path, f"{len(fields)} '&'-separated fields, expected 5 {HEADER}", f"line {number}"
            )
        category, video_id, quality, start, end = fields
        if category not in AVE_CATEGORIES:
            raise DataValidationError(path, f"unknown category {category!r}", f"line {number}")
        try:
            start_s, end_s = int(start), int(end)
        except ValueError as err:
            raise DataValidationError(
                path, f"StartTime / EndTime not integers ({start!r}, {end!r})", f"line {number}"
            ) from err
        if not 0 <= start_s < end_s <= NUM_SEGMENTS:
            raise DataValidationError(
                path, f"event [{start_s}, {end_s}) outside 0..10 s", f"line {number}"
            )
        rows.append(Annotation(category, video_id, quality, start_s, end_s))
    if not rows:
        raise DataValidationError(path, "no annotation rows")
    return rows, header


def read_h5(path: str | Path, key: str) -> np.ndarray:
    """The dataset ``key`` of an h5 file, with errors naming the file and the keys it has."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(path, "missing")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataValidationError(path, f"no {key!r} dataset (keys: {sorted(f.keys())})")
            return f[key][:]
    except OSError as err:
        raise DataValidationError(path, f"not a readable HDF5 file ({err})") from err


def read_labels(path: str | Path) -> np.ndarray:
    """labels.h5 ``avadataset`` as float32 (N, 10, 29)."""
    labels = read_h5(path, "avadataset")
    if labels.ndim != 3 or labels.shape[1:] != (NUM_SEGMENTS, NUM_CLASSES):
        raise DataValidationError(
            path, f"avadataset has shape {labels.shape}, expected (N, 10, 29)"
        )
    if not np.isfinite(labels).all():
        raise DataValidationError(path, "avadataset holds NaN / Inf values")
    return labels.astype(np.float32)


def read_order(path: str | Path, num_rows: int) -> np.ndarray:
    """A split's ``order``: 1-D integer row indices into labels.h5 / Annotations.txt."""
    order = read_h5(path, "order")
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise DataValidationError(
            path, f"order has shape {order.shape} / dtype {order.dtype}, expected 1-D integers"
        )
    bad = np.flatnonzero((order < 0) | (order >= num_rows))
    if bad.size:
        raise DataValidationError(
            path,
            f"order[{bad[0]}] = {order[bad[0]]} is outside the {num_rows} rows of labels.h5",
        )
    return order.astype(np.int64)


def expected_labels(row: Annotation) -> np.ndarray:
    """The (10,) segment classes an annotation row describes: its category in
    [StartTime, EndTime), background elsewhere."""
    classes = np.full(NUM_SEGMENTS, BACKGROUND, dtype=np.int64)
    classes[row.start : row.end] = AVE_CATEGORIES.index(row.category)
    return classes


def check_alignment(
    annotations: list[Annotation], labels: np.ndarray, ann_path: Path, report: DataReport
) -> None:
    """labels.h5 row i must describe annotation row i. A few disagreeing rows are counted
    (labels.h5 is what the official code trains on); most rows disagreeing means the two
    files are offset (e.g. a header line read as a row) and stops."""
    if len(annotations) != len(labels):
        raise DataValidationError(
            ann_path,
            f"{len(annotations)} annotation rows (header line "
            f"{'skipped' if report.header_line else 'absent'}) but labels.h5 has "
            f"{len(labels)} rows",
        )
    hot = labels.sum(axis=2)
    report.segments_not_one_hot = int((~np.isclose(hot, 1.0)).sum())
    classes = labels.argmax(axis=2)
    disagree = [
        i
        for i, row in enumerate(annotations)
        if not np.array_equal(expected_labels(row), classes[i])
    ]
    report.label_rows_disagreeing = disagree
    if len(disagree) > len(annotations) // 2:
        raise DataValidationError(
            ann_path,
            f"{len(disagree)} of {len(annotations)} rows disagree with labels.h5 (category "
            f"and StartTime..EndTime vs the row's segment classes; first: row {disagree[0]}): "
            "the two files are not row-aligned",
        )


# ---------------------------------------------------------------- media files


def audio_path(root: Path, video_id: str) -> Path:
    return root / MEDIA_DIR / "raw_audio" / f"{video_id}.wav"


def frame_dir(root: Path, video_id: str) -> Path:
    return root / MEDIA_DIR / "video_frames" / video_id


def frame_numbers(num_frames: int) -> list[int]:
    """The official ``np.linspace(1, total_num_frames, num=10, dtype=int)`` (1-based)."""
    return [int(i) for i in np.linspace(1, num_frames, num=NUM_SEGMENTS, dtype=int)]


def count_frames(directory: Path) -> int:
    """``len(glob(<dir>/*.jpg))`` as the official reader counts the frames."""
    return len(glob.glob(os.path.join(glob.escape(str(directory)), "*.jpg")))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the rate, scaled as ``torchaudio.load`` scales them
    (PCM 16 / 32 bit / 8 bit unsigned to [-1, 1]; float files as stored)."""
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as err:
        raise DataValidationError(path, f"not a decodable wav file ({err})") from err
    if data.dtype == np.int16:
        data = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        data = data.astype(np.float32) / 2147483648.0
    elif data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    else:
        data = data.astype(np.float32)
    data = data[:, None] if data.ndim == 1 else data
    return np.ascontiguousarray(data.T), int(rate)


def check_wav(path: Path) -> int:
    """Header and size of a wav file (memory-mapped, not decoded); returns its channels."""
    if not path.is_file():
        raise DataValidationError(path, "missing audio file")
    try:
        rate, data = wavfile.read(path, mmap=True)
    except (ValueError, OSError, EOFError) as err:
        raise DataValidationError(path, f"not a decodable wav file ({err})") from err
    if data.shape[0] < int(rate * 0.025):
        raise DataValidationError(path, f"{data.shape[0]} samples: shorter than one fbank window")
    return 1 if data.ndim == 1 else int(data.shape[1])


def check_jpeg(path: Path) -> str:
    """The frame exists, its header opens and a JPEG ends with its end-of-image marker (a
    truncated file would fail in the middle of an epoch); returns PIL's mode (L = grey)."""
    if not path.is_file():
        raise DataValidationError(path, "missing frame (frames are read as %06d.jpg from 1)")
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.verify()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for undecodable files
        raise DataValidationError(path, f"not a decodable image ({err})") from err
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        if JPEG_END not in f.read():
            raise DataValidationError(path, "truncated JPEG (no end-of-image marker)")
    return mode


def read_frame(path: Path, antialias: bool = True) -> Tensor:
    """``read_image(path) / 255``, ``Resize([224, 224], BICUBIC)``, ImageNet normalisation;
    grey-scale frames are read as RGB (the official transform fails on one channel)."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (the official's)
        warnings.simplefilter("ignore", DeprecationWarning)
        image = decode_image(str(path), mode=ImageReadMode.RGB).float() / 255
    image = TF.resize(
        image, [IMAGE_SIZE, IMAGE_SIZE], InterpolationMode.BICUBIC, antialias=antialias
    )
    return TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------- the checked index


@dataclass
class AVEIndex:
    """Everything read and checked from the files: annotations, labels, split rows."""

    root: Path
    annotations: list[Annotation]
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    frame_counts: dict[str, int]
    report: DataReport


def check_ave(
    root: str | Path,
    splits: tuple[str, ...] = SPLITS,
    on_missing: str = "error",
    check_media: bool = True,
) -> AVEIndex:
    """Read and check the AVE files of ``splits`` under ``root`` (see the module docstring).

    Args:
        on_missing: "error" stops at the first video without its wav or frame folder; "drop"
            removes those videos from their split (counted in the report).
        check_media: open every wav header and the 10 frames each video uses.
    """
    if on_missing not in ("error", "drop"):
        raise ValueError(f"on_missing={on_missing!r}: choose error or drop")
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(
            root, "no such directory (set paths.ave_dir or data.root to the AVE folder)"
        )
    report = DataReport()
    ann_path = root / "Annotations.txt"
    annotations, report.header_line = read_annotations(ann_path)
    labels = read_labels(root / "labels.h5")
    check_alignment(annotations, labels, ann_path, report)
    orders = {s: read_order(root / f"{s}_order.h5", len(labels)) for s in splits}

    frame_counts: dict[str, int] = {}
    missing: set[str] = set()
    for split, order in orders.items():
        for row in order:
            video = annotations[row].video_id
            if video in frame_counts or video in missing:
                continue
            wav, frames = audio_path(root, video), frame_dir(root, video)
            n = count_frames(frames) if frames.is_dir() else 0
            if not wav.is_file() or n == 0:
                problem = f"no {wav}" if not wav.is_file() else f"no *.jpg frames in {frames}"
                if on_missing == "error":
                    raise DataValidationError(
                        wav if not wav.is_file() else frames,
                        f"video {video} (annotation row {row}, {split} split): {problem}; "
                        "data.on_missing=drop skips such videos",
                    )
                missing.add(video)
                continue
            frame_counts[video] = n
            report.videos_under_10_frames += n < NUM_SEGMENTS
            if check_media:
                report.multichannel_audio += check_wav(wav) > 1
                for number in sorted(set(frame_numbers(n))):
                    mode = check_jpeg(frames / f"{number:06d}.jpg")
                    report.grey_frames += mode not in ("RGB", "YCbCr", "CMYK")
    report.dropped_missing = sorted(missing)
    kept = {
        split: np.array([r for r in order if annotations[r].video_id not in missing], np.int64)
        for split, order in orders.items()
    }
    report.videos = {split: len(rows) for split, rows in kept.items()}
    for split, rows in kept.items():
        if len(rows) == 0:
            raise DataValidationError(root / f"{split}_order.h5", "no usable videos in this split")
    return AVEIndex(root, annotations, labels, kept, frame_counts, report)


def segment_relevance(labels: Tensor) -> Tensor:
    """(T, 29) segment labels -> (T, 1) ``EVENT_SEGMENT`` / ``BACKGROUND_SEGMENT`` codes (the
    argmax, as ``tasks.ave.metrics`` reads a label row)."""
    background = labels.argmax(-1) == BACKGROUND
    return torch.where(background, BACKGROUND_SEGMENT, EVENT_SEGMENT)[:, None]


class AVEDataset(Dataset):
    """One split: ``{"audio": (10, 224, 224), "frames": (10, 3, 224, 224), "labels": (10, 29),
    "index": labels.h5 row, "key_relevance": (10, 1)}`` per video."""

    def __init__(self, index: AVEIndex, split: str, antialias: bool = True) -> None:
        self.index, self.rows, self.antialias = index, index.splits[split], antialias

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        row = int(self.rows[i])
        video = self.index.annotations[row].video_id
        root = self.index.root
        waveform, rate = read_wav(audio_path(root, video))
        audio = audio_segments(waveform, rate)
        folder = frame_dir(root, video)
        numbers = frame_numbers(self.index.frame_counts[video])
        frames = torch.stack([read_frame(folder / f"{n:06d}.jpg", self.antialias) for n in numbers])
        labels = torch.from_numpy(self.index.labels[row])
        return {
            "audio": audio,
            "frames": frames,
            "labels": labels,
            "index": torch.tensor(row),
            "key_relevance": segment_relevance(labels),
        }


class AVEDataModule(L.LightningDataModule):
    """AVE train / val / test loaders from the official files (see the module docstring).

    Args:
        root: the AVE folder (``paths.ave_dir``).
        batch_size: training videos a batch (official: 256 over 4 GPUs).
        eval_batch_size: validation / test videos a batch.
        drop_last: drop the last incomplete training batch (official: True).
        on_missing: "error" or "drop" videos whose wav / frames are missing.
        check_media: check every wav header and used frame at set-up.
        antialias: antialiased bicubic resize (torchvision >= 0.17's default for tensors, the
            official ``Resize`` today; older torchvision did not antialias tensors).
    """

    key_relevance_categories = KEY_CATEGORIES  # what a batch's key_relevance means

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        eval_batch_size: int = 64,
        num_workers: int = 8,
        drop_last: bool = True,
        on_missing: str = "error",
        check_media: bool = True,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.root = root
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.drop_last = num_workers, drop_last
        self.on_missing, self.check_media, self.antialias = on_missing, check_media, antialias
        self.index: AVEIndex | None = None

    @property
    def report(self) -> dict[str, Any]:
        return {} if self.index is None else self.index.report.as_dict()

    def setup(self, stage: str | None = None) -> None:
        if self.index is not None:
            return
        self.index = check_ave(self.root, SPLITS, self.on_missing, self.check_media)
        report = self.index.report
        log.info("AVE %s: %s", self.root, report.as_dict())
        if report.dropped_missing:
            log.warning(
                "AVE: %d videos dropped (missing wav / frames), e.g. %s",
                len(report.dropped_missing),
                report.dropped_missing[:5],
            )
        if report.label_rows_disagreeing:
            log.warning(
                "AVE: %d labels.h5 rows disagree with their Annotations.txt row (rows %s...); "
                "labels.h5 is used",
                len(report.label_rows_disagreeing),
                report.label_rows_disagreeing[:5],
            )
        for what in ("grey_frames", "videos_under_10_frames", "segments_not_one_hot"):
            if getattr(report, what):
                log.warning("AVE: %s = %d", what, getattr(report, what))
        counts = Counter(a.category for a in self.index.annotations)
        log.debug("AVE categories: %s", dict(counts))
        self.sets = {s: AVEDataset(self.index, s, self.antialias) for s in SPLITS}

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.sets[split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # the order is fixed by (seed, epoch): resuming replays the same batches
        data = self.sets["train"]
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(data), epoch=current_epoch(self)),
            num_workers=self.num_workers,
            drop_last=self.drop_last and len(data) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
