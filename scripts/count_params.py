r"""Table 7 of the MA-AVT supplement without weights: total / trainable parameters of every row,
counted on the meta device, beside the paper's.

    python scripts/count_params.py experiment=ave_t7
    python scripts/count_params.py experiment=ave_t7 --json counts.json   # or --json alone: stdout

Every other argument is a Hydra override of configs/train.yaml; each row adds
``model=<name> model.vit=<size>``. Counting follows the supplement (and
``tasks.ave.models.AVEModel.parameter_report``): the contrastive projectors, discarded at test
time, are not counted; the frozen ViT (with its 21843-class in21k head, as the official code
builds it) is in ``total``. A row more than 3 % from the paper carries a note (docs/ave.md).
With ``mask=multilayer|global`` the STAMP generators are listed on their own (``stamp``), the
other columns stay the paper's model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tasks.common.runtime.compose import compose_config  # noqa: E402

TOLERANCE = 0.03


@dataclass(frozen=True)
class PaperRow:
    """One row of the supplement's Table 7 (parameters in millions)."""

    label: str
    model: str
    vit: str
    total: float
    trainable: float
    note: str = ""


LAVISH_SMALL_VIT = (
    "the official LAVISH configuration (Adapter_downsample 8, 2 latent tokens, 2 conv groups, "
    "BN, gates, 2 LayerNorms, 512-wide head) gives the paper's ViT-B / ViT-L counts within 1.1 %"
    " but {ours} M here for the paper's {paper} M; no single setting of the adapter flags fits "
    "all four backbones within 3 % (best 7 %), so the official one is kept (docs/ave.md)"
)
TABLE7 = (
    PaperRow(
        "LAVISH ViT-T",
        "lavish",
        "tiny",
        10.39,
        0.65,
        LAVISH_SMALL_VIT.format(ours="0.51", paper="0.65"),
    ),
    PaperRow("MA-AVT ViT-T", "ma_avt", "tiny", 10.20, 0.46),
    PaperRow(
        "LAVISH ViT-S",
        "lavish",
        "small",
        31.72,
        1.65,
        LAVISH_SMALL_VIT.format(ours="1.45", paper="1.65"),
    ),
    PaperRow("MA-AVT ViT-S", "ma_avt", "small", 31.88, 1.81),
    PaperRow("LAVISH ViT-B", "lavish", "base", 107.2, 4.7),
    PaperRow(
        "LAVISH* ViT-B",
        "lavish_large",
        "base",
        110.4,
        7.3,
        "LAVISH* has no public code: rebuilt as a deeper adapter bottleneck sized to 7.3 M",
    ),
    PaperRow("MA-AVT ViT-B", "ma_avt", "base", 110.2, 7.1),
    PaperRow("LAVISH ViT-L", "lavish", "large", 340.1, 14.5),
    PaperRow("MA-AVT ViT-L", "ma_avt", "large", 338.4, 12.6),
)


def count_row(row: PaperRow, overrides: list[str], workdir: Path) -> dict:
    """Compose the row's config, build its model on the meta device and count."""
    from tasks.ave.models import build_model

    cfg = compose_config([*overrides, f"model={row.model}", f"model.vit={row.vit}"], workdir)
    node = OmegaConf.to_container(cfg.model, resolve=True)
    node.pop("_target_", None)
    node.update(vit_checkpoint=None, require_weights=False)  # counting needs no weights
    mask = OmegaConf.to_container(cfg.mask, resolve=True)
    with torch.device("meta"):
        model = build_model(node, mask_cfg=mask)
    report = model.parameter_report()
    # the paper's model: STAMP generators (mask=multilayer|global) are reported on their own
    total = (report["total"] - report["stamp"]) / 1e6
    trainable = (report["trainable"] - report["stamp"]) / 1e6
    within = all(
        abs(ours - paper) <= TOLERANCE * paper
        for ours, paper in ((total, row.total), (trainable, row.trainable))
    )
    return {
        "row": row.label,
        "model": row.model,
        "vit": row.vit,
        "total": round(total, 3),
        "trainable": round(trainable, 3),
        "paper_total": row.total,
        "paper_trainable": row.trainable,
        "within_3pct": within,
        "stamp": round(report["stamp"] / 1e6, 3),
        "projector": round(report["projector"] / 1e6, 3),
        "note": row.note if not within or row.note else "",
    }


def render(rows: list[dict]) -> str:
    """A plain-text table of the counts beside the paper's (millions of parameters)."""
    head = (
        f"{'row':<14} {'total':>8} {'paper':>7} {'diff':>7}  {'train':>7} {'paper':>6} {'diff':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        dt = 100 * (r["total"] - r["paper_total"]) / r["paper_total"]
        dr = 100 * (r["trainable"] - r["paper_trainable"]) / r["paper_trainable"]
        lines.append(
            f"{r['row']:<14} {r['total']:>8.2f} {r['paper_total']:>7.2f} {dt:>+6.1f}%  "
            f"{r['trainable']:>7.2f} {r['paper_trainable']:>6.2f} {dr:>+6.1f}%"
            + ("" if r["within_3pct"] else "  *")
        )
    stamped = [r for r in rows if r["stamp"]]
    if stamped:
        lines += ["", "STAMP generators (trainable; add them to total and trainable above):"]
        lines += [f"  {r['row']}: {r['stamp']:.2f} M" for r in stamped]
    notes = [f"  {r['row']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "* more than 3 % from the paper; notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--json", nargs="?", const="-", help="write the rows as a JSON list (to PATH or stdout)"
    )
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-") or "=" not in o]
    if unknown:
        parser.error(f"not a Hydra override (key=value): {' '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [count_row(row, overrides, Path(tmp)) for row in TABLE7]
    if args.json == "-":
        print(json.dumps(rows, indent=2))
        return 0
    print(render(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
