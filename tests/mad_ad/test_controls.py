"""Table 3's controls start at the base model's function and match STAMP's parameter count."""

from __future__ import annotations

import pytest
import torch

from stamp import (
    MaskConfig,
    MaskGenerator,
    MaskPlan,
    StampEncoder,
    StampEncoderLayer,
    mask_parameter_count,
)
from stamp.mask import ResidualMLP, matched_linear_count, mlp_stack

D, N, HEADS = 32, 10, 4


def test_residual_mlp_is_the_identity_at_init_and_trains():
    torch.manual_seed(0)
    control = ResidualMLP(D, 15)
    x = torch.randn(3, N, D)
    assert torch.equal(control(x), x)
    assert sum(p.numel() for p in control.parameters()) == 15 * (D * D + D)
    loss = (control(x) - 2 * x).pow(2).mean()
    loss.backward()
    last = control.net[-1]
    assert last.weight.grad.abs().sum() > 0  # the zero layer receives gradient at once
    # He init keeps the hidden activations at the input's scale through the 14 ReLU layers
    h = control.net[:-1](x)
    assert 0.1 < h.pow(2).mean().sqrt() / x.pow(2).mean().sqrt() < 10


def test_plain_stack_is_the_papers_control_at_default_init():
    """mask.linear_control=plain: W_15 ReLU(... W_1 a) replaces the attention output a, every
    Linear at torch's default init: the same weights as a hand-built nn.Sequential drawn from
    the same seed, and the same function (no residual)."""
    torch.manual_seed(0)
    plain = mlp_stack(D, 15, residual=False)
    torch.manual_seed(0)
    layers = []
    for i in range(15):
        layers += [torch.nn.Linear(D, D)] + ([torch.nn.ReLU()] if i < 14 else [])
    reference = torch.nn.Sequential(*layers)
    x = torch.randn(3, N, D)
    assert torch.equal(plain(x), reference(x))
    assert sum(p.numel() for p in plain.parameters()) == 15 * (D * D + D)
    # what the reviewer suspected: through 14 ReLU layers at default init the output no longer
    # depends on the token (it is the last biases' constant), unlike the residual form
    out = plain(x)
    assert out.std(dim=1).mean() < 1e-3 * x.std()
    assert torch.equal(ResidualMLP(D, 15)(x), x)


def test_both_control_forms_have_the_same_parameters_in_a_layer():
    torch.manual_seed(0)
    counts = {}
    for form in ("residual", "plain"):
        mask = MaskConfig(type="extra_linear", depth=4, linear_control=form)
        plan = MaskPlan(mask, dim=D, num_heads=HEADS, num_extra_linear=15)
        layer = StampEncoderLayer(D, HEADS, 4 * D, plan=plan, dropout=0.0)
        counts[form] = mask_parameter_count(layer)
        assert layer.extra.residual is (form == "residual")
    assert counts["residual"] == counts["plain"] == 15 * (D * D + D)
    with pytest.raises(ValueError, match="mask.linear_control='skip' is not valid"):
        MaskConfig(type="extra_linear", linear_control="skip")


def _copy_shared(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    assert missing  # only the control's own parameters are left at their init


@pytest.mark.parametrize("norm_first", [True, False])
def test_extra_linear_layer_equals_the_layer_without_it_at_init(norm_first):
    torch.manual_seed(0)
    kwargs = dict(dropout=0.0, norm_first=norm_first)
    base = StampEncoderLayer(D, HEADS, 4 * D, plan=MaskPlan(MaskConfig(type="none")), **kwargs)
    plan = MaskPlan(MaskConfig(type="extra_linear"), dim=D, num_extra_linear=15)
    base, control = base.eval(), StampEncoderLayer(D, HEADS, 4 * D, plan=plan, **kwargs).eval()
    _copy_shared(base, control)
    x = torch.randn(2, N, D)
    pad = torch.zeros(2, N, dtype=torch.bool)
    pad[1, -3:] = True
    assert torch.equal(control(x, key_padding_mask=pad), base(x, key_padding_mask=pad))


@pytest.mark.parametrize("count", [None, 3])
def test_extra_transformer_layers_equal_the_base_encoder_at_init(count):
    torch.manual_seed(0)
    common = dict(n_max=N, dropout=0.0, norm_first=True, final_norm=True, activation="gelu")
    base = StampEncoder(2, D, HEADS, mask=MaskConfig(type="none", depth=4), **common).eval()
    control = StampEncoder(
        2, D, HEADS, mask=MaskConfig(type="extra_layers", depth=4), num_extra_layers=count, **common
    ).eval()
    _copy_shared(base, control)
    expected_extra = count or control.num_extra_layers
    assert len(control.layers) == 2 + expected_extra and expected_extra >= 1
    x = torch.randn(2, N, D)
    assert torch.equal(control(x), base(x))
    # the control is trainable: the zero output projections receive gradient
    control.train()
    control(x).pow(2).mean().backward()
    assert control.layers[-1].attn.proj.weight.grad.abs().sum() > 0


def test_controls_are_parameter_matched_to_multilayer_stamp():
    depth, layers = 16, 4
    stamp = StampEncoder(layers, D, HEADS, n_max=N, mask=MaskConfig(type="multilayer", depth=depth))
    generator = MaskGenerator.num_parameters(D, N, depth)
    assert mask_parameter_count(stamp) == layers * generator
    linear = StampEncoder(
        layers, D, HEADS, n_max=N, mask=MaskConfig(type="extra_linear", depth=depth)
    )
    per_layer = matched_linear_count(D, N, depth)
    assert mask_parameter_count(linear) == layers * per_layer * (D * D + D)
    # within half a Linear(D, D) of the generator, per attention module
    assert abs(per_layer * (D * D + D) - generator) <= (D * D + D) / 2
    extra = StampEncoder(
        layers, D, HEADS, n_max=N, mask=MaskConfig(type="extra_layers", depth=depth)
    )
    layer_params = sum(p.numel() for p in extra.layers[-1].parameters())
    assert abs(mask_parameter_count(extra) - layers * generator) <= layer_params / 2
