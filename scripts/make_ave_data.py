"""Write a tiny AVE in the official layout, for the tests, the docs and CPU runs.

    python scripts/make_ave_data.py --out data/ave_tiny

produces the files the official MA-AVT reader reads (``--data_dir``), with the same names,
h5 keys, shapes and dtypes:

    <out>/Annotations.txt          Category&VideoID&Quality&StartTime&EndTime (header line as in
                                   the AVE zip; --no-header writes LAVISH's header-less copy)
    <out>/labels.h5                avadataset (N, 10, 29): one-hot per second, 28 = background
    <out>/{train,val,test}_order.h5   order: int64 row indices
    <out>/AVE_Dataset/raw_audio/<VideoID>.wav          10 s, 16 kHz, PCM 16
    <out>/AVE_Dataset/video_frames/<VideoID>/%06d.jpg  1 fps frames from 000001.jpg

Videos use the first ``--classes`` real AVE categories in turn and 11-character YouTube-like
ids. Audio and frames are random noise; inside the event's seconds the audio also carries a
tone and the frames a block whose pitch / colour depend on the category, so that a model can
learn something. Frame counts vary around 10 (the reader samples 10 with np.linspace).
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy.io import wavfile

from tasks.ave.data import AVE_CATEGORIES, BACKGROUND, HEADER, MEDIA_DIR, NUM_CLASSES

RATE = 16000
SECONDS = 10
ID_CHARS = string.ascii_letters + string.digits + "-_"


def make_dataset(
    out: str | Path,
    videos: int = 16,
    split: tuple[int, int, int] = (8, 4, 4),
    classes: int = 4,
    header: bool = True,
    image_size: tuple[int, int] = (48, 64),
    seed: int = 0,
) -> Path:
    """Write the tiny AVE under ``out`` and return ``out``.

    Args:
        videos: number of videos (rows of Annotations.txt / labels.h5).
        split: train / val / test videos (their sum is ``videos``).
        classes: how many AVE categories are used (the first ones, in turn).
        header: write the header line of the AVE zip's Annotations.txt.
        image_size: (height, width) of the frames.
    """
    if sum(split) != videos:
        raise ValueError(f"split {split} does not add up to {videos} videos")
    if not 1 <= classes <= len(AVE_CATEGORIES):
        raise ValueError(f"--classes {classes}: choose 1..{len(AVE_CATEGORIES)}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    audio_dir = out / MEDIA_DIR / "raw_audio"
    frames_root = out / MEDIA_DIR / "video_frames"
    audio_dir.mkdir(parents=True, exist_ok=True)
    frames_root.mkdir(parents=True, exist_ok=True)

    lines = ["&".join(HEADER)] if header else []
    labels = np.zeros((videos, SECONDS, NUM_CLASSES), dtype=np.float32)
    for row in range(videos):
        label = row % classes
        video_id = "".join(rng.choice(list(ID_CHARS), size=11))
        start = int(rng.integers(0, 6))
        end = int(rng.integers(start + 3, SECONDS + 1))
        lines.append(f"{AVE_CATEGORIES[label]}&{video_id}&good&{start}&{end}")
        labels[row, :, BACKGROUND] = 1.0
        labels[row, start:end, BACKGROUND] = 0.0
        labels[row, start:end, label] = 1.0
        write_audio(audio_dir / f"{video_id}.wav", label, start, end, rng)
        num_frames = int(rng.integers(SECONDS - 2, SECONDS + 3))  # 8 .. 12 frames
        write_frames(frames_root / video_id, num_frames, label, start, end, image_size, rng)
    (out / "Annotations.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with h5py.File(out / "labels.h5", "w") as f:
        f.create_dataset("avadataset", data=labels)
    order = rng.permutation(videos).astype(np.int64)
    bounds = np.cumsum((0, *split))
    for name, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:], strict=True):
        with h5py.File(out / f"{name}_order.h5", "w") as f:
            f.create_dataset("order", data=np.sort(order[lo:hi]))
    return out


def write_audio(path: Path, label: int, start: int, end: int, rng: np.random.Generator) -> None:
    """10 s of noise, a category-dependent tone during [start, end) s; 16-bit PCM."""
    t = np.arange(RATE * SECONDS) / RATE
    wave = 0.05 * rng.standard_normal(t.size)
    event = (t >= start) & (t < end)
    wave[event] += 0.3 * np.sin(2 * np.pi * (300.0 + 400.0 * label) * t[event])
    wavfile.write(path, RATE, (np.clip(wave, -1, 1) * 32767).astype(np.int16))


def write_frames(
    folder: Path,
    num_frames: int,
    label: int,
    start: int,
    end: int,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> None:
    """``num_frames`` noise jpgs spread over 10 s; those inside the event show a block whose
    colour depends on the category."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    hue = np.array([(label * 67) % 256, (label * 131 + 80) % 256, (label * 29 + 160) % 256])
    for k in range(1, num_frames + 1):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        second = (k - 1) * SECONDS // num_frames
        if start <= second < end:
            image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = hue
        Image.fromarray(image).save(folder / f"{k:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/ave_tiny", help="output folder (paths.ave_dir)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument(
        "--split", type=int, nargs=3, default=(8, 4, 4), metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--classes", type=int, default=4, help="AVE categories used (first n)")
    parser.add_argument(
        "--no-header",
        action="store_true",
        help="Annotations.txt without its header line (LAVISH's copy)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = make_dataset(
        args.out,
        videos=args.videos,
        split=tuple(args.split),
        classes=args.classes,
        header=not args.no_header,
        seed=args.seed,
    )
    print(f"wrote a tiny AVE ({args.videos} videos) to {out}")


if __name__ == "__main__":
    main()
