"""Write synthetic MAD-format files (feature h5 + MAD-v2 AD csv) for tests and trying the pipeline.

    python scripts/make_mad_data.py --out data/mad_synthetic
    python train.py task=mad_ad data.root=data/mad_synthetic model.llm_path=data/tiny_llama ...

Layout written (the names the task config expects under data.root):
    CLIP_B32_frames_features_5fps.h5 movie id -> (T, 512) float32, 5 fps (MAD's current name)
    openl3_audio_features_5hz.h5     movie id -> (T, 512) float32, 5 Hz
    mad-v2-ad-named.csv              movie,start,end,text,movie_duration   (names)
    mad-v2-ad-unnamed.csv            the same ADs with pronouns
    test_movies.txt                  test movie ids; the two validation movies are the paper's
    videos/<movie>.mp4               with --media: the validation movies' video + sound (panel (a))

Like the released MAD-v2 csv files, the csv files carry rows that AutoAD-II adjusts or skips
(3 negative starts, 2 empty texts, 3 ADs outside the movie's features, all in the first training
movie); training reports them at start-up. --clean writes the csv files without them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.mad_ad.synthetic import write_synthetic_mad  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory (data.root)")
    parser.add_argument("--train-movies", type=int, default=4)
    parser.add_argument("--test-movies", type=int, default=1)
    parser.add_argument("--ads-per-movie", type=int, default=20)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--media",
        action="store_true",
        help="also videos/<movie>.mp4 of the two validation movies (5 fps, with sound): the raw "
        "media of plot_attention.py's panel (a)",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="no negative starts / empty texts / out-of-span rows in the csv files",
    )
    args = parser.parse_args()
    paths = write_synthetic_mad(
        args.out,
        args.train_movies,
        args.test_movies,
        args.ads_per_movie,
        dim=args.dim,
        seed=args.seed,
        quirks=not args.clean,
        media=args.media,
    )
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")


if __name__ == "__main__":
    main()
