"""Exact resume for every task: a run interrupted in the middle of an epoch (an exception at a
random training step, or kill -9 of the process) and resumed with ckpt_path=last ends with the
same metrics as an uninterrupted run with the same seed.

Lightning writes last.ckpt at every epoch end; a run killed in the middle of epoch e resumes
from the end of epoch e-1 and replays epoch e exactly: shuffling and per-item randomness are
functions of (seed, epoch, index), and every RNG is reseeded per batch
(tasks/common/runtime/data.py, tasks/common/runtime/callbacks.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from tasks.common.runtime.callbacks import SimulatedInterruption
from tests.helpers import (
    ROOT,
    compose_cfg,
    mad_ad_overrides,
    msrvtt_overrides,
    qvh_overrides,
    run_cfg,
)
from tests.robustness.conftest import DEMO

IGNORED = ("time", "gflops", "_ms")  # wall-clock metrics


def interrupted_then_resumed(overrides: list[str], tmp_path: Path, step: int) -> tuple[dict, dict]:
    """(uninterrupted record, record of a run that failed before training batch ``step`` and was
    resumed with ckpt_path=last)."""
    full = run_cfg(compose_cfg(overrides, tmp_path / "full"))
    cfg = compose_cfg(overrides, tmp_path / "resumed")
    with open_dict(cfg):
        cfg.callbacks.fault = {
            "_target_": "tasks.common.runtime.callbacks.FailAtStep",
            "step": step,
        }
    with pytest.raises(SimulatedInterruption):
        run_cfg(cfg)
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()
    resumed = run_cfg(compose_cfg([*overrides, "ckpt_path=last"], tmp_path / "resumed"))
    return full, resumed


def assert_same_metrics(full: dict, resumed: dict) -> None:
    assert resumed["epochs"] == full["epochs"]
    keys = [k for k in full["metrics"] if not any(word in k for word in IGNORED)]
    assert keys and set(keys) <= set(resumed["metrics"])
    for key in keys:
        assert resumed["metrics"][key] == pytest.approx(full["metrics"][key], rel=1e-6, abs=1e-7), (
            key
        )
    assert resumed["best"]["value"] == pytest.approx(full["best"]["value"], rel=1e-6)


def random_step(name: str, steps_per_epoch: int, epochs: int) -> int:
    """A step inside an epoch after the first (so that a last.ckpt exists), not on a boundary."""
    rng = random.Random(name)
    epoch = rng.randint(1, epochs - 1)
    return epoch * steps_per_epoch + rng.randint(1, steps_per_epoch - 1)


def test_demo_resume_mid_epoch_is_exact(tmp_path):
    overrides = [*DEMO, "trainer.max_epochs=3", "model.dropout=0.2"]  # 4 steps an epoch
    step = random_step("demo", 4, 3)
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step)
    assert_same_metrics(full, resumed)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_qvhighlights_resume_mid_epoch_is_exact(qvh_features, tmp_path, workers):
    """Random window subsets and saliency pairs are drawn per item from (seed, epoch, index),
    in the loader's worker processes too."""
    overrides = [
        *qvh_overrides(qvh_features),
        "trainer.max_epochs=3",
        "data.max_windows=1",
        f"data.num_workers={workers}",
    ]
    step = random_step("qvhighlights", 4, 3)  # 16 queries, batch 4
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step)
    assert_same_metrics(full, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_imagenet_resume_mid_epoch_is_exact(tmp_path, workers):
    """RandAugment, random erasing (per item, in the loader's worker processes too) and
    mixup / cutmix (per batch) included."""
    from scripts.make_imagenet_folder import make_imagenet_folder

    root = make_imagenet_folder(
        tmp_path / "imagenet", num_classes=4, train_per_class=8, val_per_class=2, size=40
    )
    overrides = [
        "experiment=imagenet_tiny",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=3",
        f"data.num_workers={workers}",
    ]
    step = random_step("imagenet", 4, 3)  # 32 images, batch 8
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step)
    assert_same_metrics(full, resumed)


@pytest.mark.slow
def test_msrvtt_resume_mid_epoch_is_exact(tmp_path):
    """Random crops and caption masking are drawn per item from (seed, epoch, index)."""
    from scripts.make_msrvtt_videos import make_dataset

    root = make_dataset(tmp_path / "msrvtt")
    overrides = msrvtt_overrides(root, max_epochs=3)
    step = random_step("msrvtt", 3, 3)  # 4 videos x 3 captions, batch 4
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step)
    assert_same_metrics(full, resumed)


@pytest.mark.slow
def test_mad_ad_resume_mid_epoch_is_exact(tmp_path):
    """Across the stage-1 -> stage-2 switch (epoch 1)."""
    overrides = mad_ad_overrides(tmp_path, max_epochs=3)
    step = random_step("mad_ad", 4, 3)
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step)
    assert_same_metrics(full, resumed)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_exact(tmp_path):
    """A real SIGKILL of `python train.py` at a random moment after the first epoch's
    checkpoint, then the same command with ckpt_path=last."""
    args = [
        "train.py",
        *DEMO,
        "data.num_train=256",
        "trainer.max_epochs=4",
        "model.dropout=0.2",
        "+callbacks.slow._target_=tests.robustness.faults.SlowSteps",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"

    def run(extra: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args, *extra], cwd=ROOT, env=env, capture_output=True, text=True
        )

    done = run([f"hydra.run.dir={full_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(
        [sys.executable, *args, f"hydra.run.dir={killed_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert last.exists() and proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(random.Random(9).uniform(0.2, 1.0))  # 16 steps x 0.05 s an epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "results.json").exists()  # killed before it finished
    # the killed run's lock is reported, not taken over; removed as the message says
    stale = run([f"hydra.run.dir={killed_dir}", "ckpt_path=last"])
    lock = killed_dir / ".run.lock"
    assert stale.returncode != 0 and f"rm {lock}" in stale.stderr + stale.stdout
    lock.unlink()
    again = run([f"hydra.run.dir={killed_dir}"])  # without ckpt_path=last: refused
    assert again.returncode != 0 and "ckpt_path=last" in again.stderr + again.stdout
    resumed = run([f"hydra.run.dir={killed_dir}", "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = json.loads((full_dir / "results.json").read_text())
    after = json.loads((killed_dir / "results.json").read_text())
    assert after["resumed_from"].endswith("last.ckpt")
    assert_same_metrics(full, after)
