"""Write a tiny MSR-VTT look-alike in the official layout, for tests and the CPU demo.

    python scripts/make_msrvtt_videos.py --out data/msrvtt_tiny

produces (same names and json schema as the MSR-VTT release):

    <out>/train_val_videodatainfo.json   {"info", "videos": [{video_id, split, ...}], "sentences"}
    <out>/test_videodatainfo.json
    <out>/TrainValVideo/video<i>.mp4      train + validate videos
    <out>/TestVideo/video<j>.mp4          test videos
    <out>/vocab.txt                       a WordPiece vocabulary covering the generated captions

Each video shows a coloured square moving in one direction over a grey background; its captions
name the colour and the direction, so a model can learn them. The ``vocab.txt`` lets the tests
build a ``BertTokenizerFast`` without downloading bert-base-uncased.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import av
import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TEMPLATES = [
    "a {c} square moves {d}",
    "the {c} box is moving {d}",
    "a {c} block slides {d} slowly",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_video(
    path: Path,
    colour: tuple[int, int, int],
    direction: tuple[int, int],
    num_frames: int,
    size: tuple[int, int],
    fps: int = 8,
) -> None:
    """Encode a moving square as H.264 mp4 (yuv420p, even sizes)."""
    h, w = size
    side = max(4, min(h, w) // 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(num_frames):
            img = np.full((h, w, 3), 128, dtype=np.uint8)
            offset = 0.8 * (t / max(1, num_frames - 1) - 0.5)  # -0.4 .. 0.4 of the free space
            cx = int((w - side) * (0.5 + direction[0] * offset))
            cy = int((h - side) * (0.5 + direction[1] * offset))
            img[cy : cy + side, cx : cx + side] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_dataset(
    out: Path,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 2,
    captions_per_video: int = 3,
    num_frames: int = 8,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
) -> Path:
    """Write the tiny dataset under ``out`` and return ``out``."""
    rng = random.Random(seed)
    out = Path(out)
    splits = ["train"] * n_train + ["validate"] * n_val + ["test"] * n_test
    trainval = {
        "info": {"description": "tiny generated MSR-VTT look-alike"},
        "videos": [],
        "sentences": [],
    }
    test = {
        "info": {"description": "tiny generated MSR-VTT look-alike"},
        "videos": [],
        "sentences": [],
    }
    words: set[str] = set()
    sen_id = 0
    for i, split in enumerate(splits):
        colour = rng.choice(sorted(COLOURS))
        direction = rng.choice(sorted(DIRECTIONS))
        video_id = f"video{i}"
        folder = "TestVideo" if split == "test" else "TrainValVideo"
        write_video(
            out / folder / f"{video_id}.mp4",
            COLOURS[colour],
            DIRECTIONS[direction],
            num_frames,
            size,
        )
        target = test if split == "test" else trainval
        target["videos"].append(
            {
                "category": 0,
                "url": "",
                "video_id": video_id,
                "start time": 0.0,
                "end time": num_frames / 8.0,
                "split": split,
                "id": i,
            }
        )
        for k in range(captions_per_video):
            caption = TEMPLATES[k % len(TEMPLATES)].format(c=colour, d=direction)
            words.update(caption.split())
            target["sentences"].append({"caption": caption, "video_id": video_id, "sen_id": sen_id})
            sen_id += 1
    words.update(f"{c}" for c in COLOURS)
    words.update(DIRECTIONS)
    for t in TEMPLATES:
        words.update(w for w in t.split() if "{" not in w)
    (out / "train_val_videodatainfo.json").write_text(json.dumps(trainval, indent=1))
    (out / "test_videodatainfo.json").write_text(json.dumps(test, indent=1))
    (out / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + [".", ","] + sorted(words)) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--val", type=int, default=2)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = make_dataset(
        args.out,
        args.train,
        args.val,
        args.test,
        num_frames=args.frames,
        size=(args.height, args.width),
        seed=args.seed,
    )
    print(f"wrote a tiny MSR-VTT look-alike to {out}")


if __name__ == "__main__":
    main()
