"""Hydra's submitit launchers (``hydra/launcher=slurm|local``) fitted to this pipeline.

Three additions to ``hydra-submitit-launcher``'s launchers, all at job time:

* the OmegaConf resolvers of ``configs/`` (``${stamp_root:}``, ...) are registered in the job
  process, which unpickles the task function without running ``train.py``'s module code;
* Lightning's process layout follows the SLURM allocation: ``trainer.num_nodes`` = ``nodes`` and
  ``trainer.devices`` = ``tasks_per_node`` (one task per GPU; Lightning's SLURMEnvironment reads
  the ranks from SLURM), added as Hydra overrides unless the command line sets them;
* requeue resumes: when SLURM preempts a job or its time runs out, submitit calls
  ``checkpoint()``; the job is requeued with ``ckpt_path=last`` when its run directory holds
  ``checkpoints/last.ckpt`` (written at every epoch end), so it goes on from the last finished
  epoch, with the same exactness as a manual resume (docs/cluster.md).
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
        from tasks.common.schemas import register_schemas

        register_schemas()
        overrides = list(sweep_overrides)
        if self.set_trainer_layout:
            overrides += trainer_overrides(self.params, overrides)
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)

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
