"""Official QD-DETR state dicts (``wjun0830/QD-DETR``, ``torch.load(ckpt)["model"]``) -> this
project's ``QDDETR``.

The official model keeps ``nn.MultiheadAttention`` (packed ``in_proj_weight``) in a
``transformer`` sub-module; this project uses ``StampAttention`` (``q`` + ``kv`` for the T2V
cross-attention, ``qkv`` for self-attention) and flat ``t2v_layers`` / ``encoder`` / ``decoder``.
The decoder, heads, input projections and ``txt_position_embed`` keep their official names.

    model = QDDETR(2816, 512, mask={"type": "none"})
    with torch.serialization.safe_globals([argparse.Namespace]):  # the official "opt" entry
        official = torch.load(path, map_location="cpu", weights_only=True)  # no code runs
    model.load_state_dict(from_official_state_dict(official["model"]))

With a STAMP mask the generators are not in an official checkpoint: load with ``strict=False``
and check that only ``mask_generator`` keys are missing.
"""

from __future__ import annotations

import re

from torch import Tensor

_INPUT_PROJ = re.compile(r"^(input_(?:vid|txt)_proj\.\d+)\.(LayerNorm|net\.1)\.(weight|bias)$")
_LAYER = re.compile(r"^transformer\.(t2v_encoder|encoder)\.layers\.(\d+)\.(.+)$")

# official sub-module of an encoder layer -> ours, for the T2V (cross) and self-attention layers
_T2V_NAMES = {
    "self_attn.out_proj": "attn.proj",
    "linear1": "ffn.fc1",
    "linear2": "ffn.fc2",
    "activation": "ffn.act",
    "norm1": "norm1",
    "norm2": "norm2",
}
_ENC_NAMES = {
    "self_attn.in_proj": "attn.qkv",
    "self_attn.out_proj": "attn.proj",
    "linear1": "ffn.fc1",
    "linear2": "ffn.fc2",
    "activation": "ffn.act",
    "norm1": "attn_block.norm",
    "norm2": "ffn_block.norm",
}


def _split_param(name: str) -> tuple[str, str]:
    """'self_attn.in_proj_weight' -> ('self_attn.in_proj', 'weight'); 'linear1.bias' -> ..."""
    if name.endswith(("in_proj_weight", "in_proj_bias")):
        module, _, kind = name.rpartition("_")
        return module, kind
    module, _, kind = name.rpartition(".")
    return module, kind


def from_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename / split the official parameters; raises on a key it does not know (e.g. the
    contrastive-align projections, which the project's model does not have)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _INPUT_PROJ.match(key):
            part = "norm" if m.group(2) == "LayerNorm" else "linear"
            out[f"{m.group(1)}.{part}.{m.group(3)}"] = value
        elif m := _LAYER.match(key):
            group, index, rest = m.groups()
            module, kind = _split_param(rest)
            if group == "t2v_encoder":
                prefix = f"t2v_layers.{index}"
                if module == "self_attn.in_proj":  # packed [Wq; Wk; Wv] -> q and kv
                    dim = value.shape[0] // 3
                    out[f"{prefix}.attn.q.{kind}"] = value[:dim]
                    out[f"{prefix}.attn.kv.{kind}"] = value[dim:]
                    continue
                names = _T2V_NAMES
            else:
                prefix, names = f"encoder.layers.{index}", _ENC_NAMES
            if module not in names:
                raise KeyError(f"official key {key!r}: unknown sub-module {module!r}")
            out[f"{prefix}.{names[module]}.{kind}"] = value
        elif key.startswith("transformer.decoder."):
            out[key.removeprefix("transformer.")] = value
        elif key.split(".")[0] in _SAME:
            out[key] = value
        else:
            raise KeyError(f"official key {key!r} has no counterpart in this QDDETR")
    return out


_SAME = {
    "txt_position_embed",
    "span_embed",
    "class_embed",
    "query_embed",
    "saliency_proj1",
    "saliency_proj2",
    "global_rep_token",
    "global_rep_pos",
}
