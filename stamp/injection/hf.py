"""Hugging Face transformers: STAMP through the ``AttentionInterface``.

Every modern HF attention module projects Q, K, V itself (rotary embeddings, KV cache update
included) and then calls ``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
...)``. Injection leaves that code and the weights alone and changes three things on each
targeted module only:

* ``module.stamp``: an ``InjectedStamp`` (the generator and the backend);
* ``module.config``: a view of the model's config whose ``_attn_implementation`` reads
  ``"stamp"`` (every other attribute is the model's, live), so this module, and no other, calls
  ``stamp_attention_forward``;
* a forward pre-hook that hands the module's input tokens (and a KV cache's past length) to
  ``module.stamp``; for a cross-attention (an encoder-decoder's ``encoder_attn`` /
  ``EncDecAttention``: ``InjectedCrossStamp``) the query tokens and the key-side tokens
  (``key_value_states``).

The model still builds its attention mask for its own implementation (eager: additive float;
SDPA: boolean or None for a plain causal mask); ``stamp_attention_forward`` turns it into the
additive bias of the STAMP backends (plus T5's relative position bias, which stays additive).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from stamp.config import AttentionConfig, MaskConfig
from stamp.injection.adapter import SOURCE_IMPLEMENTATIONS, InjectedStamp, unsupported_source
from stamp.injection.cross import InjectedCrossStamp

IMPLEMENTATION = "stamp"
_registered = False
_uses_interface: dict[type, bool] = {}


class StampConfigView:
    """The model's config, except ``_attn_implementation`` reads ``"stamp"``.

    ``original_implementation`` is the model's own (live) implementation, which decides the
    format of the attention mask the model builds and, with ``attention=None``, the backend.
    """

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_stamp_base", config)

    @property
    def _attn_implementation(self) -> str:
        return IMPLEMENTATION

    @property
    def original_implementation(self) -> str:
        return self._stamp_base._attn_implementation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_stamp_base":
            raise AttributeError(name)
        return getattr(self._stamp_base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._stamp_base, name, value)

    def __repr__(self) -> str:
        return f"StampConfigView({type(self._stamp_base).__name__})"


def register() -> None:
    """Register ``stamp`` in transformers' ``AttentionInterface`` (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, stamp_attention_forward)
    _registered = True


def is_hf_attention(module: nn.Module) -> bool:
    """An attention module that dispatches through transformers' ``AttentionInterface``."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return False
    cls = type(module)
    if cls not in _uses_interface:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _uses_interface[cls] = "ALL_ATTENTION_FUNCTIONS" in source
    return _uses_interface[cls]


# the attribute names under which transformers' models keep a decoder's cross-attention (BART,
# mBART, Marian, Pegasus, Whisper: encoder_attn; T5 / mT5: EncDecAttention; BERT as a decoder:
# crossattention). Their classes are the self-attention's, so the name is what tells them apart.
CROSS_ATTENTION_NAMES = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")


def is_cross_attention(module: nn.Module, name: str = "") -> bool:
    """A cross-attention module: flagged so by its class, or kept under a cross-attention name
    (``name``: its dotted name in the model)."""
    if getattr(module, "is_cross_attention", False) or "Cross" in type(module).__name__:
        return True
    return name.rsplit(".", 1)[-1] in CROSS_ATTENTION_NAMES


def model_dims(module: nn.Module) -> tuple[int, int]:
    """(model width D, number of query heads) of an HF attention module. The module's own head
    count comes first: an encoder-decoder config's ``num_attention_heads`` is the encoder's."""
    config = module.config
    dim = getattr(config, "hidden_size", None)
    if dim is None:
        dim = next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features
    heads = next(
        (
            getattr(module, a)
            for a in ("num_heads", "n_heads", "num_attention_heads")
            if isinstance(getattr(module, a, None), int)
        ),
        None,
    )
    heads = heads or getattr(config, "num_attention_heads", None)
    return int(dim), int(heads)


def key_input_width(module: nn.Module) -> int | None:
    """Width of the tokens a module projects its keys from (its key Linear's input), if found."""
    for name in ("k_proj", "k", "key"):
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Linear):
            return layer.in_features
    return None


