"""STAMP depth x fusion sweep (paper Fig. S4): a metric against depth, one line per fusion op.

    python train.py -m experiment=qvhighlights_s4          # depths 2..64 x mul, add
    python scripts/plot_depth_sweep.py outputs/qvhighlights/multiruns/<date> [--metric KEY]

Seeds are averaged (mean ± std error bars); runs with mask=none in the given directories are
drawn as the full-attention line; for the S4 table the paper's points (paper/results.yaml) are
marked. The metric defaults to the S4 column (val/MR-full-mAP) for S4 runs, else to the runs'
monitor metric. Writes depth_sweep.png to --out (default: the first directory) and, with
--wandb, logs it to an offline W&B run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plot_sweep import run_dirs_parser  # noqa: E402  (scripts/: the shared command line)

from tasks.common.reporting.plots import log_images_to_wandb, plot_depth_sweep  # noqa: E402
from tasks.common.reporting.tables import load_paper  # noqa: E402
from tasks.common.runtime.results import load_results  # noqa: E402


def default_metric(records: list[dict]) -> str:
    spec = load_paper().get("S4")
    if spec and any(r.get("table") == "S4" for r in records):
        return f"{spec.splits[0]}/{spec.columns[0].metric}"
    for r in records:
        metric = ((r.get("config") or {}).get("monitor") or {}).get("metric")
        if metric:
            return metric
    raise ValueError("no monitor metric in the runs' configs: pass --metric")


def paper_points(records: list[dict]) -> dict[tuple[int, str], float]:
    """The paper's S4 values, (depth, fusion) -> value, when the runs are the S4 sweep."""
    spec = load_paper().get("S4")
    if spec is None or not any(r.get("table") == "S4" for r in records):
        return {}
    points = {}
    for row in spec.rows:
        match = re.fullmatch(r"depth(\d+)-(\w+)", row.id)
        value = row.paper.get(spec.columns[0].name)
        if match and value is not None:
            points[(int(match.group(1)), match.group(2))] = value[0]
    return points


def main(argv: list[str] | None = None) -> int:
    parser = run_dirs_parser(__doc__)
    parser.add_argument("--metric", default="", help="metric key, e.g. val/MR-full-mAP")
    parser.add_argument("--out", type=Path, help="default: the first run directory")
    parser.add_argument("--wandb", action="store_true", help="also log the PNG to W&B")
    args = parser.parse_args(argv)

    records = load_results(args.run_dirs)
    if not records:
        parser.error(f"no results.json under {' '.join(map(str, args.run_dirs))}")
    metric = args.metric or default_metric(records)
    out = args.out or args.run_dirs[0]
    path = plot_depth_sweep(records, metric, out / "depth_sweep.png", paper_points(records))
    print(f"depth_sweep: {path}")
    if args.wandb:
        log_images_to_wandb({"depth_sweep": path}, out, name=f"depth-sweep-{out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
