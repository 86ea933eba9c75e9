"""Compose the real Hydra configs (the same code path a user runs) and run them in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from tasks.common.runtime.compose import CONFIG_DIR, ROOT, compose_config, without_hydra

__all__ = ["CONFIG_DIR", "ROOT", "compose_cfg", "run_cfg", "run_script"]


def compose_cfg(
    overrides: list[str] | None = None, output_dir: Path | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with overrides, run directory ``output_dir``."""
    return compose_config(overrides or [], output_dir, config_name)


def run_cfg(cfg: DictConfig, fn=None) -> dict:
    """Run train(cfg) (or another pipeline function) in-process, inside ``paths.output_dir``."""
    from tasks.common.runtime.pipeline import train

    fn = fn or train
    cwd = os.getcwd()
    os.chdir(cfg.paths.output_dir)
    try:
        # the pipeline reads the run dir from Hydra when it runs under @hydra.main; in tests the
        # run dir is the current directory
        return fn(without_hydra(cfg))
    finally:
        os.chdir(cwd)


def run_script(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run ``python <args>`` as a user would; returns the CompletedProcess (output captured)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


# the demo at toy size, for tests that need a real run or model but not a trained one
DEMO_TINY = [
    "logger=csv",
    "data.num_train=64",
    "data.num_val=32",
    "data.num_test=32",
    "data.batch_size=16",
    "model.dim=32",
    "model.ffn_dim=64",
]
