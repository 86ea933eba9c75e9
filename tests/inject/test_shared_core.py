"""The native layers (``StampAttention``) and ``stamp.inject``'s layers (``InjectedStamp``, on
the transformers and the timm paths) run one masked-attention core,
``RecordsAttention.masked_attention``: patching that one function sees every path go through it."""

from __future__ import annotations

import pytest
import torch

import stamp
from stamp import (
    AttentionConfig,
    MaskConfig,
    MaskPlan,
    RecordsAttention,
    StampCrossAttentionLayer,
    StampEncoderLayer,
)
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
    plan = MaskPlan(mask, dim=32, num_heads=4, n_max=6)
    StampEncoderLayer(32, 4, plan=plan)(x)
    StampCrossAttentionLayer(32, 4, plan=plan)(x, x)
    assert calls == ["StampAttention", "StampAttention"]

    family = FAMILIES[name]
    model = family.build("eager").eval()
    stamp.inject(model)
    with torch.no_grad():
        run(family, model)
    assert calls[2:] == ["InjectedStamp"] * family.layers


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_injected_flex_on_cpu_follows_the_core_training_rule(name):
    """The core's flex-on-CPU rule holds for injected layers: a training step stops with the
    core's message (``flex_cpu_training=error``) or runs the eager path (``=eager``)."""
    family = FAMILIES[name]
    models = {}
    for key, attention in {
        "error": AttentionConfig(backend="flex"),
        "eager": AttentionConfig(backend="flex", flex_cpu_training="eager"),
        "reference": "eager",
    }.items():
        models[key] = family.build("eager").eval()
        stamp.inject(models[key], attention=attention)
    with pytest.raises(RuntimeError, match="only the forward of flex attention on CPU"):
        run(family, models["error"])
    out = run(family, models["eager"])
    out.float().sum().backward()
    torch.testing.assert_close(out, run(family, models["reference"]))
    grads = [p.grad for n, p in models["eager"].named_parameters() if ".stamp." in n]
    assert grads and all(g is not None for g in grads)
