"""hydra/launcher=slurm|local: the configs, the trainer layout, resume on requeue, and (slow) a
sweep through submitit's local executor that must give the basic launcher's summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import DEMO_TINY, compose_cfg, run_cfg, run_script

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from tasks.common.launch.launchers import resume_overrides, trainer_overrides  # noqa: E402


def _launcher(name: str, *overrides: str):
    cfg = compose_cfg([f"hydra/launcher={name}", *overrides])
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_matches_lightning_layout():
    params = _launcher(
        "slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2", "trainer=gpu"
    )
    assert params["_target_"] == "hydra_plugins.stamp_launchers.StampSlurmLauncher"
    assert params["tasks_per_node"] == 4  # one task per GPU
    assert params["max_num_timeout"] >= 1 and params["signal_delay_s"] > 0
    assert trainer_overrides(params, ["mask=none"]) == [
        "++trainer.num_nodes=2",
        "++trainer.devices=4",
    ]
    # a value given on the command line wins
    assert trainer_overrides(params, ["trainer.devices=2"]) == ["++trainer.num_nodes=2"]


def test_trainer_overrides_compose_into_the_job_config():
    params = _launcher("slurm", "hydra.launcher.gpus_per_node=8", "hydra.launcher.nodes=4")
    cfg = compose_cfg(["trainer=ddp", *trainer_overrides(params, [])])
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.devices == 8


def test_local_launcher_config():
    params = _launcher("local")
    assert params["_target_"] == "hydra_plugins.stamp_launchers.StampLocalLauncher"
    assert params["tasks_per_node"] == 1


def test_requeue_resumes_from_last_ckpt_only_when_it_exists(tmp_path):
    overrides = ["mask=global", "seed=1"]
    assert resume_overrides(overrides, tmp_path) == overrides  # nothing to resume yet
    assert resume_overrides(overrides, None) == overrides
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_overrides(overrides, tmp_path) == [*overrides, "ckpt_path=last"]
    # an explicit checkpoint of the first submission gives way to the run's own last.ckpt
    assert resume_overrides(["ckpt_path=/x.ckpt", "seed=1"], tmp_path) == [
        "seed=1",
        "ckpt_path=last",
    ]


def test_checkpoint_resubmits_with_resume(tmp_path, monkeypatch):
    """submitit calls launcher.checkpoint(*args) on preemption / timeout and requeues what it
    returns: the same job, resuming from the run directory's last.ckpt."""
    import tasks.common.launch.launchers as launchers
    from hydra_plugins.stamp_launchers import StampSlurmLauncher

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    monkeypatch.setattr(launchers, "_current_run_dir", lambda: tmp_path)
    launcher = StampSlurmLauncher(**_launcher("slurm"))
    args = (["mask=global"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    delayed = launcher.checkpoint(*args)
    assert delayed.function is launcher
    assert delayed.args[0] == ["mask=global", "ckpt_path=last"]
    assert delayed.args[1:] == args[1:]


TINY = [*DEMO_TINY, "trainer.max_epochs=2", "callbacks.progress_bar.refresh_rate=0"]


def _sweep(log_dir: Path, launcher: list[str]) -> tuple[list[dict], str]:
    proc = run_script(
        ["train.py", "-m", "mask=none,multilayer", *TINY, *launcher, f"paths.log_dir={log_dir}"]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = next(log_dir.rglob("summary.json")).parent
    records = json.loads((sweep / "summary.json").read_text())
    assert "Results of 2 jobs" in proc.stdout
    return records, (sweep / "summary.md").read_text()


def _rows(records: list[dict]) -> dict:
    return {
        Path(r["run_dir"]).name: (r["status"], r["mask"], r["params"], r["metrics"])
        for r in records
    }


@pytest.mark.slow
def test_local_launcher_sweep_gives_the_basic_launchers_summary(tmp_path):
    basic, basic_md = _sweep(tmp_path / "basic", [])
    local, local_md = _sweep(tmp_path / "local", ["hydra/launcher=local"])
    assert sorted(_rows(local)) == ["0_none", "1_multilayer"]
    assert _rows(local) == _rows(basic)  # same jobs, same metrics, each job in its own process
    # both jobs' own results.json files, beside submitit's logs
    for record in local:
        assert (Path(record["run_dir"]) / "results.json").exists()
    assert list(Path(local[0]["run_dir"]).parent.glob(".submitit/*/*_log.out"))

    def strip_time(md: str) -> list[str]:
        return [line.rsplit("|", 2)[0] for line in md.splitlines()]

    assert strip_time(local_md) == strip_time(basic_md)


@pytest.mark.slow
def test_slurm_launcher_runs_a_sweep_under_a_stand_in_slurm(tmp_path):
    """hydra/launcher=slurm end to end with sbatch / srun / sacct stand-ins (no cluster here):
    the job array's sbatch script asks for Lightning's layout, each job runs under SLURM's
    environment variables (Lightning's SLURMEnvironment) with the launcher's trainer overrides,
    and the launching process writes the sweep summary."""
    from tests.launcher import fake_slurm

    bin_dir = fake_slurm.install(tmp_path / "bin")
    proc = run_script(
        [
            "train.py",
            "-m",
            "mask=none,multilayer",
            *TINY,
            "hydra/launcher=slurm",
            "hydra.launcher.gpus_per_node=1",
            "hydra.launcher.partition=debug",
            f"paths.log_dir={tmp_path / 'out'}",
        ],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = next((tmp_path / "out").rglob("summary.json")).parent
    records = json.loads((sweep / "summary.json").read_text())
    assert sorted(_rows(records)) == ["0_none", "1_multilayer"]
    assert all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["config"]["trainer"]["num_nodes"] == 1 and r["config"]["trainer"]["devices"] == 1
        overrides = (Path(r["run_dir"]) / ".hydra" / "overrides.yaml").read_text()
        assert "++trainer.num_nodes=1" in overrides and "++trainer.devices=1" in overrides
    (script,) = (sweep / ".submitit").rglob("*_submission.sh")
    text = script.read_text()
    for line in (
        "#SBATCH --array=0-1%2",  # 2 jobs, at most array_parallelism at once
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --partition=debug",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --cpus-per-task=10",
    ):
        assert line in text, line
    # the jobs ran as SLURM tasks: submitit's logs under the array's ids
    logs = sorted((sweep / ".submitit").glob("*_*/*_0_log.*"))
    assert len([p for p in logs if p.suffix == ".out"]) == 2
    # Lightning took its ranks from SLURM (SLURMEnvironment) in each job
    assert sum("SLURM auto-requeueing enabled" in p.read_text() for p in logs) == 2


@pytest.mark.slow
def test_restarted_job_resumes_from_last_ckpt(tmp_path):
    """A job interrupted after epoch 0, started again in its sweep (what a requeue does), goes
    on from its last.ckpt and ends as an uninterrupted run."""
    sweep = tmp_path / "sweep"
    common = ["train.py", "-m", "mask=multilayer", *TINY, "hydra/launcher=local"]
    interrupt = [
        "+callbacks.interrupt._target_=tasks.common.runtime.callbacks.InterruptAtEpoch",
        "+callbacks.interrupt.epoch=1",
    ]
    first = run_script([*common, *interrupt, f"hydra.sweep.dir={sweep}"])
    assert first.returncode != 0  # the sweep reports its failed job
    job = sweep / "0_multilayer"
    assert json.loads((job / "results.json").read_text())["status"] == "failed"
    assert (job / "checkpoints" / "last.ckpt").exists()
    again = run_script([*common, f"hydra.sweep.dir={sweep}"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "ckpt_path=last" in (job / ".hydra" / "overrides.yaml").read_text()
    resumed = json.loads((job / "results.json").read_text())
    assert resumed["status"] == "ok" and resumed["epochs"] == 2
    reference = run_cfg(compose_cfg([*TINY, "mask=multilayer"], tmp_path / "reference"))
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
