"""Layer-wise lr decay parameter groups of MAE's fine-tuning recipe.

Layer ids follow MAE's ``util/lr_decay.py`` (from BEiT): ``cls_token``, ``pos_embed`` and the
patch embedding are layer 0, ``blocks.i.*`` is layer i + 1, everything else (final norms, head,
a global STAMP generator) is layer L + 1 with scale 1; layer l gets ``lr * decay ** (L + 1 - l)``.
A block's STAMP generator (``blocks.i.mask_generator``) is inside block i, so MAE's rule gives it
block i's scale; ``mask_layer_decay=False`` gives the generators the full lr instead (they are
new parameters, not pre-trained ones).
No weight decay on 1-d parameters (norms, biases) and on ``no_weight_decay`` names.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

EMBEDDING_NAMES = ("cls_token", "pos_embed", "reg_token", "dist_token")


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a ViT parameter (0 = embeddings, i + 1 = block i, num_layers + 1 = top)."""
    if name in EMBEDDING_NAMES or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_decay_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_weight_decay: Iterable[str] = EMBEDDING_NAMES,
    mask_layer_decay: bool = True,
) -> list[dict]:
    """AdamW parameter groups with ``lr = lr * lr_scale`` per layer (``lr_scale`` kept in each
    group so a schedule can rescale), ``weight_decay`` 0 for 1-d and ``no_weight_decay`` names."""
    num_layers = len(model.blocks)  # type: ignore[arg-type]
    no_decay_names = set(no_weight_decay)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim == 1 or name in no_decay_names else weight_decay
        layer = vit_layer_id(name, num_layers)
        if not mask_layer_decay and ".mask_generator." in name:
            layer = num_layers + 1
        scale = layer_decay ** (num_layers + 1 - layer)
        key = f"layer_{layer}_{'decay' if decay else 'no_decay'}"
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": decay,
            }
        groups[key]["params"].append(param)
    return list(groups.values())
