"""Hydra callbacks: a summary table at the end of a multirun (also under the submitit launchers:
``on_multirun_end`` runs in the launching process once every job has returned)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tasks.common.results import format_summary, load_results

log = logging.getLogger(__name__)


class MultirunSummary(Callback):
    """Print the jobs' results side by side, write ``summary.md`` / ``summary.json`` into the
    sweep directory, log them with the paper tables to W&B when W&B is a logger
    (``tasks.common.wandb_dashboard``), and exit non-zero when a job failed (after every job has
    run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = load_results([sweep_dir])
        if not records:
            return
        table = format_summary(records)
        (sweep_dir / "summary.md").write_text(table + "\n")
        (sweep_dir / "summary.json").write_text(json.dumps(records, indent=2, default=str))
        print(f"\nResults of {len(records)} jobs in {sweep_dir}:\n\n{table}\n", flush=True)
        log_to_wandb(config, records, sweep_dir)
        failed = [r for r in records if r.get("status") != "ok"]
        if failed:
            for r in failed:
                log.error("FAILED %s: %s", r.get("run_dir"), r.get("error"))
            sys.exit(1)


def log_to_wandb(config: DictConfig, records: list[dict[str, Any]], sweep_dir: Path) -> None:
    """The sweep's tables as a W&B run of the sweep's group; a W&B problem never fails the
    sweep (the tables are in summary.md either way)."""
    from tasks.common.wandb_dashboard import log_sweep_tables, wandb_logger_config

    settings = wandb_logger_config(config)
    if settings is None:
        return
    try:
        log_sweep_tables(records, sweep_dir, settings)
    except Exception as error:  # noqa: BLE001 - reported, the summary files are written
        log.warning("could not log the sweep tables to W&B: %s: %s", type(error).__name__, error)
