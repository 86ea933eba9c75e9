"""One way into a timm ViT: ``stamp.inject``, the ImageNet task's ``StampViT`` (and MAE, its
subclass) and the AVE task's frozen ViT all turn timm's own ``Attention`` into the same
``StampTimmAttention`` through ``stamp_timm_attention``; with the same weights and STAMP at its
identity start they give timm's logits."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer

import stamp
from stamp.injection import attention_modules
from stamp.injection.timm_vit import StampTimmAttention
from tasks.ave.models.backbone import FrozenViT
from tasks.imagenet.mae import MaskedAutoencoderViT
from tasks.imagenet.model import StampViT

TINY = dict(img_size=32, patch_size=16, num_classes=5, embed_dim=32, depth=2, num_heads=4)


def test_every_entry_point_makes_the_same_timm_attention():
    torch.manual_seed(0)
    timm_vit = VisionTransformer(
        **TINY, global_pool="avg", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)
    ).eval()
    task_vit = StampViT(**TINY, mask={"type": "multilayer", "init": "identity"}).eval()
    task_vit.load_state_dict(timm_vit.state_dict(), strict=False)
    injected = stamp.inject(VisionTransformer(**TINY, global_pool="avg").eval())
    mae = MaskedAutoencoderViT(
        img_size=32,
        patch_size=16,
        embed_dim=32,
        depth=1,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mask={"type": "multilayer"},
    )
    ave = FrozenViT("base", depth=1, img_size=32, mask={"type": "multilayer"}, n_tokens=5)
    for model in (task_vit, injected, mae, ave.v):
        assert {type(b.attn) for b in model.blocks} == {StampTimmAttention}
    assert all(b.attn.stamp is None for b in task_vit.blocks)  # M comes from the block
    assert all(b.attn.stamp is not None for b in injected.blocks)  # M from its own generator
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(task_vit(x), timm_vit(x), atol=1e-5, rtol=1e-5)
    # a STAMP block is not a target of stamp.inject: it has its STAMP already
    assert attention_modules(task_vit) == {}


def test_stamp_vit_passes_the_fusion_order_to_its_timm_attention():
    """mask.fusion_order reaches the attention (it was ignored before the shared timm path)."""
    for order in ("mask_first", "bias_first"):
        vit = StampViT(**TINY, mask={"type": "multilayer", "fusion_order": order})
        assert {
            m.fusion_order.value for m in vit.modules() if isinstance(m, StampTimmAttention)
        } == {order}
