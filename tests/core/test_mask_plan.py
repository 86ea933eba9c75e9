"""``stamp.MaskPlan``: the one place that knows what each ``mask=`` mode places in a network and
which M each layer gets (issue 23, item 1)."""

from __future__ import annotations

import logging

import pytest
import torch

from stamp import MaskConfig, MaskGenerator, MaskPlan, SparseMask, mask_memory_estimate
from stamp.mask import ResidualMLP, generator_parameters, matched_linear_count
from stamp.plan import CROSS_ATTENTION_PARTS, GENERATOR_PARTS

D, H, N = 16, 2, 6


def plan(type_: str, **kw) -> MaskPlan:
    return MaskPlan(MaskConfig(type=type_, depth=2), dim=D, num_heads=H, n_max=N, **kw)


@pytest.mark.parametrize(
    ("type_", "shared", "own", "control", "sparse"),
    [
        ("none", False, False, False, False),
        ("global", True, False, False, False),
        ("multilayer", False, True, False, False),
        ("sparse", False, False, False, True),
        ("extra_linear", False, False, True, False),
        ("extra_layers", False, False, False, False),
    ],
)
def test_each_mode_places_its_parts(type_, shared, own, control, sparse):
    p = plan(type_)
    assert isinstance(p.shared_generator(), MaskGenerator) is shared
    generator, extra = p.layer_parts()
    assert isinstance(generator, MaskGenerator) is own
    assert isinstance(extra, ResidualMLP) is control
    assert isinstance(p.sparse_mask(), SparseMask) is sparse
    assert (p.extra_layer_count(2, lambda: torch.nn.Linear(D, D)) > 0) is (type_ == "extra_layers")


def test_the_control_matches_one_generator_and_takes_an_explicit_count():
    control = plan("extra_linear").layer_control()
    reference = generator_parameters(MaskConfig(depth=2), D, N, H)
    count = matched_linear_count(D, N, 2, reference=reference)
    assert sum(p.numel() for p in control.parameters()) == count * (D * D + D)
    assert control.is_mask_control
    assert len([m for m in plan("extra_linear", num_extra_linear=3).layer_control().net]) == 5
    assert plan("extra_layers", num_extra_layers=7).extra_layer_count(2, lambda: None) == 7
    with pytest.raises(ValueError, match="num_extra_layers must be >= 1"):
        plan("extra_layers", num_extra_layers=0)


def test_unsupported_types_fail_naming_the_network_or_fall_back():
    with pytest.raises(ValueError, match=r"task=x supports mask types \['none', 'global', 'mul"):
        plan("sparse", places=GENERATOR_PARTS, where="task=x")
    with pytest.raises(ValueError, match="sdpa cannot fuse a multiplicative mask"):
        MaskPlan(MaskConfig(type="multilayer"), {"backend": "sdpa"}, dim=D, n_max=N)
    fallback = plan("extra_layers", places=CROSS_ATTENTION_PARTS, fallback=True)
    assert fallback.mask.type.value == "none" and not fallback.parts


def test_fallback_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="stamp.plan"):
        plan("sparse", places=CROSS_ATTENTION_PARTS, fallback=True, where="the T2V layers")
    assert "mask=sparse has no form in the T2V layers" in caplog.text


@pytest.mark.parametrize("global_input", ["encoder", "layer"])
def test_layer_mask_follows_the_global_reading(global_input):
    p = MaskPlan(MaskConfig(type="global", global_input=global_input), dim=D, n_max=N)
    calls: list[torch.Tensor] = []

    def shared(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return x.sum() * torch.ones(1)

    inputs = [torch.full((1,), float(i)) for i in range(3)]
    mask = None
    got = []
    for i, x in enumerate(inputs):
        mask = p.layer_mask(i, x, mask, shared=shared)
        got.append(float(mask))
    if global_input == "encoder":  # once from the network input, then reused
        assert got == [0.0, 0.0, 0.0] and len(calls) == 1
    else:  # the same generator on each layer's own input
        assert got == [0.0, 1.0, 2.0] and len(calls) == 3
    assert p.layer_mask(1, inputs[1], mask, own=lambda x: x + 10) == 11  # own first
    assert plan("none").layer_mask(0, inputs[0]) is None


def test_attention_only_and_resized_keep_the_checked_settings():
    p = MaskPlan(MaskConfig(type="multilayer", fusion="add"), dim=D, n_max=N)
    assert p.attention_only().layer_generator() is None
    assert p.attention_only().mask.fusion.value == "add"
    wide = p.resized(2 * D, 4).layer_generator()
    assert wide.first_linear.in_features == 2 * D and p.layer_generator().n_max == N


def test_memory_estimate_counts_weights_state_and_activations():
    net = torch.nn.Sequential(plan("multilayer").layer_generator())
    need, params, deepest = mask_memory_estimate(net, batch_size=4)
    n = sum(p.numel() for p in net.parameters())
    # depth 2: one hidden layer of width D (output + ReLU mask) and M, for 4 x N tokens
    assert (params, deepest) == (n, 2)
    assert need == 16 * n + 4 * (4 * N * (2 * D * 1 + N))
