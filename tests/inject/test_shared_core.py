"""The native layers (``StampAttention``) and ``stamp.inject``'s layers (``InjectedStamp``, on
the transformers and the timm paths) run one masked-attention core,
``RecordsAttention.masked_attention``: patching that one function sees every path go through it."""

from __future__ import annotations

import pytest
import torch

import stamp
from stamp import MaskConfig, RecordsAttention, StampCrossAttentionLayer, StampEncoderLayer
from tests.inject.models import FAMILIES, run


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_native_and_injected_layers_call_the_same_core(name, monkeypatch):
    calls: list[str] = []
    core = RecordsAttention.masked_attention

    def spy(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return core(self, *args, **kwargs)

    monkeypatch.setattr(RecordsAttention, "masked_attention", spy)
    mask = MaskConfig(type="multilayer")
    x = torch.randn(2, 6, 32)
    StampEncoderLayer(32, 4, mask=mask, n_max=6, own_generator=True)(x)
    StampCrossAttentionLayer(32, 4, mask=mask, n_max_keys=6, own_generator=True)(x, x)
    assert calls == ["StampAttention", "StampAttention"]

    family = FAMILIES[name]
    model = family.build("eager").eval()
    stamp.inject(model)
    with torch.no_grad():
        run(family, model)
    assert calls[2:] == ["InjectedStamp"] * family.layers
