"""``stamp.inject(model, mask=MaskConfig(type="global"))``: one generator on the first targeted
layer's input, its M shared by every targeted layer (issue 23, item 2)."""

from __future__ import annotations

import pytest
import torch

import stamp
from stamp import MaskConfig, MaskGenerator, injected_modules, record_attention
from tests.inject.models import FAMILIES, run


def _global(**kw) -> MaskConfig:
    return MaskConfig(**{"type": "global", "init": "identity", **kw})


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_global_injection_starts_at_the_original_function(name):
    family = FAMILIES[name]
    expected = run(family, family.build("eager").eval())
    model = stamp.inject(family.build("eager").eval(), mask=_global())
    torch.testing.assert_close(run(family, model), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_one_generator_on_the_first_layer_input_is_shared(name):
    family = FAMILIES[name]
    model = stamp.inject(family.build("eager").eval(), mask=_global(init="kaiming"))
    generators = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert len(generators) == 1
    stamps = list(injected_modules(model).values())
    assert len(stamps) == family.layers and stamps[0].generator is generators[0]
    first = list(injected_modules(model))[0]
    assert all(k.startswith(f"{first}.stamp.") for k in stamp.stamp_state_dict(model))
    calls = []
    generators[0].register_forward_hook(lambda m, i, o: calls.append(o))
    with torch.no_grad(), record_attention(model) as records:
        run(family, model)
    assert len(calls) == 1  # computed once, at the first targeted layer
    masks = [r["mask"] for r in records]
    assert len(masks) == family.layers
    for mask in masks:
        torch.testing.assert_close(mask, calls[0].to(mask.dtype))


def test_global_input_layer_reapplies_the_shared_generator():
    family = FAMILIES["bert"]
    model = stamp.inject(
        family.build("eager").eval(), mask=_global(init="kaiming", global_input="layer")
    )
    (generator,) = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    calls = []
    generator.register_forward_hook(lambda m, i, o: calls.append(o))
    with torch.no_grad():
        run(family, model)
    assert len(calls) == family.layers
    assert not torch.allclose(calls[0], calls[1])  # each layer's own input


def test_global_injection_trains_saves_and_loads(tmp_path):
    family = FAMILIES["bert"]
    model = stamp.inject(family.build("eager").eval(), mask=_global())
    stamp.mark_only_stamp_trainable(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    run(family, model).pow(2).mean().backward()
    opt.step()
    model.eval()
    stamp.save(model, tmp_path)
    fresh = stamp.load(family.build("eager").eval(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(run(family, fresh), run(family, model))
