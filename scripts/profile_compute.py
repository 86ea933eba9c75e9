r"""Compute profile of a task's model (paper Tables 4 / 7): params, FLOPs, MACs, latency.

    python scripts/profile_compute.py task=demo mask=none,global,multilayer
    python scripts/profile_compute.py task=demo --masks none,multilayer --backends eager,flex \
        mask.fusion=add
    python scripts/profile_compute.py experiment=mad_ad_t4 --device cuda   # Table 4

Every other argument is a Hydra override of configs/train.yaml (the same config path as
train.py); comma lists are swept (their product); without one, an experiment file's own sweep
(``hydra.sweeper.params``) is run, and its ``table`` tag labels the rows (``--table`` wins).
The model is built untrained from the config and run on one batch of the task's datamodule;
see tasks/common/reporting/profiling.py for what is counted. Writes profile.json / profile.md /
profile.csv to --out; make_tables.py reads profile.json too (Tables 4 and 7 beside the paper's
numbers with --table T4 / T7).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tasks.common.reporting.profiling import profile_config, split_overrides  # noqa: E402
from tasks.common.reporting.tables import generic_spec, load_paper, render, to_csv  # noqa: E402
from tasks.common.runtime.compose import compose_config, without_hydra  # noqa: E402

log = logging.getLogger("profile_compute")


def experiment_sweep(overrides: list[str], out: Path | None) -> list[str]:
    """The ``hydra.sweeper.params`` of the composed config (an experiment file's sweep) as
    overrides, less the keys the command line sets."""
    cfg = compose_config(overrides, out)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    given = {o.partition("=")[0] for o in overrides}
    return [f"{key}={value}" for key, value in params.items() if key not in given]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--masks", default="", help="comma list of mask= choices")
    parser.add_argument("--backends", default="", help="comma list of attention= choices")
    parser.add_argument("--table", default="", help="paper table the rows fill (T4, T7)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--split", default="train", help="which dataloader gives the batch")
    parser.add_argument("--out", type=Path, help="output directory (default under outputs/)")
    args, overrides = parser.parse_known_args(argv)
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    unknown = [o for o in overrides if o.startswith("-") or "=" not in o]
    if unknown:
        parser.error(f"not a Hydra override (key=value): {' '.join(unknown)}")
    if args.masks:
        overrides.append(f"mask={args.masks}")
    if args.backends:
        overrides.append(f"attention={args.backends}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    runs = split_overrides(overrides)
    if len(runs) == 1:  # nothing swept here: an experiment's own sweep (e.g. mad_ad_t4's masks)
        runs = split_overrides(overrides + experiment_sweep(overrides, args.out))
    records = []
    out = args.out
    for run in runs:
        cfg = without_hydra(compose_config(run, out))
        if out is None:
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            out = Path(cfg.paths.log_dir) / str(cfg.task_name) / "profile" / stamp
        table = args.table or cfg.get("table") or f"{cfg.task_name}-compute"
        row = str(cfg.attention.backend) if table == "T7" else str(cfg.mask.type)
        log.info("profiling %s", " ".join(run) or "(defaults)")
        try:
            record = profile_config(cfg, args.device, args.warmup, args.repeats, args.split)
        except Exception as error:  # noqa: BLE001 - one failed configuration, the others go on
            log.error("%s: %s: %s", " ".join(run), type(error).__name__, error)
            record = {
                "kind": "profile",
                "status": "failed",
                "task": cfg.task_name,
                "mask": str(cfg.mask.type),
                "attention": str(cfg.attention.backend),
                "error": f"{type(error).__name__}: {error}",
                "run_dir": " ".join(run),
            }
        record.update(
            table=table, row=row, overrides=run, run_dir=record.get("run_dir") or " ".join(run)
        )
        records.append(record)

    paper = load_paper()
    spec = paper.get(table) or generic_spec(
        table, [r for r in records if r["status"] == "ok"] or records
    )
    rendered = render(spec, records)
    ok = [r for r in records if r["status"] == "ok"]
    header = []
    if ok:
        header.append(
            f"device: {ok[0]['device']}; batch of {ok[0]['batch_size']} ({ok[0]['split']} split); "
            f"latency: median of {args.repeats} after {args.warmup} warm-up; MACs = FLOPs / 2; "
            "FLOPs count matrix products only (torch.utils.flop_counter, SDPA under MATH)"
        )
    notes = sorted({r.get("flops_note") for r in ok if r.get("flops_note")})
    header += [f"note: {n}" for n in notes]
    for r in records:
        if r["status"] != "ok":
            header.append(f"failed: {' '.join(r['overrides'])}: {r['error']}")
    markdown = rendered.markdown + "\n\n" + "\n".join(header) + "\n"
    print(markdown)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(records, indent=2, default=str))
    (out / "profile.md").write_text(markdown)
    (out / "profile.csv").write_text(to_csv([rendered]))
    print(f"-> {out}/profile.json, profile.md, profile.csv")
    return 0 if len(ok) == len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
