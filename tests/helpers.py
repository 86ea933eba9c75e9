"""Compose the real Hydra configs (the same code path a user runs) and run them in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


def qvh_overrides(root: Path, eval_batch_size: int = 8) -> list[str]:
    """A tiny QD-DETR + STAMP run over the synthetic features under ``root``."""
    return [
        "task=qvhighlights",
        "mask=multilayer",
        "mask.depth=2",
        f"data.annotation_dir={root / 'annotations'}",
        f"data.feature_dir={root}",
        "data.v_feat_dim=24",
        "data.t_feat_dim=8",
        "data.num_workers=0",
        "data.batch_size=4",
        f"data.eval_batch_size={eval_batch_size}",
        "model.hidden_dim=16",
        "model.num_heads=2",
        "model.ffn_dim=32",
        "logger=csv",
        "callbacks.progress_bar=null",
        "callbacks.mask_diagnostics=null",
        "trainer.check_val_every_n_epoch=1",
    ]


def msrvtt_overrides(root: Path, max_epochs: int = 1) -> list[str]:
    """A tiny MSR-VTT run over the generated videos under ``root`` (no test pass)."""
    return [
        "experiment=msrvtt_tiny",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "test=false",
        f"trainer.max_epochs={max_epochs}",
        "+module.metrics.metrics=[BLEU_4,ROUGE_L,CIDEr]",
        "module.metrics.tokenize=simple",
    ]


def mad_ad_overrides(tmp_path: Path, max_epochs: int) -> list[str]:
    """A tiny MAD AD run: writes a tiny Llama and synthetic MAD features under ``tmp_path``."""
    from tasks.mad_ad.synthetic import build_tiny_llama, write_synthetic_mad

    llama = build_tiny_llama(tmp_path / "llama")
    write_synthetic_mad(tmp_path / "mad", train_movies=1, test_movies=1, ads_per_movie=16, dim=16)
    return [
        "experiment=mad_ad_tiny",
        "logger=csv",
        "callbacks.progress_bar=null",
        f"data.root={tmp_path / 'mad'}",
        f"model.llm_path={llama}",
        "model.visual_dim=16",
        "model.audio_dim=16",
        "model.dim=32",
        "model.num_queries=4",
        "data.batch_size=4",
        "data.limit_train=16",
        "data.eval_batch_size=32",
        "module.max_new_tokens=4",
        f"trainer.max_epochs={max_epochs}",
    ]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One torch thread per test. A folder's conftest imports this to make it autouse there:
    on a shared 2-core machine, two threads per process oversubscribe the cores and a 0.07 s
    training step can take seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