def default_n_max(module: nn.Module, cross: bool = False) -> int | None:
    """Longest key sequence of the module: patches + [CLS] for vision towers (ViT, CLIP vision);
    an encoder-decoder's source length for a cross-attention or an encoder
    (``max_source_positions``, Whisper), its target length for a decoder's self-attention
    (``max_target_positions``); ``max_position_embeddings`` otherwise (BART, BERT, LLaMA).
    None where the model has no such length (T5's relative positions): pass ``n_max=``."""
    config = module.config
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if image is not None and patch is not None:
        ih, iw = (image, image) if isinstance(image, int) else image
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        return (ih // ph) * (iw // pw) + 1
    decoder_self = not cross and getattr(module, "is_decoder", False)
    own = "max_target_positions" if decoder_self else "max_source_positions"
    for attribute in (own, "max_position_embeddings"):
        value = getattr(config, attribute, None)
        if value is not None:
            return int(value)
    return None


def source_implementation(module: nn.Module) -> str:
    config = module.config
    if isinstance(config, StampConfigView):
        return config.original_implementation
    return config._attn_implementation or "eager"


# the argument that carries a cross-attention's key-side tokens (BART, T5, Whisper: the first;
# BertCrossAttention: the second), by class: (its name, its position) or None
KEY_TOKEN_ARGUMENTS = ("key_value_states", "encoder_hidden_states")
_key_token_argument: dict[type, tuple[str, int] | None] = {}


def _key_value_states(module: nn.Module, args: tuple, kwargs: dict) -> Tensor | None:
    """The key-side tokens of an HF attention call (keyword or positional), None if none."""
    cls = type(module)
    if cls not in _key_token_argument:
        params = list(inspect.signature(module.forward).parameters)
        found = [(name, params.index(name)) for name in KEY_TOKEN_ARGUMENTS if name in params]
        _key_token_argument[cls] = found[0] if found else None
    if _key_token_argument[cls] is None:
        return None
    name, position = _key_token_argument[cls]
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if _key_value_states(module, args, kwargs) is not None:
        raise RuntimeError(
            f"stamp.inject: {type(module).__name__} was injected as a self-attention but is "
            "called with key-side tokens (a cross-attention); inject it with kind='cross' or "
            "kind='both'"
        )
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "self_attention_cache"):  # encoder-decoder cache
        cache = cache.self_attention_cache
    n_past = 0
    if cache is not None and hasattr(cache, "get_seq_length"):
        n_past = int(cache.get_seq_length(getattr(module, "layer_idx", 0) or 0))
    module.stamp.capture(hidden, cache=cache, n_past=n_past)


def _cross_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    hidden = args[0] if args else kwargs.get("hidden_states")
    context = _key_value_states(module, args, kwargs)
    if context is None:
        raise RuntimeError(
            f"stamp.inject: the cross-attention {type(module).__name__} was called without "
            f"{' / '.join(KEY_TOKEN_ARGUMENTS)} (its key-side tokens)"
        )
    # an encoder-decoder cache holding this layer's cross-attention keys: the model reads them
    # back instead of projecting the key tokens again (the low-rank key factors follow)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    updated = getattr(cache, "is_updated", None)
    keys_cached = isinstance(updated, dict) and bool(updated.get(getattr(module, "layer_idx", 0)))
    module.stamp.capture(hidden, context=context, cache=cache, keys_cached=keys_cached)


def attach(module: nn.Module, stamp: InjectedStamp) -> None:
    """Make ``module`` (an HF attention module) run STAMP; its weights stay where they are."""
    register()
    for part in stamp.modules():  # HF's init_weights / post_init skip them (mask.init stays)
        part._is_hf_initialized = True
    module.stamp = stamp
    module.config = StampConfigView(module.config)
    hook = _cross_pre_hook if stamp.cross else _pre_hook
    module._stamp_hook = module.register_forward_pre_hook(hook, with_kwargs=True)


