"""Compose ``configs/<name>.yaml`` outside ``@hydra.main`` (tests, profiling and plot scripts)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from tasks.common.runtime.schemas import register_schemas

ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = ROOT / "configs"


def compose_config(
    overrides: Iterable[str] = (),
    output_dir: str | Path | None = None,
    config_name: str = "train",
    config_dir: str | Path = CONFIG_DIR,
) -> DictConfig:
    """The composed config with the paths that Hydra would resolve at run time (the run
    directory, the root) set to ``output_dir`` and ``$STAMP_ROOT`` / the current directory.
    Without ``output_dir``, the run directory is ``./outputs/scratch`` and ``paths.log_dir`` stays
    as configured (scripts write their outputs under it, where the docs say).
    ``config_dir``: another copy of ``configs/`` (tests: one holding a ``local/default.yaml``)."""
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    out = Path(output_dir or Path.cwd() / "outputs" / "scratch")
    out.mkdir(parents=True, exist_ok=True)
    # as train.py (the ``stamp_root`` resolver): $STAMP_ROOT, else the current directory, so a
    # script run from another directory writes and reads where train.py would
    root = os.environ.get("STAMP_ROOT") or os.getcwd()
    with open_dict(cfg):
        cfg.paths.root_dir = root
        cfg.paths.output_dir = str(out)
        if output_dir is not None:  # else paths.log_dir as configured: <root>/outputs
            cfg.paths.log_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = root
    return cfg


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The config less its ``hydra`` node (whose ``${hydra:...}`` values need a running Hydra)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
