"""The AVE models of the MA-AVT supplement (Tables 7-9): MA-AVT, LAVISH, LAVISH* and MBT on a
frozen timm ViT, ported from enyac-group/MA-AVT ``models/all_nets.py``.

``build_model(model_cfg, mask_cfg, attention_cfg)`` reads the task's ``model`` node; every key
it does not find takes the official default listed in ``DEFAULTS`` / ``MODEL_DEFAULTS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stamp import AttentionConfig, MaskConfig
from tasks.ave.models.backbone import VIT_NAMES, FrozenViT
from tasks.ave.models.base import AVEModel, AVEOutput
from tasks.ave.models.lavish import LAVISH, VisualAdapter
from tasks.ave.models.ma_avt import MAAVT, SelfAttention, official_decision
from tasks.ave.models.mbt import MBT

MODELS = ("ma_avt", "lavish", "lavish_large", "mbt")
DEFAULTS: dict[str, Any] = {
    "vit": "base",
    "vit_checkpoint": None,
    "require_weights": False,
    "vit_depth": None,
    "img_size": 224,
    "num_classes": 29,
    "bg_label": 28,
    "mask_input": "block",
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "ma_avt": {
        "num_tokens": 5,
        "lsa": True,
        "lsa_heads": 8,
        "bg_cls": True,
        "contrastive": "blockwise_sep",
        "temperature": 0.07,
        "proj_dim": 512,
        "layerwise_token": None,
    },
    "lavish": {
        "adapter_reduction": 8,
        "adapter_tokens": 2,
        "num_conv_group": 2,
        "adapter_bn": True,
        "adapter_gate": True,
        "adapter_ln_before": True,
        "adapter_ln_post": True,
        "head_hidden": 512,
        "loss": "ce",
        "bottleneck_dim": None,
        "adapter_extra_convs": 0,
    },
    "mbt": {"bottleneck_tokens": 5, "fusion_layer": None, "full_tune": False, "head_hidden": 512},
}
# LAVISH* (Table 7): a deeper, wider bottleneck (see tasks/ave/models/lavish.py)
MODEL_DEFAULTS["lavish_large"] = {
    **MODEL_DEFAULTS["lavish"],
    "bottleneck_dim": 152,
    "adapter_extra_convs": 1,
}


def _settings(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}; choose one of: {', '.join(MODELS)}")
    own = {**DEFAULTS, **MODEL_DEFAULTS[name]}
    return {k: cfg[k] if k in cfg else v for k, v in own.items()}


def build_model(
    cfg: Mapping[str, Any] | Any,
    mask_cfg: MaskConfig | Mapping[str, Any] | None = None,
    attention_cfg: AttentionConfig | Mapping[str, Any] | None = None,
) -> AVEModel:
    """The model that ``cfg.name`` names, on a ViT of ``cfg.vit``.

    Args:
        cfg: the task's ``model`` node (name, vit, vit_checkpoint, require_weights, vit_depth,
            img_size, num_classes, and each model's own keys; see ``MODEL_DEFAULTS``).
        mask_cfg: STAMP in the frozen ViT's blocks (none | global | multilayer), checked by
            each ``FrozenViT``'s mask plan.
        attention_cfg: STAMP's attention backend.
    """
    s = _settings(cfg)
    name = cfg.get("name")
    patches = (s["img_size"] // 16) ** 2

    def vit(n_tokens: int) -> FrozenViT:
        return FrozenViT(
            s["vit"],
            checkpoint=s["vit_checkpoint"],
            require_weights=s["require_weights"],
            depth=s["vit_depth"],
            img_size=s["img_size"],
            mask=mask_cfg,
            attention=attention_cfg,
            n_tokens=n_tokens,
            mask_input=s["mask_input"],
        )

    if name == "ma_avt":
        n = MAAVT.sequence_length(patches, s["num_tokens"], s["bg_cls"])
        return MAAVT(
            vit(n),
            num_classes=s["num_classes"],
            num_tokens=s["num_tokens"],
            lsa=s["lsa"],
            lsa_heads=s["lsa_heads"],
            bg_cls=s["bg_cls"],
            bg_label=s["bg_label"],
            contrastive=None if s["contrastive"] in (None, "none") else s["contrastive"],
            temperature=s["temperature"],
            proj_dim=s["proj_dim"],
            layerwise_token=s["layerwise_token"],
        )
    if name in ("lavish", "lavish_large"):
        return LAVISH(
            vit(1 + patches),
            num_classes=s["num_classes"],
            adapter_reduction=s["adapter_reduction"],
            adapter_tokens=s["adapter_tokens"],
            num_conv_group=s["num_conv_group"],
            adapter_bn=s["adapter_bn"],
            adapter_gate=s["adapter_gate"],
            adapter_ln_before=s["adapter_ln_before"],
            adapter_ln_post=s["adapter_ln_post"],
            head_hidden=s["head_hidden"],
            loss=s["loss"],
            bottleneck_dim=s["bottleneck_dim"],
            extra_convs=s["adapter_extra_convs"],
        )
    n = 1 + patches + s["bottleneck_tokens"]
    return MBT(
        vit(n),
        vit(n),
        num_classes=s["num_classes"],
        bottleneck_tokens=s["bottleneck_tokens"],
        head_hidden=s["head_hidden"],
        fusion_layer=s["fusion_layer"],
        full_tune=s["full_tune"],
    )


__all__ = [
    "DEFAULTS",
    "LAVISH",
    "MAAVT",
    "MBT",
    "MODELS",
    "MODEL_DEFAULTS",
    "VIT_NAMES",
    "AVEModel",
    "AVEOutput",
    "FrozenViT",
    "SelfAttention",
    "VisualAdapter",
    "build_model",
    "official_decision",
]
