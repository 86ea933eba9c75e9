"""Write synthetic QVHighlights features in the official layout for the given annotation files,
so the pipeline runs end to end without the real SlowFast / CLIP features.

    python scripts/make_qvhighlights_features.py --out data/qvhighlights_synthetic \
        --annotations data/qvhighlights/highlight_{train,val,test}_release.jsonl \
        --video-dims 64 32 --text-dim 32 --limit 512

Default dimensions are the real ones (SlowFast 2304 + CLIP 512, text 512): about 8 GB for the
whole dataset in float32; ``--dtype float16`` halves it. With other dimensions, pass them to
training as ``data.v_feat_dim=<sum of video dims> data.t_feat_dim=<text dim>``
(``experiment=qvhighlights_synthetic`` uses 64 + 32 and 32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.qvhighlights.synthetic import REAL_VIDEO_DIMS, write_synthetic_features  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", nargs="+", required=True, help="official jsonl files")
    parser.add_argument("--out", required=True, help="feature root to write")
    parser.add_argument("--video-types", nargs="+", default=list(REAL_VIDEO_DIMS))
    parser.add_argument("--video-dims", nargs="+", type=int, default=list(REAL_VIDEO_DIMS.values()))
    parser.add_argument("--text-dim", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="first N queries of each file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", type=float, default=2.0, help="strength of the query cue")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args(argv)
    if len(args.video_types) != len(args.video_dims):
        parser.error("--video-types and --video-dims need the same number of entries")
    summary = write_synthetic_features(
        args.annotations,
        args.out,
        dict(zip(args.video_types, args.video_dims, strict=True)),
        text_dim=args.text_dim,
        seed=args.seed,
        limit=args.limit,
        signal=args.signal,
        dtype=args.dtype,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
