"""Layer-wise lr decay parameter groups of MAE's fine-tuning recipe, built by timm's
``param_groups_layer_decay``.

Layer ids follow MAE's ``util/lr_decay.py`` (from BEiT): ``cls_token``, ``pos_embed`` and the
patch embedding are layer 0, ``blocks.i.*`` is layer i + 1, everything else (final norms, head,
a global STAMP generator) is layer L + 1 with scale 1; layer l gets ``lr * decay ** (L + 1 - l)``.
A block's STAMP generator (``blocks.i.mask_generator``) is inside block i, so MAE's rule gives it
block i's scale; ``mask_layer_decay=False`` gives the generators the full lr instead (they are
new parameters, not pre-trained ones).
No weight decay on 1-d parameters (norms, biases) and on ``no_weight_decay`` names.
(tests/imagenet/test_lr_decay.py checks every group against MAE's rule written out.)
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

from timm.models import group_parameters
from timm.optim import param_groups_layer_decay
from torch import nn

EMBEDDING_NAMES = ("cls_token", "pos_embed", "reg_token", "dist_token")


def mae_layer_matcher(mask_layer_decay: bool = True) -> dict[str, str]:
    """timm group matcher with MAE's layer ids: embeddings 0, block i -> i + 1. Names it does not
    match (final norms, head, a global generator; the blocks' generators when
    ``mask_layer_decay`` is off) form timm's last layer, L + 1. (timm's own ViT matcher puts the
    final ``norm`` into the last block; MAE puts it on top.)"""
    embeddings = "|".join(EMBEDDING_NAMES)
    block = r"^blocks\.(\d+)\." + ("" if mask_layer_decay else r"(?!mask_generator\.)")
    return {"embeddings": rf"^(?:{embeddings})$|^patch_embed\.", "blocks": block}


def layer_decay_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay: Iterable[str] = EMBEDDING_NAMES,
    mask_layer_decay: bool = True,
) -> list[dict]:
    """AdamW parameter groups of a timm ViT (``model.blocks``), one per (layer, decay or not),
    named ``layer_<id>_<decay|no_decay>``: ``lr = lr * lr_scale`` (``lr_scale`` kept so a schedule
    can rescale), ``weight_decay`` 0 for 1-d and ``no_weight_decay`` names (exact names);
    ``mask_layer_decay`` False puts the blocks' STAMP generators at the top layer."""
    no_weight_decay, matcher = tuple(no_weight_decay), mae_layer_matcher(mask_layer_decay)
    # the model as timm's grouping sees it, with MAE's layer ids as its group matcher
    grouped = SimpleNamespace(
        named_parameters=model.named_parameters, group_matcher=lambda coarse=False: matcher
    )
    groups = param_groups_layer_decay(
        grouped, weight_decay, no_weight_decay_list=no_weight_decay, layer_decay=layer_decay
    )
    layer_of = group_parameters(grouped, matcher, reverse=True)
    name_of = {id(p): n for n, p in model.named_parameters()}
    for group in groups:  # timm's groups are unnamed: name them as its keys (LR monitor)
        first = group["params"][0]
        decayed = first.ndim > 1 and name_of[id(first)] not in no_weight_decay
        group["name"] = f"layer_{layer_of[name_of[id(first)]]}_{'' if decayed else 'no_'}decay"
        group["lr"] = lr * group["lr_scale"]
    return groups
