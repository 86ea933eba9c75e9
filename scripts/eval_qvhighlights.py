"""Evaluate a QVHighlights submission file (official jsonl format) against a GT file.

    python scripts/eval_qvhighlights.py --submission PRED.jsonl --gt GT.jsonl --save METRICS.json

Prints the brief metrics as JSON (the official script's key names) and saves all metrics.
Results equal the official ``standalone_eval/eval.py`` (see ``tasks/qvhighlights/metrics.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.runtime.results import atomic_write_text  # noqa: E402
from tasks.qvhighlights.metrics import check_submission, eval_submission, load_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submission", required=True, help="predictions, one JSON object a line")
    parser.add_argument(
        "--gt", required=True, help="ground truth, e.g. highlight_val_release.jsonl"
    )
    parser.add_argument("--save", default=None, help="where to write all metrics as JSON")
    args = parser.parse_args(argv)
    try:
        submission, gt = load_jsonl(args.submission), load_jsonl(args.gt)
        for warning in check_submission(submission, gt):
            print(f"warning: {warning}", file=sys.stderr)
        start = time.perf_counter()
        metrics = eval_submission(submission, gt, check=False)
        elapsed = time.perf_counter() - start
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics["brief"], indent=4))
    print(f"evaluated {len(submission)} queries in {elapsed:.3f} s", file=sys.stderr)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.save, json.dumps(metrics, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
