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

from tasks.common.runtime.results import format_summary, load_results

log = logging.getLogger(__name__)


class MultirunSummary(Callback):
    """Print the jobs' results side by side, write ``summary.md`` / ``summary.json`` into the
    sweep directory, log them with the paper tables to W&B when W&B is a logger
    (``tasks.common.reporting.wandb_dashboard``), and exit non-zero when a job failed (after every
    job has run)."""

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
    from tasks.common.reporting.wandb_dashboard import log_sweep_tables, wandb_logger_config

    settings = wandb_logger_config(config)
    if settings is None:
        return
    try:
        log_sweep_tables(records, sweep_dir, settings)
    except Exception as error:  # noqa: BLE001 - reported, the summary files are written
        log.warning("could not log the sweep tables to W&B: %s: %s", type(error).__name__, error)


class RunDirGuard(Callback):
    """Refuse a single run before Hydra writes into its directory (``.hydra/*.yaml`` and the job
    log), so that a refused run changes nothing: the directory's lock is taken here and held
    until the run ends (``tasks.common.runtime.run_lock``), and a finished run is refused
    (``pipeline.guard_run_dir`` / ``refuse_finished_eval``). The run directory is resolved once
    and pinned, so that a ``${now:}`` in ``hydra.run.dir`` names the same directory here and in
    the job. Hydra turns a callback's exception into a warning, so a refusal prints its message
    and exits with status 1 (``SystemExit``). Multirun jobs take their lock in the job
    (``pipeline.run_job``)."""

    def __init__(self) -> None:
        self.locked: Path | None = None

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs) -> None:
        from tasks.common.runtime.pipeline import RunExistsError
        from tasks.common.runtime.run_lock import RunDirLocked, release

        try:
            self._guard(config, config_name)
        except (RunDirLocked, RunExistsError) as refused:
            if self.locked is not None:
                release(self.locked)
                self.locked = None
            print(f"Error: {type(refused).__name__}: {refused}", file=sys.stderr, flush=True)
            raise SystemExit(1) from refused

    def _guard(self, config: DictConfig, config_name: str | None) -> None:
        import copy

        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        from tasks.common.runtime import pipeline
        from tasks.common.runtime.run_lock import acquire

        out_dir = Path(str(config.hydra.run.dir)).resolve()
        with read_write(config.hydra):
            config.hydra.run.dir = str(out_dir)
            with open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = str(out_dir)
        HydraConfig.instance().set_config(config)
        # read-only checks first: a refused finished run's directory is not touched at all
        if config_name == "eval":
            pipeline.refuse_finished_eval(out_dir)
        else:
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            resuming = task_cfg.get("ckpt_path") not in (None, "", "null")
            pipeline.guard_run_dir(task_cfg, out_dir, resuming)
        if acquire(out_dir):  # raises RunDirLocked naming the holder
            self.locked = out_dir

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from tasks.common.runtime.run_lock import release

        if self.locked is not None:
            release(self.locked)
            self.locked = None
