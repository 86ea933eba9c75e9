"""Inputs that used to fail obscurely or be ignored silently now stop with a message naming what
is wrong: an unknown ``+mask.*`` key, a demo sequence longer than the model's positions, a STAMP
adapter loaded into a model with another layer set."""

from __future__ import annotations

import pytest
import torch

import stamp
from tasks.common.runtime.pipeline import core_configs
from tests.helpers import compose_cfg, run_cfg
from tests.robustness.conftest import DEMO


@pytest.mark.parametrize(
    "override,key", [("+mask.foo=1", "mask.foo"), ("+attention.blocksize=8", "attention.blocksize")]
)
def test_unknown_mask_or_attention_key_is_refused(tmp_path, override, key):
    """``+mask.foo=1`` used to be dropped silently by the typed schema."""
    cfg = compose_cfg([*DEMO, override], tmp_path)
    with pytest.raises(ValueError, match=f"unknown setting {key}: ") as info:
        run_cfg(cfg)
    assert "depth" in str(info.value) or "backend" in str(info.value)  # the valid ones listed
    assert not (tmp_path / "checkpoints").exists()
    core_configs(compose_cfg(DEMO, tmp_path))  # the known keys pass


def test_demo_sequence_longer_than_the_positions_names_the_settings(tmp_path):
    """data.visual_len past model.max_visual used to end in a raw tensor-size mismatch."""
    cfg = compose_cfg([*DEMO, "data.visual_len=[12,40]", "model.max_visual=24"], tmp_path)
    with pytest.raises(ValueError) as info:
        run_cfg(cfg)
    message = str(info.value)
    assert "visual stream has" in message and "more than the model's 24 positions" in message
    assert "model.max_visual" in message and "data.visual_len[1]" in message


def test_stamp_load_into_a_model_with_another_layer_set_is_refused(tmp_path):
    """A 2-layer adapter loaded into a 3-layer model used to leave layer 2 without STAMP."""
    from transformers import BertConfig, BertModel

    def bert(layers: int) -> BertModel:
        torch.manual_seed(0)
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=100,
            attn_implementation="eager",
        )
        return BertModel(cfg).eval()

    stamp.save(stamp.inject(bert(2)), tmp_path / "adapter")
    for model in (bert(3), stamp.inject(bert(3), targets=["layer.0", "layer.1"])):
        with pytest.raises(ValueError, match="another set of attention layers") as info:
            stamp.load(model, tmp_path / "adapter")
        assert "only in the model: encoder.layer.2.attention.self" in str(info.value)
    stamp.load(bert(2), tmp_path / "adapter")  # the same layer set loads
