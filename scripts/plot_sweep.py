"""A metric against one swept setting, one line per variant (mean ± std over seeds), and its table.

    python train.py -m experiment=demo_positions                  # points x variants x seeds
    python scripts/plot_sweep.py outputs/demo/multiruns/<time> --x point --out positions.png
    python scripts/plot_sweep.py <dirs> --x data.num_train --line variant --metric val/acc
    python scripts/plot_sweep.py <dirs> --x epoch --metric val/MR-full-mAP   # learning curves

Reads every finished results.json under the given run / sweep directories (runs of several
sweeps may be mixed: the shared default point of issue 29's demo sweeps is run once), groups the
runs by the resolved config value at ``--x`` (a dotted path into the run's config, list indices
as numbers: ``data.visual_len.1``; ``point`` for the named points of an experiment file) and by
the value at ``--line`` (default ``variant``), and draws mean ± std (sample std over seeds) per
group. Numeric x values are plotted on a numeric axis, others as categories in the order of
``--order`` (default: sorted, ``default`` first). ``--x epoch`` draws learning curves instead:
each run's validations from its ``csv/metrics.csv`` (``logger=csv``), the epochs before
``trainer.max_epochs`` (the row at ``max_epochs`` is the final evaluation of the kept
checkpoint, not a training epoch). Writes the PNG, <out>.json (the plotted numbers)
and <out>.md (a markdown table: one row per line, one column per x value) and prints the table.
The papers' figures have their own scripts: plot_depth_sweep.py adds the paper's points,
plot_sparsity_sweep.py draws one line per metric (with this script's ``plot``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.reporting.tables import Stat  # noqa: E402
from tasks.common.runtime.results import load_results  # noqa: E402


def config_value(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a run's resolved config (list indices as numbers);
    KeyError naming the run and the missing part when the config has no such entry."""
    node: Any = record.get("config") or {}
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"{record.get('run_dir')}: config has no {path!r} (stopped at {part!r})")
    return node


def sweep_stats(
    records: list[dict[str, Any]], x: str, line: str, metric: str
) -> dict[str, dict[Any, Stat]]:
    """line value -> x value -> Stat of ``metric`` over the finished runs (seeds)."""
    values: dict[str, dict[Any, list[float]]] = {}
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        if x == "epoch":
            points = validation_history(r, metric)
        else:
            value = (r.get("metrics") or {}).get(metric)
            points = [] if value is None else [(config_value(r, x), float(value))]
        by_x = values.setdefault(str(config_value(r, line)), {})
        for k, value in points:
            by_x.setdefault(k, []).append(value)
    return {name: {k: Stat.of(v) for k, v in by_x.items()} for name, by_x in values.items() if by_x}


def validation_history(record: dict[str, Any], metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of each validation of ``metric`` in the run's ``csv/metrics.csv``, the
    epochs before ``trainer.max_epochs`` only (see the module docstring)."""
    import pandas as pd

    path = Path(record["results_file"]).parent / "csv" / "metrics.csv"
    if not path.is_file():
        raise KeyError(f"{path.parent.parent}: no csv/metrics.csv (--x epoch needs logger=csv)")
    rows = pd.read_csv(path)
    if metric not in rows:
        return []
    rows = rows.dropna(subset=[metric])
    rows = rows[rows["epoch"] < config_value(record, "trainer.max_epochs")]
    return [(int(e), float(v)) for e, v in zip(rows["epoch"], rows[metric], strict=True)]


def x_order(stats: dict[str, dict[Any, Stat]], order: list[str] | None) -> list[Any]:
    """The x values to plot: numbers sorted; names in ``order``, else sorted with default first."""
    xs = {k for by_x in stats.values() for k in by_x}
    if all(isinstance(k, int | float) and not isinstance(k, bool) for k in xs):
        return sorted(xs)
    if order:
        missing = xs - set(order)
        if missing:
            raise ValueError(f"--order lacks the swept values {sorted(map(str, missing))}")
        return [k for k in order if k in xs]
    return sorted(xs, key=lambda k: (str(k) != "default", str(k)))


def to_markdown(stats: dict[str, dict[Any, Stat]], xs: list[Any], x: str, metric: str) -> str:
    header = f"| {metric} by `{x}` | " + " | ".join(str(k) for k in xs) + " |"
    lines = [header, "|---" * (len(xs) + 1) + "|"]
    for name in sorted(stats):
        cells = []
        for k in xs:
            s = stats[name].get(k)
            if s is None:
                cells.append("—")
            elif s.std is None:  # one run: no spread to show
                cells.append(f"{s.mean:.3f} (1)")
            else:
                cells.append(f"{s.mean:.3f} ± {s.std:.3f} ({s.n})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    stats: dict[str, dict[Any, Stat]],
    xs: list[Any],
    path: Path,
    xlabel: str,
    metric: str,
    title: str,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = all(isinstance(k, int | float) and not isinstance(k, bool) for k in xs)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    names = sorted(stats)
    for i, name in enumerate(names):
        keys = [k for k in xs if stats[name].get(k) is not None]
        # categories: a small horizontal offset per line so the error bars do not overlap
        pos = keys if numeric else [xs.index(k) + 0.06 * (i - (len(names) - 1) / 2) for k in keys]
        ax.errorbar(
            pos,
            [stats[name][k].mean for k in keys],
            yerr=[stats[name][k].std or 0.0 for k in keys],
            marker="o",
            capsize=3,
            linestyle="--" if name == "none" else "-",
            label="full attention" if name == "none" else name,
        )
    if numeric and len(xs) <= 12:  # a tick per swept value; learning curves: matplotlib's
        ax.set_xticks(xs, [str(k) for k in xs])
    elif not numeric:
        ax.set_xticks(range(len(xs)), [str(k) for k in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_dirs_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a script over run / sweep directories: ``doc``'s first line as the
    description, the rest as the epilog, and the ``run_dirs`` positional."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(doc.splitlines()[1:]),
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = run_dirs_parser(__doc__)
    parser.add_argument("--x", required=True, help="dotted config path of the swept setting")
    parser.add_argument("--line", default="variant", help="config path naming a line")
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--order", default="", help="comma list: the order of categorical x")
    parser.add_argument("--xlabel", default="", help="default: --x")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, help="the PNG (default: <first dir>/sweep.png)")
    args = parser.parse_args(argv)

    records = load_results(args.run_dirs)
    try:
        stats = sweep_stats(records, args.x, args.line, args.metric)
    except KeyError as err:
        parser.error(err.args[0])
    if not stats:
        parser.error(f"no finished run with {args.metric} under the given directories")
    try:
        xs = x_order(stats, args.order.split(",") if args.order else None)
    except ValueError as err:
        parser.error(str(err))
    out = args.out or args.run_dirs[0] / "sweep.png"
    plot(
        stats,
        xs,
        out,
        args.xlabel or args.x,
        args.metric,
        args.title or f"{args.metric} vs {args.x}",
    )
    table = to_markdown(stats, xs, args.x, args.metric)
    out.with_suffix(".md").write_text(table + "\n")
    summary = {
        name: [
            {"x": k, "mean": s.mean, "std": s.std, "n": s.n}
            for k in xs
            if (s := by_x.get(k)) is not None
        ]
        for name, by_x in stats.items()
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(f"sweep plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
