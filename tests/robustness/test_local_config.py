"""The per-machine config examples of the docs, copied verbatim into ``configs/local/default.yaml``
(of a copy of ``configs/``), work for every task: each task's model, module and data settings
stay those its classes accept (the old example's ``model.llm_path`` reached the demo's model:
``DemoClassifier ... unexpected keyword argument 'llm_path'``)."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tasks.common.runtime.compose import compose_config
from tasks.common.runtime.pipeline import core_configs
from tests.helpers import CONFIG_DIR, ROOT

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
DOCS = ["configs/local/README.md", "docs/mad_ad.md"]
MARK = "# @package _global_"


def local_examples(text: str) -> list[str]:
    """The YAML blocks of a markdown file that start with ``# @package _global_`` (indented by
    4 spaces or fenced), dedented."""
    blocks = [m.group(1) for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S)]
    indented: list[str] = []
    for line in text.splitlines():
        if line.startswith("    ") or (indented and not line.strip()):
            indented.append(line)
            continue
        if indented:
            blocks.append(textwrap.dedent("\n".join(indented)))
        indented = []
    if indented:
        blocks.append(textwrap.dedent("\n".join(indented)))
    return [b.strip() + "\n" for b in blocks if b.strip().startswith(MARK)]


def _unexpected(target: str, keys: set[str]) -> set[str]:
    """The keys that ``target``'s constructor does not accept."""
    module, _, name = target.rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set()
    return keys - set(params)


@pytest.fixture(scope="module", params=DOCS)
def local_dir(request, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of configs/ whose local/default.yaml is the doc's example: (dir, example)."""
    examples = local_examples((ROOT / request.param).read_text())
    assert len(examples) == 1, f"{request.param}: expected one local-config example"
    configs = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "local" / "default.yaml").write_text(examples[0])
    return configs, OmegaConf.to_container(OmegaConf.create(examples[0]))


def test_examples_set_only_paths():
    for doc in DOCS:
        for example in local_examples((ROOT / doc).read_text()):
            keys = set(OmegaConf.create(example))
            assert keys == {"paths"}, f"{doc}: keys {keys} reach every task; use paths.*"


@pytest.mark.parametrize("config_name", ["train", "eval"])
@pytest.mark.parametrize("task", TASKS)
def test_local_example_works_for_every_task(local_dir, task, config_name, tmp_path):
    configs, example = local_dir
    overrides = [f"task={task}"] + (["ckpt_path=x.ckpt"] if config_name == "eval" else [])
    cfg = compose_config(overrides, tmp_path, config_name, config_dir=configs)
    for key, value in example["paths"].items():  # the example was loaded
        assert cfg.paths[key] == value
    core_configs(cfg)
    for node, given in (("model", {"mask", "attention"}), ("module", {"net"}), ("data", set())):
        keys = set(OmegaConf.to_container(cfg[node], resolve=True)) - {"_target_"} | given
        assert not _unexpected(cfg[node]._target_, keys), (task, node)
    if task == "mad_ad":  # the per-task keys reach the task that reads them
        assert cfg.model.llm_path == example["paths"]["llama_dir"]
        assert cfg.data.tokenizer_path == example["paths"]["llama_dir"]
        assert cfg.data.root == example["paths"].get("mad_dir", "/datasets/mad")
        assert cfg.module.bertscore_model == example["paths"].get("bertscore_dir")
    if task == "msrvtt" and "corenlp_dir" in example["paths"]:
        assert cfg.module.metrics.spice_corenlp_dir == example["paths"]["corenlp_dir"]
    if task == "demo":  # the bug's own symptom: the model builds
        mask, attention = core_configs(cfg)
        net = instantiate(cfg.model, mask=mask, attention=attention)
        assert sum(p.numel() for p in net.parameters()) > 0


def test_the_old_example_is_caught(tmp_path):
    """The check above fails on the old example (``model: llm_path:``), so it can catch it."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    old = f"{MARK}\npaths:\n  data_dir: /datasets\nmodel:\n  llm_path: /checkpoints/llama\n"
    (configs / "local" / "default.yaml").write_text(old)
    cfg = compose_config(["task=demo"], tmp_path, config_dir=configs)
    keys = set(cfg.model) - {"_target_"} | {"mask", "attention"}
    assert _unexpected(cfg.model._target_, keys) == {"llm_path"}
