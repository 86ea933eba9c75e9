"""The mask diagnostics of a sweep, seeds aggregated: mean ± std per row and STAMP layer.

    python scripts/summarize_mask_stats.py <sweep dir> [<sweep dir> ...] [--layers first,last]
    python scripts/summarize_mask_stats.py <sweep dir> --relevance   # relevant vs irrelevant keys

Reads ``mask_stats`` from every results.json (written by tasks/common/runtime/mask_stats.py at
the last validation) and prints one markdown table: per row (the run's ``row`` tag) and layer,
mean ± std over the runs of token dependence, mean |M|, negative share, attention entropy with
and without M, and the generator's first-layer gradient norm; with ``--relevance``, M and the
attention share on relevant vs irrelevant keys with and without M (tasks that label their keys).
What they mean: docs/stamp_diagnostics.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.runtime.results import load_results  # noqa: E402

COLUMNS = ("token_dependence", "mean_abs", "neg_share", "entropy", "entropy_unmasked")
RELEVANCE_COLUMNS = (
    "M_relevant",
    "M_irrelevant",
    "share_relevant",
    "share_relevant_noM",
    "attn_relevant",
    "attn_relevant_noM",
    "attn_irrelevant",
    "attn_irrelevant_noM",
)


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    fmt = ".2e" if 0 < abs(mean) < 1e-3 else ".3f"
    return f"{mean:{fmt}} ± {std:{fmt}}"


def summarize(
    records: list[dict], layers: str = "all", columns: tuple[str, ...] | None = None
) -> str:
    """One markdown table: per row and layer, mean ± std over the runs of ``columns`` (default:
    ``COLUMNS`` and the gradient norm)."""
    columns = columns or (*COLUMNS, "grad_norm_first")
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    order: list[tuple[str, str]] = []
    runs: dict[str, int] = defaultdict(int)
    for record in records:
        stats = record.get("mask_stats") or {}
        if record.get("status") != "ok" or not stats:
            continue
        row = str(record.get("row") or record.get("mask"))
        runs[row] += 1
        names = list(stats)
        if layers == "first,last":
            names = sorted({names[0], names[-1]}, key=names.index)
        for name in names:
            key = (row, name)
            if key not in cells:
                order.append(key)
            for stat in columns:
                value = stats[name].get(stat)
                cells[key][stat] += [] if value is None else [float(value)]
    header = ["row", "layer", "runs", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, name in order:
        values = cells[(row, name)]
        if not any(values.values()):  # a layer without these statistics (cross-attention)
            continue
        lines.append(
            "| "
            + " | ".join([row, name, str(runs[row])] + [_cell(values[c]) for c in columns])
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--layers", choices=("all", "first,last"), default="all")
    parser.add_argument(
        "--relevance", action="store_true", help="M and attention on relevant vs irrelevant keys"
    )
    args = parser.parse_args(argv)
    records = load_results(args.run_dirs)
    if not any(r.get("mask_stats") for r in records):
        print("no results.json with mask_stats under the given directories", file=sys.stderr)
        return 1
    print(summarize(records, args.layers, RELEVANCE_COLUMNS if args.relevance else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
