"""The self- and cross-attention layers are one ``StampLayer``; its ``official_t2v`` variant
(QD-DETR's T2V layer) keeps the official residual order and module names."""

from __future__ import annotations

import torch
from torch import nn

from stamp import MaskConfig, MaskPlan, StampCrossAttentionLayer, StampEncoderLayer, StampLayer


def _layer(**kw) -> StampCrossAttentionLayer:
    torch.manual_seed(0)
    mask = MaskConfig(type="multilayer")
    plan = MaskPlan(mask, dim=16, num_heads=2, n_max=5)
    layer = StampCrossAttentionLayer(16, 2, 32, plan=plan, **kw)
    for p in layer.parameters():  # away from the identity start, so every term counts
        nn.init.normal_(p, std=0.3)
    return layer.eval()


def test_official_t2v_residual_order_by_hand():
    layer = _layer(official_t2v=True)
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    m = layer.mask_generator(x, n_keys=5, context=ctx)
    x1 = x + layer.attn(x, ctx, mask=m)
    expected = layer.norm2(x1 + layer.ffn(layer.norm1(x1)))
    torch.testing.assert_close(layer(x, ctx), expected)
    names = {n.split(".")[0] for n, _ in layer.named_parameters()}
    assert names == {"attn", "mask_generator", "norm1", "norm2", "ffn"}


def test_default_post_norm_order_by_hand_and_one_layer_class():
    layer = _layer()
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    m = layer.mask_generator(x, n_keys=5, context=ctx)
    x1 = layer.attn_block.norm(x + layer.attn(x, ctx, mask=m))
    expected = layer.ffn_block.norm(x1 + layer.ffn(x1))
    torch.testing.assert_close(layer(x, ctx), expected)
    assert not torch.allclose(layer(x, ctx), _layer(official_t2v=True)(x, ctx))
    assert isinstance(layer, StampLayer) and issubclass(StampEncoderLayer, StampLayer)
