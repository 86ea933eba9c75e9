"""Compose the real Hydra configs (the same code path a user runs) and run them in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from tasks.common.schemas import register_schemas

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def compose_cfg(
    overrides: list[str] | None = None, output_dir: Path | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with overrides; resolve hydra-dependent paths to
    ``output_dir`` so the config can run without @hydra.main."""
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.paths.root_dir = str(ROOT)
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.runtime.cwd = str(ROOT)
    GlobalHydra.instance().clear()
    return cfg


def run_cfg(cfg: DictConfig, fn=None) -> dict:
    """Run train(cfg) (or another pipeline function) in-process, inside ``paths.output_dir``."""
    from tasks.common.pipeline import train

    fn = fn or train
    cwd = os.getcwd()
    os.chdir(cfg.paths.output_dir)
    try:
        # the pipeline reads the run dir from Hydra when it runs under @hydra.main; in tests the
        # run dir is the current directory
        hydra_free = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return fn(hydra_free)
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
