"""Paper tables from run directories: python scripts/make_tables.py outputs/... [--out DIR]

Reads every results.json (and profile.json from scripts/profile_compute.py) under the given
run / sweep directories, groups runs by paper table and configuration, aggregates seeds as
mean ± std (n) and prints each table beside the paper's numbers (paper/results.yaml), with the
split of every number and Table 8 (max gain per dataset) from the tables' gain rows. eval.py
records (kind: eval) get tables of their own after the training runs. Runs without a paper
table (the demo) get one table per experiment / task in the same format.

    --source acl,iclr,rebuttal   paper numbers of the ACL paper (default), the ICLR submission
                                 (LCAAM) and / or the rebuttal, one column each; `all` = every one
    --paper-tables               also every paper table without runs (no run dirs needed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.reporting.tables import (
    DEFAULT_SOURCE,
    PAPER_FILE,
    load_paper,
    load_records,
    load_sources,
    make_tables,
    table_id,
    to_csv,
    to_markdown,
)
from tasks.common.reporting.wandb_runs import load_wandb_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("run_dirs", nargs="*", help="run / sweep directories or results files")
    parser.add_argument(
        "--wandb",
        default="",
        help="also read W&B runs: offline run folders under a path, or entity/project (online)",
    )
    parser.add_argument("--out", type=Path, help="write tables.md and tables.csv here")
    parser.add_argument("--tables", default="", help="only these table ids, e.g. T1b,T2")
    parser.add_argument(
        "--metrics", default="", help="columns of untagged tables (default: every val/, test/)"
    )
    parser.add_argument("--paper", type=Path, default=PAPER_FILE, help="the paper's numbers")
    parser.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help="paper numbers shown: acl (default), iclr, rebuttal, a comma list, or all",
    )
    parser.add_argument(
        "--paper-tables", action="store_true", help="also print paper tables that have no runs"
    )
    args = parser.parse_args(argv)

    known = list(load_sources(args.paper)) or [DEFAULT_SOURCE]
    sources = known if args.source == "all" else [s for s in args.source.split(",") if s]
    unknown = [s for s in sources if s not in known]
    if unknown or not sources:
        parser.error(f"--source {args.source}: choose from {', '.join(known)} or all")
    missing = [d for d in args.run_dirs if not Path(d).exists()]
    if missing:
        parser.error(f"not found: {', '.join(missing)}")
    if not args.run_dirs and not args.wandb and not args.paper_tables:
        parser.error("give run directories, --wandb entity/project and / or --paper-tables")
    records = load_records(args.run_dirs)
    if args.wandb:
        records += load_wandb_runs(args.wandb)
    if not records and not args.paper_tables:
        print(f"no results.json under {' '.join(args.run_dirs)}", file=sys.stderr)
        return 1
    wanted = [t for t in args.tables.split(",") if t]
    rendered = make_tables(
        records,
        load_paper(args.paper),
        tables=wanted,
        metrics=[m for m in args.metrics.split(",") if m],
        sources=sources,
        paper_tables=args.paper_tables,
    )
    unmatched = [t for t in wanted if t not in {r.spec.id for r in rendered}]
    if unmatched:
        tags = sorted({table_id(r) for r in records})
        print(
            f"no runs matched --tables {','.join(unmatched)} under "
            f"{' '.join(map(str, args.run_dirs)) or '(no run directories)'}; the runs there belong "
            f"to: {', '.join(tags) or 'nothing'} (results.json 'table', else 'experiment', else "
            "'task'; --paper-tables prints a paper table without runs)",
            file=sys.stderr,
        )
        if not rendered:
            return 1
    markdown = to_markdown(rendered)
    print(markdown)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tables.md").write_text(markdown)
        (args.out / "tables.csv").write_text(to_csv(rendered))
        print(f"-> {args.out / 'tables.md'}, {args.out / 'tables.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
