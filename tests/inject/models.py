"""Tiny randomly initialised models of every family ``stamp.inject`` supports, and one input
batch each (hidden 32, 2 layers, 4 heads)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


@dataclass
class Family:
    name: str
    build: Callable[[str], nn.Module]  # attn implementation -> model (same weights per seed)
    inputs: Callable[[], dict]
    output: Callable[[object], Tensor]
    layers: int = 2  # attention modules inject() targets by default


def _ids(n: int = 10, vocab: int = 100) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, n), generator=g)
    attn = torch.ones(2, n, dtype=torch.long)
    attn[1, n - 3 :] = 0  # right padding in the second sample
    return ids, attn


def _pixels() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def bert(impl: str) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, max_position_embeddings=32, attn_implementation=impl, **TINY)
    return BertModel(cfg)


def vit(impl: str) -> nn.Module:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return ViTModel(ViTConfig(image_size=16, patch_size=4, attn_implementation=impl, **TINY))


def _clip_text_config(impl: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=100, max_position_embeddings=16, attn_implementation=impl, **TINY
    )


def _clip_vision_config(impl: str):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=16, patch_size=4, attn_implementation=impl, **TINY)


def clip_text(impl: str) -> nn.Module:
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(_clip_text_config(impl))


def clip_vision(impl: str) -> nn.Module:
    from transformers import CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(_clip_vision_config(impl))


def clip(impl: str) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=_clip_text_config(impl).to_dict(),
        vision_config=_clip_vision_config(impl).to_dict(),
        projection_dim=16,
        attn_implementation=impl,
    )
    return CLIPModel(cfg)


def llama_config(impl: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=100,
        max_position_embeddings=64,
        num_key_value_heads=2,  # grouped-query attention
        attn_implementation=impl,
        **TINY,
    )


def llama(impl: str) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(impl))


def timm_vit(impl: str) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5
    )
    for block in model.blocks:  # timm's own switch between its SDPA and eager paths
        block.attn.fused_attn = impl == "sdpa"
    return model


def _text() -> dict:
    ids, attn = _ids()
    return {"input_ids": ids, "attention_mask": attn}


FAMILIES = {
    "bert": Family("bert", bert, _text, lambda o: o.last_hidden_state),
    "vit": Family("vit", vit, lambda: {"pixel_values": _pixels()}, lambda o: o.last_hidden_state),
    "clip_text": Family("clip_text", clip_text, _text, lambda o: o.last_hidden_state),
    "clip_vision": Family(
        "clip_vision",
        clip_vision,
        lambda: {"pixel_values": _pixels()},
        lambda o: o.last_hidden_state,
    ),
    "clip": Family(
        "clip",
        clip,
        lambda: {**_text(), "pixel_values": _pixels()},
        lambda o: torch.cat([o.text_embeds, o.image_embeds]),
        layers=4,
    ),
    "llama": Family("llama", llama, _text, lambda o: o.logits),
    "timm_vit": Family("timm_vit", timm_vit, lambda: {"x": _pixels()}, lambda o: o),
}


def run(family: Family, model: nn.Module) -> Tensor:
    inputs = family.inputs()
    if family.name == "timm_vit":
        return model(inputs["x"])
    return family.output(model(**inputs))
