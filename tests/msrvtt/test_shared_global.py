"""SwinBERT with mask=global: the shared generator runs once per encoding (ACL reading, default)
or once per BERT layer on that layer's input (mask.global_input=layer, the rebuttal's)."""

from __future__ import annotations

import pytest
import torch

from stamp import MaskConfig
from tests.msrvtt.conftest import MAX_TEXT
from tests.msrvtt.test_model import _frames


@pytest.mark.parametrize("global_input", ["encoder", "layer"])
def test_global_generator_calls_follow_the_reading(make_model, global_input):
    model = make_model(mask_cfg=MaskConfig(type="global", depth=2, global_input=global_input))
    model.eval()
    inputs = []
    model.mask_generator.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    ids = torch.full((1, MAX_TEXT), model.pad_id)
    with torch.no_grad():
        model.encode(model.encode_video(_frames(batch=1)), ids, torch.tensor([3]))
    assert len(inputs) == (len(model.layers) if global_input == "layer" else 1)
    if global_input == "layer":  # each call reads another layer's input
        assert not torch.allclose(inputs[0], inputs[1])
