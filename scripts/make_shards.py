"""Convert ImageNet (folder layout) or MAD-v2 (feature h5 + AD csv) to streamed tar shards.

    python scripts/make_shards.py imagenet --root data/imagenet --out data/imagenet_shards
    python scripts/make_shards.py mad --root data/mad --out data/mad_shards \\
        [--annotations mad-v2-ad-named.csv --test-movies test_movies.txt --tokens 25 --fps 5]

Writes <out>/<split>/<split>-NNNNNN.tar (WebDataset layout) and <out>/<split>/index.json.
Train from them with data._target_=tasks.imagenet.shards.ImageNetShardsDataModule
data.shards=<out> (or tasks.mad_ad.shards.MadADShardsDataModule); see docs/cluster.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="dataset", required=True)
    inet = sub.add_parser("imagenet", help="<root>/{train,val}/<wnid>/*.JPEG")
    mad = sub.add_parser("mad", help="MAD feature h5 files + AD csv (names relative to --root)")
    for p in (inet, mad):
        p.add_argument("--root", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--samples-per-shard", type=int, default=1000)
        p.add_argument("--seed", type=int, default=0, help="order of the training samples")
    inet.add_argument("--splits", default="train,val")
    mad.add_argument("--visual", default="CLIP_B32_frames_features_5fps.h5")
    mad.add_argument("--audio", default="openl3_audio_features_5hz.h5")
    mad.add_argument("--annotations", default="mad-v2-ad-named.csv")
    mad.add_argument("--val-movies", default="3034_IDES_OF_MARCH,3074_THE_ROOMMATE")
    mad.add_argument("--test-movies", default="test_movies.txt", help="a file or a comma list")
    mad.add_argument("--tokens", type=int, default=25, help="tokens per modality")
    mad.add_argument("--fps", type=float, default=5.0)
    args = parser.parse_args(argv)

    start = time.time()
    if args.dataset == "imagenet":
        from tasks.imagenet.shards import convert_image_folder

        written = convert_image_folder(
            args.root, args.out, tuple(args.splits.split(",")), args.samples_per_shard, args.seed
        )
    else:
        from tasks.mad_ad.shards import convert_mad

        test = args.test_movies
        written = convert_mad(
            args.out,
            root=args.root,
            visual_features=args.visual,
            audio_features=args.audio,
            annotations=args.annotations,
            val_movies=[m for m in args.val_movies.split(",") if m],
            test_movies=test if test.endswith(".txt") else [m for m in test.split(",") if m],
            tokens_per_modality=args.tokens,
            fps=args.fps,
            samples_per_shard=args.samples_per_shard,
            seed=args.seed,
        )
    from tasks.common.runtime.shards import ShardIndex

    for split, path in written.items():
        index = ShardIndex.load(path)
        print(f"{split:6s} {index.num_samples:8d} samples in {len(index.urls):5d} shards -> {path}")
    print(f"{time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
