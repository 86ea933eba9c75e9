"""Attention-weight histograms and mask heatmaps of trained runs (paper Figs. S5-S9).

    python scripts/plot_attention.py RUN_DIR_STAMP RUN_DIR_FULL [--out DIR] [--layers 0,7,-1]

For each run directory (a results.json written by train.py) the model is rebuilt from its
config, its best checkpoint loaded, and one batch of the validation split run through it with
stamp.record_attention. Writes:
  attention_hist.png         Figs. S5 / S7: first, middle, last layer; one histogram per run
  mask_<run>.png             Figs. S6 / S8 / S9: a sample's mask with the modality boundaries
into --out (default: <first run>/plots) and, with --wandb, to an offline W&B run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.plots import (  # noqa: E402
    collect_run,
    load_run,
    log_images_to_wandb,
    modality_boundaries,
    plot_attention_histograms,
    plot_run_mask,
)

LABELS = {"none": "full attention", "multilayer": "multi-layer STAMP", "global": "STAMP"}


def _ints(text: str) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="default: <first run dir>/plots")
    parser.add_argument(
        "--layers",
        default="",
        help="attention calls for the histograms "
        "(default: first, middle, last; negative counts from the end)",
    )
    parser.add_argument(
        "--mask-layer",
        type=int,
        default=0,
        help="masked call for the heatmap (0 = first, as in Fig. S6)",
    )
    parser.add_argument("--sample", type=int, default=0, help="sample of the batch to show")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples in the batch (Fig. S5: 64)"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--checkpoint", default="best", help="best, last, none or a path")
    parser.add_argument(
        "--boundaries",
        default="",
        help="token indices where a modality starts (default: the model's modality_boundaries())",
    )
    parser.add_argument("--wandb", action="store_true", help="also log the PNGs to W&B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = args.out or args.run_dirs[0] / "plots"
    runs, images, records_by_run = {}, {}, {}
    for run_dir in args.run_dirs:
        record, module, datamodule = load_run(run_dir, args.checkpoint, args.batch_size)
        records, _ = collect_run(module, datamodule, args.split)
        label = f"{LABELS.get(record['mask'], record['mask'])} ({run_dir.name})"
        runs[label] = records
        records_by_run[run_dir] = (record, module, records, label)
    images["attention_hist"] = plot_attention_histograms(
        runs, out / "attention_hist.png", _ints(args.layers)
    )
    for run_dir, (_, module, records, label) in records_by_run.items():
        boundaries = _ints(args.boundaries) or modality_boundaries(module.net)
        path = plot_run_mask(
            records,
            out / f"mask_{run_dir.name}.png",
            args.sample,
            args.mask_layer,
            boundaries,
            label,
        )
        if path is not None:
            images[f"mask_{run_dir.name}"] = path
    for key, path in images.items():
        print(f"{key}: {path}")
    if args.wandb:
        log_images_to_wandb(images, out, name=f"plots-{args.run_dirs[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
