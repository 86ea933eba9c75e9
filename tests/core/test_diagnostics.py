"""Mask diagnostics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from stamp import MaskConfig, StampEncoder
from stamp.diagnostics import (
    STAT_NAMES,
    MaskStatistics,
    attention_entropy,
    generator_grad_norms,
    layer_statistics,
    token_dependence,
)


def test_token_dependence_hand_values() -> None:
    same_rows = torch.tensor([[1.0, 2.0, 3.0]]).expand(4, 3)[None]  # every query row equal
    assert token_dependence(same_rows) == 0.0
    # two rows [1, 1] and [3, 3]: per-column std (unbiased) sqrt(2); mean |M| = 2
    m = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    assert token_dependence(m) == pytest.approx(math.sqrt(2) / 2)
    # a padded third query row / key column must not count
    padded = torch.tensor([[[1.0, 1.0, 50.0], [3.0, 3.0, -50.0], [99.0, -99.0, 7.0]]])
    valid = torch.tensor([[True, True, False]])
    assert token_dependence(padded, valid, valid) == pytest.approx(math.sqrt(2) / 2)


def test_entropy_and_layer_statistics_hand_values() -> None:
    uniform = torch.full((1, 2, 3, 4), 0.25)
    assert attention_entropy(uniform) == pytest.approx(math.log(4))
    one_hot = torch.zeros(1, 1, 1, 4)
    one_hot[..., 2] = 1.0
    assert attention_entropy(one_hot) == 0.0
    mask = torch.tensor([[[-1.0, 2.0], [3.0, -4.0]]])
    stats = layer_statistics(mask, uniform[:, :, :2, :2] * 2, one_hot[..., :2])
    assert stats["mean_abs"] == pytest.approx(2.5)
    assert stats["neg_share"] == pytest.approx(0.5)
    assert stats["entropy"] == pytest.approx(math.log(2))
    assert stats["entropy_unmasked"] == 0.0


def test_statistics_of_an_encoder_per_layer() -> None:
    torch.manual_seed(0)
    x, pad = torch.randn(3, 10, 16), torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 7:] = True
    identity = StampEncoder(3, 16, 4, 32, n_max=10, mask=MaskConfig(depth=2, init="identity"))
    stats = MaskStatistics(identity.eval())
    stats.start()
    identity(x, key_padding_mask=pad)
    stats.stop()
    summary = stats.summary({"layers.0.mask_generator": 0.5})
    assert list(summary) == [f"layers.{i}.attn" for i in range(3)]
    for row in summary.values():
        assert set(row) == set(STAT_NAMES)
        # M == 1 exactly: the same attention with and without it, no token dependence
        assert row["entropy"] == pytest.approx(row["entropy_unmasked"], abs=1e-6)
        assert row["mean_abs"] == pytest.approx(1.0) and row["token_dependence"] == 0.0
    assert summary["layers.0.attn"]["grad_norm_first"] == 0.5
    assert summary["layers.1.attn"]["grad_norm_first"] is None  # no norm given for its generator
    assert all(not m.record for m in identity.modules() if hasattr(m, "record"))

    shared = StampEncoder(2, 16, 4, 32, n_max=10, mask=MaskConfig(type="global", init="kaiming"))
    stats = MaskStatistics(shared)
    stats.start()
    shared(x, key_padding_mask=pad).sum().backward()
    stats.stop()
    norms = generator_grad_norms(shared)
    summary = stats.summary(norms)
    assert set(norms) == {"mask_generator"} and norms["mask_generator"] > 0
    # both layers use the shared generator; kaiming makes M depend on the tokens
    assert [r["grad_norm_first"] for r in summary.values()] == [norms["mask_generator"]] * 2
    assert all(r["token_dependence"] > 0.1 for r in summary.values())
    assert all(r["entropy"] != pytest.approx(r["entropy_unmasked"]) for r in summary.values())
