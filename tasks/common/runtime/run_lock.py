"""One run per run directory: a lock file held for the run's lifetime.

``<run dir>/.run.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS v3+ file
systems) and holds the holder's pid, host, start time and command line; the process also keeps
an ``fcntl.flock`` on it, which the kernel drops when the process dies. A second run into the
directory stops at start-up naming the holder. A lock whose holder is gone (a run killed with
kill -9 or by the OOM killer) is reported with the command that removes it, never taken over
silently: the directory may hold that run's half-written state. The one exception is a SLURM
requeue of the same job (same ``SLURM_JOB_ID``, a higher ``SLURM_RESTART_COUNT``): that is the
holder itself, restarted, and it takes the lock over with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
# locks this process holds: run dir -> open file descriptor (re-entrant: the Hydra callback takes
# the lock before Hydra writes into the directory, train() takes it again)
_held: dict[Path, int] = {}


class RunDirLocked(RuntimeError):
    """Another run holds the run directory (or a killed run left its lock behind)."""


def _holder_text(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"
    if holder.get("slurm_job_id"):
        text += f", SLURM job {holder['slurm_job_id']}"
    if holder.get("argv"):
        text += f" ({' '.join(holder['argv'])[:200]})"
    return text


def _read_holder(file: Path) -> dict[str, Any]:
    try:
        holder = json.loads(file.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # being written by its holder this instant, or foreign content


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (TypeError, ValueError):
        return False
    return True


def _flock_free(file: Path) -> bool:
    """Nobody holds an flock on ``file`` (its holder died: the kernel released it)."""
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's own flock
    return True


def is_stale(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and is gone (its pid is dead, or the pid was reused by a
    process that does not hold the lock). Holders on other hosts cannot be checked."""
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


def _is_own_requeue(holder: dict[str, Any]) -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    if not job or str(holder.get("slurm_job_id")) != job:
        return False
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", 0)) > int(holder.get("slurm_restart", 0))
    except ValueError:
        return False


def is_first_process() -> bool:
    """Global rank 0 of a distributed run, or a plain process. The other ranks (Lightning's DDP
    children re-run the command with ``LOCAL_RANK``; torchrun sets ``RANK``; ``srun`` tasks have
    ``SLURM_PROCID``) belong to the run whose rank 0 holds the lock."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        try:
            if int(os.environ.get(key, 0) or 0) != 0:
                return False
        except ValueError:
            continue
    return True


def acquire(run_dir: str | Path) -> bool:
    """Take ``run_dir``'s lock for this process (creating the directory). Returns False when this
    process holds it already, or is not the run's first process (``is_first_process``). Raises
    ``RunDirLocked`` naming the holder, or, for a stale lock, saying how to remove it."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held or not is_first_process():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    file = run_dir / LOCK_FILE
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
    }
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        holder = _read_holder(file)
        if _is_own_requeue(holder):
            log.warning(
                "%s: taking over the lock of this SLURM job's previous run (%s)",
                file,
                _holder_text(holder),
            )
            file.unlink(missing_ok=True)
            return acquire(run_dir)
        if is_stale(holder) or (holder.get("host") == socket.gethostname() and _flock_free(file)):
            raise RunDirLocked(
                f"{run_dir} is locked by a run that is no longer running ({_holder_text(holder)}; "
                f"killed?). It may have left the directory half-written. If no run uses it, "
                f"remove the lock and start again (ckpt_path=last resumes it):\n  rm {file}"
            ) from None
        raise RunDirLocked(
            f"{run_dir} is in use by another run: {_holder_text(holder)}. Two runs in one "
            "directory would overwrite each other's checkpoints and results: choose another "
            f"directory (hydra.run.dir=...), or wait for it to finish. (Lock file: {file})"
        ) from None
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if we die
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    _held[run_dir] = fd
    return True


def release(run_dir: str | Path) -> None:
    """Drop this process's lock on ``run_dir`` (no-op when it holds none)."""
    run_dir = Path(run_dir).resolve()
    fd = _held.pop(run_dir, None)
    if fd is None:
        return
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock inside the block (re-entrant within one process)."""
    taken = acquire(run_dir)
    try:
        yield
    finally:
        if taken:
            release(run_dir)
