"""A sweep's tables in W&B, beside the paper's numbers.

At the end of a multirun (``MultirunSummary``) one more W&B run is made in the sweep's group
(``job_type`` sweep-summary): it logs

* ``sweep/summary``: one row per job (settings, status, mask parameters, final metrics), the
  table printed at the end of the sweep;
* ``tables/<id>``: each paper table the jobs fill (``tasks.common.reporting.tables.make_tables``):
  one row
  per configuration, for every column the measured mean, its std over seeds, the run count and
  the paper's number (``paper/results.yaml``) side by side, plus the gain row where the paper
  has one; untagged sweeps (the demo) get their own table without paper columns;
* ``tables/markdown``: the same tables as make_tables.py prints them.

Per run, the curves and images come from the callbacks: ``mask/<layer>/<stat>`` (MaskDiagnostics,
always on) and ``val/mask`` heatmaps (``callbacks=mask_plot``).
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

from tasks.common.reporting.wandb_runs import SUMMARY_JOB, wait_until_written

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["run", "mask", "fusion", "depth", "attention", "seed", "status", "mask params"]


def wandb_logger_config(config: Any) -> dict[str, Any] | None:
    """The W&B logger's settings of a composed config (None when W&B is not among the loggers).
    Only plain keys are read: ``save_dir`` points into a job's run directory."""
    for logger_cfg in (config.get("logger") or {}).values():
        if logger_cfg is not None and "Wandb" in str(logger_cfg.get("_target_", "")):
            return {
                key: logger_cfg.get(key)
                for key in ("project", "entity", "offline", "tags")
                if key in logger_cfg
            }
    return None


def summary_table_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The end-of-sweep table (one row per job) as columns and rows of plain values."""
    metrics = sorted(
        {
            k
            for r in records
            for k in (r.get("metrics") or {})
            if k.startswith(("val/", "test/")) and "aux_loss" not in k
        }
    )
    rows = []
    for r in records:
        rows.append(
            [
                Path(str(r.get("run_dir", ""))).name,
                r.get("mask"),
                r.get("fusion"),
                r.get("depth"),
                r.get("attention"),
                r.get("seed"),
                r.get("status"),
                (r.get("params") or {}).get("params/mask"),
                *[(r.get("metrics") or {}).get(k) for k in metrics],
                r.get("wall_time_s"),
            ]
        )
    return [*SUMMARY_COLUMNS, *metrics, "time (s)"], rows


def wide_rows(rendered: Any) -> tuple[list[str], list[list[Any]]]:
    """A rendered paper table as one row per configuration: measured mean, std and run count
    and the paper's value beside each column."""
    names = [c.name for c in rendered.spec.columns]
    has_paper = bool(rendered.spec.rows)
    columns = ["row", "config", "label"]
    for name in names:
        columns += [name, f"{name} std", f"{name} n"] + ([f"{name} (paper)"] if has_paper else [])
    by_config: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rendered.rows:
        entry = by_config.setdefault((row["row"], row["config"]), {"label": row["label"]})
        entry[row["column"]] = row
    out = []
    for (row_id, config), entry in by_config.items():
        values: list[Any] = [row_id, config, entry["label"]]
        for name in names:
            cell = entry.get(name) or {}
            values += [cell.get("mean"), cell.get("std"), cell.get("n")]
            if has_paper:
                values.append(cell.get("paper"))
        out.append(values)
    return columns, out


def log_sweep_tables(
    records: list[dict[str, Any]],
    sweep_dir: str | Path,
    settings: dict[str, Any] | None = None,
    paper_file: str | Path | None = None,
) -> Path | None:
    """Log a sweep's summary and paper tables as ``wandb.Table`` in a sweep-summary run (in the
    sweep's group); returns the run's local folder."""
    import wandb

    from tasks.common.reporting.tables import PAPER_FILE, load_paper, make_tables, to_markdown

    settings = settings or {}
    sweep_dir = Path(sweep_dir)
    if settings.get("offline", True):
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    rendered = make_tables(records, load_paper(paper_file or PAPER_FILE))
    run = wandb.init(
        project=settings.get("project") or "stamp",
        entity=settings.get("entity"),
        group=sweep_dir.name,
        job_type=SUMMARY_JOB,
        name=f"{sweep_dir.name}-tables",
        tags=list(settings.get("tags") or []),
        dir=str(sweep_dir),
        mode="offline" if settings.get("offline", True) else None,
        reinit="create_new",
    )
    try:
        columns, rows = summary_table_rows(records)
        payload: dict[str, Any] = {"sweep/summary": wandb.Table(columns=columns, data=rows)}
        for table in rendered:
            columns, rows = wide_rows(table)
            payload[f"tables/{table.spec.id}"] = wandb.Table(columns=columns, data=rows)
        payload["tables/markdown"] = wandb.Html(f"<pre>{html.escape(to_markdown(rendered))}</pre>")
        run.log(payload)
        folder = Path(run.dir).parent
    finally:
        run.finish()
    wait_until_written(folder)
    log.info("W&B sweep tables -> %s", folder)
    return folder
