"""W&B in a multirun: a job that fails mid-training finishes its own run as failed (exit code 1)
and the next job logs into a fresh run of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_script
from tests.robustness.conftest import DEMO


def exit_code(run_dir: Path) -> int | None:
    """The exit code an offline run recorded when it was finished (None: never finished)."""
    codes = re.findall(r"got exitcode: (-?\d+)", (run_dir / "logs" / "debug.log").read_text())
    return int(codes[-1]) if codes else None


@pytest.mark.slow
def test_failed_job_finishes_its_run_and_the_next_job_starts_a_new_one(tmp_path):
    proc = run_script(
        [
            "train.py",
            "-m",
            *[o for o in DEMO if o != "logger=csv"],
            "logger=wandb",
            "trainer.max_epochs=2",
            "+callbacks.interrupt._target_=tasks.common.runtime.callbacks.InterruptAtEpoch",
            "+callbacks.interrupt.epoch=1,9",  # job 0 fails at its 2nd epoch, job 1 does not
            f"paths.log_dir={tmp_path}",
        ],
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # the sweep reports the failed job
    jobs = sorted(p.parent for p in tmp_path.rglob("results.json"))
    assert [p.name[0] for p in jobs] == ["0", "1"]
    status = [json.loads((p / "results.json").read_text())["status"] for p in jobs]
    assert status == ["failed", "ok"]
    runs = [list((p / "wandb").glob("offline-run-*")) for p in jobs]
    assert [len(r) for r in runs] == [1, 1], runs
    failed_run, ok_run = runs[0][0], runs[1][0]
    assert failed_run.name.split("-")[-1] != ok_run.name.split("-")[-1]
    assert exit_code(failed_run) == 1 and exit_code(ok_run) == 0
    # each run holds its own job's config: the second job did not log into the first's run
    interrupt = (
        r"'interrupt': \{'_target_': 'tasks.common.runtime.callbacks.InterruptAtEpoch', 'epoch': "
    )
    failed_log = (failed_run / "logs" / "debug.log").read_text()
    ok_log = (ok_run / "logs" / "debug.log").read_text()
    assert re.search(interrupt + "1}", failed_log) and not re.search(interrupt + "9}", failed_log)
    assert re.search(interrupt + "9}", ok_log) and not re.search(interrupt + "1}", ok_log)
