"""PyTorch's ``nn.MultiheadAttention``: ``stamp.inject`` makes it STAMP's in place.

The module's class becomes ``StampMultiheadAttention``, a subclass whose forward is PyTorch's
(``F.multi_head_attention_forward``: in-projection, masks, dropout, out-projection) with the
attention product run by ``module.stamp`` (an ``InjectedCrossStamp``, as Hugging Face
cross-attention modules get: the generator and the shared masked-attention core). The weights
(``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``) and their names
do not change, and it is still an ``nn.MultiheadAttention`` for the code around it
(``nn.Transformer*Layer``, DETR / Moment-DETR / QD-DETR layers, torchvision's ViT, OpenCLIP).

The module itself does not know whether it is a self- or a cross-attention, so each call hands
the stamp its query tokens and its key tokens: M = F(query tokens) (one column per key
position), and the low-rank generator also reads the key tokens (the paper's cross-attention,
``StampCrossAttentionLayer``); in a self-attention (``key is query``, as every self-attention
caller passes it) the key tokens are the query tokens, which is the self-attention's M. The
keys that come from no token (``add_bias_kv``'s learnt key, ``add_zero_attn``'s zero key) keep
M at the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp.config import AttentionConfig, MaskConfig
from stamp.injection.adapter import InjectedStamp
from stamp.injection.cross import InjectedCrossStamp

# attributes of an nn.Module that hold a learnt position embedding (..., N, D): torchvision's
# ViT encoder (pos_embedding), OpenCLIP's towers (positional_embedding), timm-style (pos_embed)
POSITION_ATTRIBUTES = ("pos_embedding", "positional_embedding", "pos_embed")


class StampMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with STAMP's product (same forward signature and outputs).

    Returns ``(output, weights)`` as PyTorch: ``weights`` (B, Nq, Nk) averaged over heads, or
    (B, H, Nq, Nk) with ``average_attn_weights=False``, when ``need_weights`` (the eager path
    then runs; the weights are the probabilities before attention dropout), else None.
    """

    stamp: InjectedCrossStamp

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Args (PyTorch's):
        query: (B, Nq, E) with ``batch_first``, else (Nq, B, E); (Nq, E) unbatched.
        key, value: (B, Nk, kdim / vdim) (or sequence-first / unbatched likewise).
        key_padding_mask: (B, Nk) bool (True: padded) or float (added to the logits).
        attn_mask: (Nq, Nk) or (B * H, Nq, Nk), bool (True: blocked) or float (added).
        is_causal: a hint that ``attn_mask`` is the causal mask (which is then required).
        """
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint (nn.MultiheadAttention's rule)"
            )
        cross = key is not query
        batched = query.dim() == 3
        if not batched:  # (N, E) -> a batch of one
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, nq, _ = query.shape
        nk = key.shape[1]
        # the generator's tokens: the query tokens and the key tokens (the low-rank generator
        # reads them in a cross-attention; in a self-attention they are the query tokens)
        self.stamp.capture(query, context=key)
        self.stamp.cross = cross  # (diagnostics: a self-attention's M has a diagonal)
        q, k, v = self._project(query, key, value)
        bias, padding = self._bias(attn_mask, key_padding_mask, B, nq, nk, q.dtype)
        k, v, extra = self._extra_keys(k, v)
        if extra:  # the appended keys are not masked (PyTorch pads both masks with 0 / False)
            bias = None if bias is None else F.pad(bias, (0, extra))
            padding = None if padding is None else F.pad(padding, (0, extra), value=False)
        out, probs = self.stamp(
            q,
            k,
            v,
            attn_bias=bias,
            key_padding_mask=padding,
            dropout_p=self.dropout if self.training else 0.0,
            return_attn=need_weights,
            extra_keys=extra,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(B, nq, self.embed_dim))
        if not need_weights:  # (recording returns them too; PyTorch's caller gets None)
            probs = None
        elif average_attn_weights:
            probs = probs.mean(dim=1)
        if not batched:
            return out.squeeze(0), None if probs is None else probs.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, probs

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """PyTorch's in-projection with the module's own weights -> (B, H, N, d) each."""
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(E)
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(E)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        return tuple(  # type: ignore[return-value]
            t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
            for t in (q, k, v)
        )

    def _extra_keys(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """PyTorch's keys from no token, appended after the projected ones: ``bias_k`` /
        ``bias_v`` (``add_bias_kv``), then a zero key and value (``add_zero_attn``)."""
        extra = 0
        if self.bias_k is not None:
            B, H, _, d = k.shape
            k = torch.cat([k, self.bias_k.view(1, H, 1, d).expand(B, -1, -1, -1)], dim=2)
            v = torch.cat([v, self.bias_v.view(1, H, 1, d).expand(B, -1, -1, -1)], dim=2)
            extra += 1
        if self.add_zero_attn:
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
            extra += 1
        return k, v, extra

    def _bias(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        B: int,
        nq: int,
        nk: int,
        dtype: torch.dtype,
    ) -> tuple[Tensor | None, Tensor | None]:
        """The masks as the core takes them: an additive bias broadcastable to (B, H, Nq, Nk)
        (PyTorch's conversion: a blocked boolean entry is -inf, a float mask is added) and the
        boolean key padding, which the core applies after M (a padded key stays -inf)."""
        bias = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (nq, nk):
                    raise RuntimeError(
                        f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, "
                        f"but should be {(nq, nk)}."
                    )
                bias = attn_mask[None, None]
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (B * self.num_heads, nq, nk):
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, "
                        f"but should be {(B * self.num_heads, nq, nk)}."
                    )
                bias = attn_mask.view(B, self.num_heads, nq, nk)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
            bias = _additive(bias, dtype)
        padding = None
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, nk):
                raise RuntimeError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, "
                    f"expected {(B, nk)}"
                )
            if key_padding_mask.dtype == torch.bool:
                padding = key_padding_mask
            else:  # a float padding mask is added to the logits, as PyTorch does
                extra = key_padding_mask.to(dtype)[:, None, None, :]
                bias = extra if bias is None else bias + extra
        return bias, padding


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def is_mha(module: nn.Module) -> bool:
    """PyTorch's own ``nn.MultiheadAttention`` (not a subclass with a forward of its own), or
    one ``stamp.inject`` already injected."""
    return type(module) is nn.MultiheadAttention or isinstance(module, StampMultiheadAttention)


def default_n_max(model: nn.Module, name: str) -> int | None:
    """Token count of the nearest module around ``name`` with a learnt position embedding
    (torchvision's ViT encoder: patches + class token; OpenCLIP: its context length or
    patches + class token); None when there is none (DETR's sine positions: pass n_max)."""
    best, best_len = None, -1
    for owner_name, owner in model.named_modules():
        inside = owner_name == "" or name.startswith(owner_name + ".")
        if not inside or len(owner_name) <= best_len:
            continue
        for attribute in POSITION_ATTRIBUTES:
            table = getattr(owner, attribute, None)
            if isinstance(table, Tensor) and table.dim() >= 2:
                best, best_len = int(table.shape[-2]), len(owner_name)
                break
    return best


def make_stamp(
    module: nn.MultiheadAttention,
    mask: MaskConfig,
    n_max: int | None,
    attention: AttentionConfig | None,
    shared: InjectedStamp | None = None,
) -> InjectedCrossStamp:
    """The ``InjectedCrossStamp`` of ``module`` (on its device and dtype). The model's own
    implementation counts as ``sdpa`` (PyTorch's default path); the low-rank generator of a
    module whose keys have another width (``kdim``) maps them to the model width. ``shared``
    (``mask=global``): the first targeted layer's stamp, whose M this layer reuses (so the
    targeted layers must see the same query and key lengths, e.g. an encoder's layers)."""
    kdim = module.kdim if module.kdim != module.embed_dim else None
    stamp = InjectedCrossStamp(
        mask,
        dim=module.embed_dim,
        num_heads=module.num_heads,
        n_max=n_max,
        source="sdpa",
        attention=attention,
        context_dim=kdim,
        shared=shared,
    )
    ref = module.out_proj.weight
    return stamp.to(device=ref.device, dtype=ref.dtype)


def _off_fused_layer_path(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing: ``nn.TransformerEncoderLayer`` skips its fused
    inference kernel (which never calls ``self_attn``) when any sub-module has a hook."""


def attach(model: nn.Module, module: nn.MultiheadAttention, stamp: InjectedCrossStamp) -> None:
    """Make ``module`` STAMP's in place; keep ``nn.TransformerEncoder`` off the paths that
    bypass its forward (the fused layer kernel, the nested-tensor fast path)."""
    module.__class__ = StampMultiheadAttention
    module.stamp = stamp
    module._stamp_hook = module.register_forward_pre_hook(_off_fused_layer_path)
    for owner in model.modules():
        if isinstance(owner, nn.TransformerEncoder) and any(m is module for m in owner.modules()):
            # its nested-tensor path hands NestedTensors to the layers; padded positions come
            # back as 0 there. Injected, the padded positions keep their computed values
            owner.use_nested_tensor = False
