"""mask.init: PyTorch's default collapses deep generators; kaiming keeps M token-dependent;
identity starts M exactly at the fusion's identity and still trains every layer."""

from __future__ import annotations

import pytest
import torch

from stamp import AttendSpec, MaskConfig, MaskGenerator, StampEncoder, eager_attention
from stamp.diagnostics import token_dependence


def _mask(init: str, depth: int, dim: int, n: int, **kw) -> torch.Tensor:
    torch.manual_seed(0)
    gen = MaskGenerator(dim, n, depth, init=init, **kw)
    with torch.no_grad():
        return gen(torch.randn(2, n, dim))


@pytest.mark.parametrize("depth, dim, n", [(16, 768, 66), (32, 256, 76)])
def test_kaiming_keeps_the_mask_token_dependent_at_paper_depths(depth, dim, n) -> None:
    assert token_dependence(_mask("kaiming", depth, dim, n)) >= 0.1
    # PyTorch's default init: M is (numerically) the last layer's bias, the same for every token
    assert token_dependence(_mask("torch", depth, dim, n)) < 1e-3


@pytest.mark.parametrize(
    "fusion, bound, expected",
    [("mul", "none", 1.0), ("add", "none", 0.0), ("mul", "softplus", 1.0)],
)
def test_identity_init_outputs_the_fusion_identity(fusion, bound, expected) -> None:
    m = _mask("identity", 4, 32, 10, fusion=fusion, bound=bound)
    torch.testing.assert_close(m, torch.full_like(m, expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "fusion, bound", [("mul", "sigmoid"), ("add", "sigmoid"), ("add", "softplus")]
)
def test_identity_init_refuses_unreachable_identities(fusion, bound) -> None:
    with pytest.raises(ValueError, match=f"mask.init=identity: mask.bound={bound} cannot"):
        MaskGenerator(8, 4, 2, init="identity", fusion=fusion, bound=bound)


def test_identity_init_keeps_the_encoder_function_and_trains_the_first_layer() -> None:
    torch.manual_seed(0)
    kwargs = dict(n_max=12, dropout=0.0)
    plain = StampEncoder(2, 16, 4, 32, mask=MaskConfig(type="none"), **kwargs)
    stamp = StampEncoder(2, 16, 4, 32, mask=MaskConfig(depth=3, init="identity"), **kwargs)
    missing = stamp.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("mask_generator" in k for k in missing)
    x = torch.randn(3, 12, 16)
    torch.testing.assert_close(stamp(x), plain(x), rtol=0, atol=1e-6)

    first = stamp.layers[0].mask_generator.first_linear
    opt = torch.optim.SGD(stamp.parameters(), lr=0.1)
    stamp(x).pow(2).mean().backward()  # step 0: the zero last layer blocks the inner gradient
    assert first.weight.grad.abs().max() == 0
    opt.step()
    opt.zero_grad()
    stamp(x).pow(2).mean().backward()
    assert first.weight.grad.norm() > 0


def test_bias_first_fusion_order_is_the_rebuttal_formula() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    m, bias = torch.rand(2, 5, 5) + 0.5, torch.randn(5, 5)
    logits = q @ k.transpose(-2, -1) / 2.0
    for order, expected in (
        ("mask_first", logits * m[:, None] + bias),
        ("bias_first", (logits + bias) * m[:, None]),
    ):
        out, _ = eager_attention(
            q, k, v, AttendSpec(mask=m, fusion="mul", fusion_order=order, attn_bias=bias)
        )
        torch.testing.assert_close(out, expected.softmax(-1) @ v)
    # without a bias, or with fusion=add, the order does not matter
    a, _ = eager_attention(
        q, k, v, AttendSpec(mask=m, fusion="add", fusion_order="bias_first", attn_bias=bias)
    )
    b, _ = eager_attention(q, k, v, AttendSpec(mask=m, fusion="add", attn_bias=bias))
    torch.testing.assert_close(a, b)