def make_stamp(
    module: nn.Module,
    mask: MaskConfig,
    n_max: int | None,
    attention: AttentionConfig | None,
    cross: bool = False,
    shared: InjectedStamp | None = None,
) -> InjectedStamp:
    """The ``InjectedStamp`` of an HF attention module (``InjectedCrossStamp`` with ``cross``),
    on its device and dtype (``shared``: the first targeted layer's, whose generator
    ``mask=global`` shares)."""
    source = source_implementation(module)
    if source not in SOURCE_IMPLEMENTATIONS:  # its mask (flex BlockMask, varlen) has no bias form
        raise ValueError(unsupported_source(source))
    dim, heads = model_dims(module)
    kind = InjectedCrossStamp if cross else InjectedStamp
    stamp = kind(
        mask,
        dim=dim,
        num_heads=heads,
        n_max=n_max,
        source=source,
        attention=attention,
        context_dim=key_input_width(module) if cross else None,
        shared=shared,
    )
    ref = next(module.parameters(), None)
    if ref is not None:
        stamp.to(device=ref.device, dtype=ref.dtype)
    return stamp


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(B, H_kv, N, d) -> (B, H_kv * groups, N, d): grouped-query attention's shared K/V heads."""
    if groups == 1:
        return x
    B, H, N, d = x.shape
    return x[:, :, None].expand(B, H, groups, N, d).reshape(B, H * groups, N, d)


def additive_bias(
    attention_mask: Tensor | None, query: Tensor, key: Tensor, causal: bool
) -> Tensor | None:
    """The model's mask as an additive bias in the query's dtype (blocked: finfo.min, as HF's
    eager path). A missing mask under SDPA with ``is_causal`` is SDPA's causal mask (top-left
    aligned, as ``F.scaled_dot_product_attention(is_causal=True)``)."""
    nq, nk = query.shape[2], key.shape[2]
    low = torch.finfo(query.dtype).min
    if attention_mask is None:
        if not (causal and nq > 1):
            return None
        allowed = torch.ones(nq, nk, dtype=torch.bool, device=query.device).tril()
        return torch.zeros(nq, nk, dtype=query.dtype, device=query.device).masked_fill(
            ~allowed, low
        )
    bias = attention_mask[..., :nk]
    if bias.dtype == torch.bool:
        return torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~bias, low
        )
    return bias.to(query.dtype)


def stamp_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The ``AttentionInterface`` function of injected modules: (B, Nq, H, d) output and the
    probabilities (eager backend) or None."""
    # (a sliding window is already in the mask the model built for eager / SDPA)
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(
                f"stamp.inject: attention with {unsupported!r} is not supported "
                f"({type(module).__name__})"
            )
    stamp: InjectedStamp = module.stamp
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    d = query.shape[-1]
    if scaling is not None and not math.isclose(scaling, d**-0.5, rel_tol=1e-12):
        query = query * (scaling * d**0.5)  # the backends scale by d^-0.5
    # the mask's format follows the model's live implementation (the backend was chosen once)
    source = source_implementation(module)
    if source not in SOURCE_IMPLEMENTATIONS:
        raise ValueError(unsupported_source(source))
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    bias = additive_bias(attention_mask, query, key, causal=source == "sdpa" and bool(is_causal))
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:  # T5: a relative position bias, added to the logits as HF does
        position_bias = position_bias.to(query.dtype)
        bias = position_bias if bias is None else position_bias + bias
    out, probs = stamp(
        query,
        key,
        value,
        attn_bias=bias,
        dropout_p=dropout,
        return_attn=stamp.backend.value == "eager",
    )
    return out.transpose(1, 2).contiguous(), probs
