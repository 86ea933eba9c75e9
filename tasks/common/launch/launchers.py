"""Hydra's submitit launchers (``hydra/launcher=slurm|local``) fitted to this pipeline.

Three additions to ``hydra-submitit-launcher``'s launchers, all at job time:

* the OmegaConf resolvers of ``configs/`` (``${stamp_root:}``, ...) are registered in the job
  process, which unpickles the task function without running ``train.py``'s module code;
* Lightning's process layout follows the SLURM allocation: ``trainer.num_nodes`` = ``nodes`` and
  ``trainer.devices`` = ``tasks_per_node`` (one task per GPU; Lightning's SLURMEnvironment reads
  the ranks from SLURM), added as Hydra overrides unless the command line sets them;
* requeue resumes: a job whose run directory already holds ``checkpoints/last.ckpt`` (written
  at every epoch end) starts with ``ckpt_path=last``: after submitit's requeue (its signal
  before the time limit or a preemption calls ``checkpoint()``), SLURM's own requeue, or a
  rerun of the sweep, it goes on from the last finished epoch, as exactly as a manual resume
  (docs/cluster.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

log = logging.getLogger(__name__)

RESUME_OVERRIDE = "ckpt_path=last"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def trainer_overrides(params: dict[str, Any], overrides: list[str]) -> list[str]:
    """``trainer.num_nodes`` / ``trainer.devices`` from the launcher's ``nodes`` /
    ``tasks_per_node``, for the keys the job's own overrides do not set."""
    given = {_key(o) for o in overrides}
    wanted = {
        "trainer.num_nodes": int(params.get("nodes") or 1),
        "trainer.devices": int(params.get("tasks_per_node") or 1),
    }
    return [f"++{k}={v}" for k, v in wanted.items() if k not in given]  # ++: add or set


def resume_overrides(overrides: list[str], run_dir: Path | None) -> list[str]:
    """The job's overrides for a requeue: ``ckpt_path=last`` once ``last.ckpt`` exists."""
    if run_dir is None or not (run_dir / "checkpoints" / "last.ckpt").exists():
        return list(overrides)
    kept = [o for o in overrides if _key(o) != "ckpt_path"]
    return [*kept, RESUME_OVERRIDE]


def _current_run_dir() -> Path | None:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # Hydra not set up in this process yet
        return None


class PipelineLauncherMixin:
    """Mixin over a submitit launcher: resolvers, trainer layout, resume on requeue. The
    launcher classes themselves live in ``hydra_plugins/stamp_launchers`` (Hydra accepts
    launchers only from the ``hydra_plugins`` namespace)."""

    set_trainer_layout = False

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> Any:
        from tasks.common.runtime.schemas import register_schemas

        register_schemas()
        overrides = list(sweep_overrides)
        if self.set_trainer_layout:
            overrides += trainer_overrides(self.params, overrides)
        # a restarted job (SLURM's own requeue, a rerun of the sweep) goes on from its last.ckpt
        overrides = resume_overrides(overrides, self._job_dir(overrides, job_num, singleton_state))
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)

    def _job_dir(self, overrides: list[str], job_num: int, singleton_state: dict) -> Path | None:
        """The job's run directory (hydra.sweep.dir / subdir, resolved as the job will)."""
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals
        from omegaconf import open_dict

        try:
            Singleton.set_state(singleton_state)
            setup_globals()
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = job_num
            return Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        except Exception as error:  # noqa: BLE001 - then the job starts from scratch
            log.warning("could not resolve the job directory (%s): no auto-resume", error)
            return None

    def checkpoint(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> Any:
        import submitit

        run_dir = _current_run_dir()
        overrides = resume_overrides(sweep_overrides, run_dir)
        log.warning("requeued (%s): %s", run_dir, " ".join(overrides))
        return submitit.helpers.DelayedSubmission(
            self, overrides, job_dir_key, job_num, job_id, singleton_state
        )
