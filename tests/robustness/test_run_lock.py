"""One run per directory: a second run into a directory in use stops at start-up naming the
holder and writes nothing; a lock left by a killed run is reported with how to remove it, never
taken over; a refused run (finished directory) leaves the directory byte-identical, Hydra's
``.hydra/*.yaml`` included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.common.runtime import run_lock
from tasks.common.runtime.pipeline import run_job, train
from tasks.common.runtime.run_lock import LOCK_FILE, RunDirLocked, acquire, release, run_dir_lock
from tests.helpers import ROOT, compose_cfg, run_cfg, run_script
from tests.robustness.conftest import DEMO

HOLD = (
    "import sys, time; from tasks.common.runtime.run_lock import acquire; acquire(sys.argv[1]); "
    "print('locked', flush=True); time.sleep(60)"
)


def _holder(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock (until killed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_run_stops_naming_the_holder_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        before = _snapshot(run)
        cfg = compose_cfg([*DEMO, "trainer.max_epochs=1"], run)
        with pytest.raises(RunDirLocked) as info:
            run_cfg(cfg, fn=lambda c: run_job(c, train))
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in message
        assert "is in use by another run" in message and "hydra.run.dir" in message
        assert _snapshot(run) == before  # no results, no failure record, no checkpoints
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_is_reported_never_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)  # kill -9: no chance to remove the lock
    holder.wait()
    lock = run / LOCK_FILE
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with pytest.raises(RunDirLocked) as info:
        acquire(run)
    assert "is locked by a run that is no longer running" in str(info.value)
    assert f"pid {holder.pid}" in str(info.value) and f"rm {lock}" in str(info.value)
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left as it was
    lock.unlink()  # what the message says to do
    with run_dir_lock(run):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_is_reentrant_and_released(tmp_path):
    assert acquire(tmp_path) is True
    assert acquire(tmp_path) is False  # the Hydra callback took it; train() takes it again
    release(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()
    with run_dir_lock(tmp_path), run_dir_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_slurm_requeue_of_the_same_job_takes_its_lock_over(tmp_path, monkeypatch, caplog):
    """A requeued SLURM job (same job id, higher restart count) is the holder itself: it resumes
    with ckpt_path=last instead of stopping on its own lock."""
    other = {"pid": 1, "host": "node-a", "started": time.time(), "slurm_job_id": "77"}
    (tmp_path / LOCK_FILE).write_text(json.dumps({**other, "slurm_restart": 0}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(RunDirLocked, match="in use by another run: pid 1 on host node-a"):
        acquire(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with run_dir_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "taking over the lock of this SLURM job's previous run" in caplog.text
    assert not run_lock._held


@pytest.mark.slow
def test_two_concurrent_runs_into_one_directory_exactly_one_runs(tmp_path):
    """Two train.py started into one hydra.run.dir: the first runs to the end, the second exits
    non-zero at start-up naming it and changes nothing in the directory."""
    run, go = tmp_path / "run", tmp_path / "go"
    args = [
        "train.py",
        *DEMO,
        "trainer.max_epochs=1",
        f"hydra.run.dir={run}",
    ]
    hold = [  # the first run waits in training until the second one has been refused
        "+callbacks.hold._target_=tests.robustness.faults.WaitForFile",
        f"+callbacks.hold.path={go}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    first = subprocess.Popen(
        [sys.executable, *args, *hold],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        while not Path(f"{go}.waiting").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run did not reach training"
        before = _snapshot(run)
        second = run_script(args, timeout=300)
        go.touch()
        out, _ = first.communicate(timeout=600)
    finally:
        go.touch()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out.decode()[-3000:]
    assert second.returncode != 0
    text = second.stdout + second.stderr
    assert f"is in use by another run: pid {first.pid} on host {socket.gethostname()}" in text
    assert before[".hydra/overrides.yaml"] == (run / ".hydra" / "overrides.yaml").read_bytes()
    assert before[".hydra/config.yaml"] == (run / ".hydra" / "config.yaml").read_bytes()
    assert json.loads((run / "results.json").read_text())["status"] == "ok"
    assert not (run / "results.failed.json").exists() and not (run / LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.parametrize("resume", [[], ["ckpt_path=last"]])
def test_train_py_refused_on_a_finished_run_changes_nothing(demo_run, tmp_path, resume):
    """The refused re-run used to rewrite .hydra/overrides.yaml and config.yaml, and
    ckpt_path=last rewrote results.json without the train/* metrics."""
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=2\n")
    before, mtime = _snapshot(run), os.stat(run).st_mtime_ns
    proc = run_script(["train.py", *DEMO, "trainer.max_epochs=2", *resume, f"hydra.run.dir={run}"])
    assert proc.returncode != 0
    assert "holds a finished run" in proc.stdout + proc.stderr
    assert _snapshot(run) == before
    assert os.stat(run).st_mtime_ns == mtime  # not even a file created and removed


@pytest.mark.parametrize("rank", ["LOCAL_RANK", "RANK", "SLURM_PROCID"])
def test_other_ranks_of_a_distributed_run_do_not_lock(tmp_path, monkeypatch, rank):
    """Lightning's DDP children re-run the command into the same directory: rank 0 holds the
    lock for the whole run."""
    with run_dir_lock(tmp_path):
        monkeypatch.setenv(rank, "1")
        assert acquire(tmp_path) is False
        monkeypatch.delenv(rank)
    holder = _holder(tmp_path / "other")
    try:
        monkeypatch.setenv(rank, "1")
        assert acquire(tmp_path / "other") is False  # no RunDirLocked for rank 1
    finally:
        holder.kill()
        holder.wait()
