"""mask.init is honoured by every task: each task's model, built from its real config with
mask=multilayer, has generators initialised as the core says (no task re-initialises them)."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from stamp import MaskGenerator, identity_preactivation
from tasks.common.runtime.pipeline import core_configs
from tests.helpers import compose_cfg

# size overrides that make each task's model small enough to build in a second
SMALL = {
    "demo": ["task=demo", "model.dim=32", "model.ffn_dim=64"],
    "qvhighlights": [
        "task=qvhighlights",
        "model.hidden_dim=32",
        "model.num_heads=4",
        "model.ffn_dim=64",
        "mask.depth=4",
    ],
    "imagenet": ["experiment=imagenet_tiny", "model.pretrained=null"],
    "msrvtt": ["experiment=msrvtt_tiny"],
}


def build_model(task: str, init: str, tmp_path):
    extra = []
    if task == "msrvtt":  # its tokenizer needs a vocabulary file
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "cooking"]
        (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
        extra = [f"data.tokenizer_path={tmp_path}"]
    cfg = compose_cfg([*SMALL[task], "mask=multilayer", f"mask.init={init}", *extra], tmp_path)
    mask, attention = core_configs(cfg)
    return instantiate(cfg.model, mask=mask, attention=attention), mask


def generators(model) -> list[MaskGenerator]:
    found = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert found, "mask=multilayer built no generator"
    return found


@pytest.mark.parametrize("task", sorted(SMALL))
def test_identity_init_in_every_task(task, tmp_path):
    model, mask = build_model(task, "identity", tmp_path)
    neutral = identity_preactivation(mask.fusion, mask.bound)
    for gen in generators(model):
        assert gen.init.value == "identity"
        assert torch.count_nonzero(gen.out.weight) == 0
        assert torch.all(gen.out.bias == neutral)


@pytest.mark.parametrize("task", sorted(SMALL))
def test_kaiming_init_in_every_task(task, tmp_path):
    model, _ = build_model(task, "kaiming", tmp_path)
    for gen in generators(model):
        assert gen.init.value == "kaiming"
        first = gen.first_linear
        expected = math.sqrt(2.0 / first.in_features) if gen.depth > 1 else first.in_features**-0.5
        # He fan-in (ReLU layers) or unit-gain fan-in (a single output layer), not the task's init
        assert first.weight.std().item() == pytest.approx(expected, rel=0.15)


def test_identity_init_in_mad_ad(tmp_path):
    from tasks.mad_ad.synthetic import build_tiny_llama

    llama = build_tiny_llama(tmp_path / "llama")
    model, mask = build_model_mad(tmp_path, llama)
    for gen in generators(model):
        assert torch.count_nonzero(gen.out.weight) == 0
        assert torch.all(gen.out.bias == identity_preactivation(mask.fusion, mask.bound))


def build_model_mad(tmp_path, llama):
    cfg = compose_cfg(
        [
            "experiment=mad_ad_tiny",
            "mask=multilayer",
            "mask.init=identity",
            f"model.llm_path={llama}",
        ],
        tmp_path,
    )
    mask, attention = core_configs(cfg)
    return instantiate(cfg.model, mask=mask, attention=attention), mask
