"""AD quality against the sparsity of the multimodal encoder (paper Fig. 1(c)).

    python train.py -m experiment=mad_ad_fig1c trainer=gpu model.llm_path=<llama-7b-hf>
    python scripts/plot_sparsity_sweep.py outputs/mad_ad/multiruns/<date> [--metrics K1,K2]

Reads every results.json of table Fig1c under the given directories, groups the runs by
``model.encoder_sparsity`` (fraction of attention pairs removed in the AV encoder), averages
seeds (mean, std error bars) and draws one line per metric (default val/CIDEr, val/ROUGE_L) with
plot_sweep.py's plot. Writes sparsity_sweep.png and sparsity_sweep.json (the plotted numbers) to
--out (default: the first directory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plot_sweep import plot, run_dirs_parser  # noqa: E402  (scripts/: the shared plot)

from tasks.common.reporting.tables import Stat  # noqa: E402
from tasks.common.runtime.results import load_results  # noqa: E402


def sweep_points(records: list[dict], metrics: list[str]) -> dict[str, dict[float, list[float]]]:
    """metric -> sparsity -> values over seeds, from the ok runs of table Fig1c."""
    points: dict[str, dict[float, list[float]]] = {m: {} for m in metrics}
    for r in records:
        if r.get("table") != "Fig1c" or r.get("status") != "ok":
            continue
        sparsity = float(((r.get("config") or {}).get("model") or {}).get("encoder_sparsity", 0.0))
        for metric in metrics:
            value = (r.get("metrics") or {}).get(metric)
            if value is not None:
                points[metric].setdefault(sparsity, []).append(float(value))
    return points


def summarise(points: dict[str, dict[float, list[float]]]) -> dict[str, list[dict]]:
    return {
        metric: [
            {"sparsity": s, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for s, v in sorted(by_sparsity.items())
        ]
        for metric, by_sparsity in points.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = run_dirs_parser(__doc__)
    parser.add_argument("--metrics", default="val/CIDEr,val/ROUGE_L")
    parser.add_argument("--out", type=Path, help="default: the first run directory")
    args = parser.parse_args(argv)
    records = load_results(args.run_dirs)
    summary = summarise(sweep_points(records, args.metrics.split(",")))
    if not any(summary.values()):
        parser.error(f"no ok Fig1c runs with {args.metrics} under the given directories")
    out = args.out or args.run_dirs[0]
    # plot_sweep's plot, one line per metric; the std stays numpy's (ddof=0) as before
    stats = {
        m: {r["sparsity"]: Stat(r["mean"], r["std"], r["n"]) for r in rows}
        for m, rows in summary.items()
        if rows
    }
    xs = sorted({r["sparsity"] for rows in summary.values() for r in rows})
    path = plot(
        stats,
        xs,
        out / "sparsity_sweep.png",
        "encoder sparsity (fraction of attention pairs removed)",
        "score",
        "AD quality vs encoder sparsity (Fig. 1(c))",
    )
    (out / "sparsity_sweep.json").write_text(json.dumps(summary, indent=2))
    print(f"sparsity_sweep: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
