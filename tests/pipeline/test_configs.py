"""Config drift: every task and experiment file composes, validates and names real classes."""

from __future__ import annotations

import importlib

import pytest
from omegaconf import OmegaConf

from tasks.common.runtime.pipeline import core_configs
from tests.helpers import CONFIG_DIR, compose_cfg

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
MASKS = sorted(p.stem for p in (CONFIG_DIR / "mask").glob("*.yaml"))


def _importable(target: str) -> bool:
    module, _, name = target.rpartition(".")
    return hasattr(importlib.import_module(module), name)


def _check(cfg) -> None:
    mask, attention = core_configs(cfg)
    assert str(mask.type) == cfg.mask.type
    for node in ("data", "model", "module", "trainer"):
        assert _importable(cfg[node]._target_), cfg[node]._target_
    assert cfg.monitor.metric.startswith("val/")
    OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes(task, tmp_path):
    cfg = compose_cfg([f"task={task}"], tmp_path)
    assert cfg.task_name == task
    _check(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    assert cfg.experiment == experiment
    _check(cfg)


@pytest.mark.parametrize("mask", MASKS)
def test_every_mask_group_option_composes(mask, tmp_path):
    cfg = compose_cfg([f"mask={mask}"], tmp_path)
    # options named after their mask type, but for a variant of one (Table 3's plain +Linear)
    assert cfg.mask.type == {"extra_linear_plain": "extra_linear"}.get(mask, mask)
    _check(cfg)


def test_task_defaults_override_the_mask_group_defaults(tmp_path):
    """configs/train.yaml puts the task after the mask group: the task's depth wins, the
    command line wins over both."""
    assert compose_cfg(["task=demo"], tmp_path).mask.depth == 2
    if "qvhighlights" in TASKS:
        assert compose_cfg(["task=qvhighlights"], tmp_path).mask.depth == 32
    assert compose_cfg(["task=demo", "mask.depth=7"], tmp_path).mask.depth == 7


def test_schemas_validate_but_are_not_choices(tmp_path):
    """``--help`` lists each group's options: the structured-config schemas that
    configs/mask/*.yaml and configs/attention/*.yaml extend are not among them (they were:
    ``mask: ..., mask_schema, ...``), and they still type-check the settings."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from stamp.config import AttentionConfig, MaskConfig
    from tasks.common.runtime.schemas import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        assert sorted(loader.get_group_options("mask")) == MASKS
        attention = sorted(p.stem for p in (CONFIG_DIR / "attention").glob("*.yaml"))
        assert sorted(loader.get_group_options("attention")) == attention
    GlobalHydra.instance().clear()
    cfg = compose_cfg([], tmp_path)
    assert OmegaConf.get_type(cfg.mask) is MaskConfig
    assert OmegaConf.get_type(cfg.attention) is AttentionConfig
    with pytest.raises(Exception, match="mask.fusion=foo"):
        compose_cfg(["mask.fusion=foo"], tmp_path)
