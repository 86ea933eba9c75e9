"""Mask heatmaps and per-layer mask diagnostics of a run or checkpoint (Figs. S5 / S6 style).

    python scripts/plot_mask_stats.py RUN_DIR [--checkpoint best|last|none|FILE] [--out DIR]
    python scripts/plot_mask_stats.py RUN_DIR/checkpoints/last.ckpt

The model is rebuilt from the run's results.json config, the checkpoint loaded, and one batch of
the validation split run through it. Writes into --out (default: <run>/plots):
  mask_layers.png    one sample's M at the first, middle and last STAMP layer
  mask_stats.png     per layer: mean |M|, token dependence, negative share; attention entropy
                     with and without M; the generator's first-layer gradient norm (from the
                     run's results.json, last training step); for tasks whose batches label
                     their keys (key_relevance: the demo, QVHighlights, AVE) a second row: M by
                     key category, and the attention on relevant vs irrelevant keys with and
                     without M (per key, and as a share of each query's attention), printed
                     per layer too; these come from the validation forward (as in training)
  mask_stats.json    the numbers behind mask_stats.png
What the statistics mean: stamp/diagnostics.py and the README ("Does STAMP do anything?").
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp.diagnostics import MaskStatistics  # noqa: E402
from tasks.common.reporting.plots import (  # noqa: E402
    collect_run,
    load_run,
    modality_boundaries,
    plot_mask_grid,
    plot_mask_statistics,
)
from tasks.common.reporting.profiling import forward_fn  # noqa: E402
from tasks.common.runtime.mask_stats import batch_key_relevance, key_categories  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (results.json) or a checkpoint file in one")
    parser.add_argument("--checkpoint", default="best", help="best | last | none | FILE")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/plots)")
    parser.add_argument("--sample", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)

    run, checkpoint = Path(args.run), args.checkpoint
    if run.is_file():  # <run>/checkpoints/<file>.ckpt
        run, checkpoint = run.parent.parent, str(run)
    record, module, datamodule = load_run(run, checkpoint, args.batch_size)
    records, batch = collect_run(module, datamodule)
    if not any(r.get("mask") is not None for r in records):
        print(f"{run}: mask={record.get('mask')} has no STAMP mask to plot", file=sys.stderr)
        return 1
    stats = MaskStatistics(module)
    codes, categories = batch_key_relevance(batch), key_categories(datamodule)
    forward = forward_fn(module, batch)
    if codes is not None and categories is not None:
        # the forward the diagnostics callback records: validation's (QD-DETR's training
        # forward adds negative pairs, whose query is another clip's and not what the labels say)
        stats.set_key_relevance(codes, categories)
        forward = validation_forward(module, batch)
    stats.start()
    forward()
    stats.stop()
    trained = record.get("mask_stats") or {}  # the run's last validation: gradient norms
    summary = {}
    for name, row in stats.summary().items():
        layer = name.removeprefix("net.")
        row["grad_norm_first"] = (trained.get(layer) or {}).get("grad_norm_first")
        summary[layer] = row
    out = Path(args.out) if args.out else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    label = f"{record.get('mask')} (init {record.get('init')}, depth {record.get('depth')})"
    plot_mask_grid(
        records,
        out / "mask_layers.png",
        sample=args.sample,
        boundaries=modality_boundaries(module.net) if hasattr(module, "net") else None,
        title=f"{label}: sample {args.sample}",
    )
    plot_mask_statistics(summary, out / "mask_stats.png")
    (out / "mask_stats.json").write_text(json.dumps(summary, indent=2))
    for name in ("mask_layers.png", "mask_stats.png", "mask_stats.json"):
        print(out / name)
    for layer, row in summary.items():
        if row.get("M_relevant") is not None:
            print(relevance_line(layer, row))
    return 0


def validation_forward(module, batch) -> Callable[[], Any]:
    """A closure running the module's ``validation_step`` on ``batch`` (no gradients, no
    Trainer: its logging warnings are silenced)."""

    def run() -> Any:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module.validation_step(batch, 0)

    return run


def relevance_line(layer: str, row: dict) -> str:
    """One layer's relevance statistics in words."""

    def f(key: str) -> str:
        return "n/a" if row.get(key) is None else f"{row[key]:.3f}"

    return (
        f"{layer}: M on relevant / irrelevant keys {f('M_relevant')} / {f('M_irrelevant')}; "
        f"attention share on relevant keys {f('share_relevant')} with M, "
        f"{f('share_relevant_noM')} without"
    )


if __name__ == "__main__":
    raise SystemExit(main())
