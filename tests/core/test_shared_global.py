"""The two readings of "global": the ACL paper's (M computed once from the encoder input, the
same M in every layer; the default) and the rebuttal's (one shared generator re-applied to every
layer's input, `mask.global_input=layer`), checked against a hand-written loop."""

from __future__ import annotations

import pytest
import torch

from stamp import GlobalInput, MaskConfig, StampEncoder, record_attention
from stamp.mask import mask_parameter_count

DIM, HEADS, FFN, N_MAX, LAYERS = 16, 4, 32, 12, 3


def encoder(global_input: str) -> StampEncoder:
    torch.manual_seed(0)
    mask = MaskConfig(type="global", depth=2, init="kaiming", global_input=global_input)
    return StampEncoder(LAYERS, DIM, HEADS, FFN, n_max=N_MAX, mask=mask, dropout=0.0).eval()


def hand_written(enc: StampEncoder, x: torch.Tensor, per_layer: bool) -> torch.Tensor:
    """The two formulas written out: M = F(x_0) for every layer, or M_l = F(x_l)."""
    mask = enc.mask_generator(x)
    for layer in enc.layers:
        if per_layer:
            mask = enc.mask_generator(x)
        x = layer(x, mask=mask)
    return x


def test_the_acl_reading_is_the_default():
    assert MaskConfig().global_input is GlobalInput.encoder
    assert MaskConfig(type="global").global_input is GlobalInput.encoder
    assert not MaskConfig(type="global").global_per_layer
    assert MaskConfig(type="global", global_input="layer").global_per_layer


@torch.no_grad()
def test_the_two_readings_follow_their_formulas_and_differ():
    x = torch.randn(2, 7, DIM)
    once, per_layer = encoder("encoder"), encoder("layer")
    per_layer.load_state_dict(once.state_dict())  # the same weights: only the reading differs
    assert mask_parameter_count(once) == mask_parameter_count(per_layer)  # one generator each
    torch.testing.assert_close(once(x), hand_written(once, x, per_layer=False))
    torch.testing.assert_close(per_layer(x), hand_written(per_layer, x, per_layer=True))
    assert (once(x) - per_layer(x)).abs().max() > 1e-3
    with record_attention(once) as acl, record_attention(per_layer) as rebuttal:
        once(x), per_layer(x)
    assert all(torch.equal(acl[0]["mask"], r["mask"]) for r in acl[1:])  # one M for all layers
    assert torch.equal(rebuttal[0]["mask"], acl[0]["mask"])  # layer 0 reads the encoder input
    assert not torch.allclose(rebuttal[1]["mask"], rebuttal[0]["mask"])  # then its own input


def test_global_input_needs_the_global_mask_and_valid_choices():
    with pytest.raises(ValueError, match="mask.global_input=layer re-applies the one generator"):
        MaskConfig(type="multilayer", global_input="layer")
    with pytest.raises(ValueError, match="choose one of: encoder, layer"):
        MaskConfig(type="global", global_input="every")


def test_gradients_reach_the_shared_generator_from_every_layer():
    enc = encoder("layer").train()
    x = torch.randn(2, 7, DIM)
    enc(x).sum().backward()
    grads = [p.grad for p in enc.mask_generator.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("global_input", ["encoder", "layer"])
def test_every_task_stack_with_a_global_generator_follows_the_reading(global_input):
    """QD-DETR's T2V + self-attention groups and the ViT build the shared generator themselves:
    each calls it once per forward (encoder) or once per layer (layer)."""
    from stamp import MaskGenerator
    from tasks.imagenet.model import StampViT
    from tasks.qvhighlights.model import QDDETR
    from tests.qvhighlights.test_model import INPUTS, TINY, random_batch

    mask = MaskConfig(type="global", depth=2, global_input=global_input)
    qdetr = QDDETR(12, 6, mask=mask, **TINY).eval()
    vit = StampViT(
        img_size=32, patch_size=16, embed_dim=16, depth=3, num_heads=2, num_classes=3, mask=mask
    ).eval()
    calls: dict[int, int] = {}
    for model in (qdetr, vit):
        for gen in (m for m in model.modules() if isinstance(m, MaskGenerator)):
            gen.register_forward_hook(
                lambda m, *_: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)
            )
    batch = random_batch()
    with torch.no_grad():
        qdetr(**{k: batch[k] for k in INPUTS}, with_negative=False)
        vit(torch.randn(2, 3, 32, 32))
    per_layer = global_input == "layer"
    assert calls[id(qdetr.t2v_mask_generator)] == (2 if per_layer else 1)  # 2 T2V layers
    assert calls[id(qdetr.encoder.mask_generator)] == (2 if per_layer else 1)  # 2 self layers
    assert calls[id(vit.mask_generator)] == (3 if per_layer else 1)  # 3 blocks
