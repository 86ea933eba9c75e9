"""Hydra callbacks: a summary table at the end of a multirun."""

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
    sweep directory, and exit non-zero when a job failed (after every job has run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = load_results([sweep_dir])
        if not records:
            return
        table = format_summary(records)
        (sweep_dir / "summary.md").write_text(table + "\n")
        (sweep_dir / "summary.json").write_text(json.dumps(records, indent=2, default=str))
        print(f"\nResults of {len(records)} jobs in {sweep_dir}:\n\n{table}\n", flush=True)
        failed = [r for r in records if r.get("status") != "ok"]
        if failed:
            for r in failed:
                log.error("FAILED %s: %s", r.get("run_dir"), r.get("error"))
            sys.exit(1)
