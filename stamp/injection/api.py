"""``stamp.inject``: STAMP attention in an existing model, and its adapter-style save / load.

    model = stamp.inject(model)                       # every attention layer, M = identity
    stamp.mark_only_stamp_trainable(model)            # optional: train the generators only
    stamp.save(model, "stamp_adapter/")               # STAMP weights + mask config (JSON)
    stamp.load(fresh_model, "stamp_adapter/")         # injects (if needed) and loads them
    stamp.unload(model)                               # the original modules again

(save / load / unload: ``stamp.injection.lifecycle``.)

Supported: Hugging Face transformers attention modules that dispatch through the
``AttentionInterface`` (BERT, ViT, CLIP text / vision, LLaMA-family decoders with KV cache,
encoder-decoders' self- and cross-attention: BART, T5, Whisper, and the many others written the
same way), timm's ``Attention`` (ViT, DeiT), ``EvaAttention`` and Swin's ``WindowAttention``, and
PyTorch's ``nn.MultiheadAttention`` (self- and cross-attention). See docs/own_model.md.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import warnings
from collections.abc import Callable, Iterable
from enum import Enum

import torch
from torch import nn

from stamp.config import AttentionConfig, MaskConfig, MaskInit, MaskType
from stamp.injection.adapter import InjectedStamp, as_backend_config
from stamp.injection.lifecycle import reversible
from stamp.plan import GENERATOR_PARTS, SHARED_GENERATOR, MaskPlan

Targets = None | str | Iterable[str] | Callable[[str, nn.Module], bool]
KINDS = ("self", "cross", "both")  # which attention modules ``inject`` may target


def _families() -> list:
    """(family name, module) pairs for the libraries that are installed."""
    families = []
    try:
        from stamp.injection import hf

        families.append(("hf", hf))
    except ImportError:  # pragma: no cover - transformers is a dependency here
        pass
    try:
        from stamp.injection import timm_vit

        families.append(("timm", timm_vit))
    except ImportError:  # pragma: no cover
        pass
    from stamp.injection import mha

    families.append(("mha", mha))
    return families


def _family_of(module: nn.Module) -> str | None:
    for name, family in _families():
        if name == "hf" and family.is_hf_attention(module):
            return "hf"
        if name == "timm" and family.is_timm_attention(module):
            return "timm"
        if name == "mha" and family.is_mha(module):
            return "mha"
    return None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every attention module (self and cross) ``stamp.inject`` can target (name -> module)."""
    return {name: m for name, m in model.named_modules() if _family_of(m) is not None}


def _is_cross(name: str, module: nn.Module) -> bool:
    from stamp.injection import hf

    return _family_of(module) == "hf" and hf.is_cross_attention(module, name)


def injected_modules(model: nn.Module) -> dict[str, InjectedStamp]:
    """The STAMP part of each injected attention module (attention module name -> stamp)."""
    return {
        name.removesuffix(".stamp") if name != "stamp" else "": module
        for name, module in model.named_modules()
        if isinstance(module, InjectedStamp)
    }


def _matches(name: str, pattern: str) -> bool:
    """A glob that matches the whole name or a dotted run of its components."""
    return any(
        fnmatch.fnmatchcase(name, p)
        for p in (pattern, f"*.{pattern}", f"{pattern}.*", f"*.{pattern}.*")
    )


def select_targets(model: nn.Module, targets: Targets, kind: str = "self") -> dict[str, nn.Module]:
    """The attention modules of ``kind`` (self / cross / both) that ``targets`` selects (see
    ``inject``)."""
    if kind not in KINDS:
        raise ValueError(f"stamp.inject: kind={kind!r}; choose one of: {', '.join(KINDS)}")
    candidates = {
        n: m
        for n, m in attention_modules(model).items()
        if kind == "both" or _is_cross(n, m) == (kind == "cross")
    }
    if targets is None:
        chosen = candidates
    elif callable(targets):
        chosen = {n: m for n, m in candidates.items() if targets(n, m)}
    else:
        patterns = [targets] if isinstance(targets, str) else list(targets)
        chosen = {}
        for pattern in patterns:
            hits = {n: m for n, m in candidates.items() if _matches(n, pattern)}
            if not hits:
                sample = ", ".join(list(candidates)[:4]) + (", ..." if len(candidates) > 4 else "")
                raise ValueError(
                    f"stamp.inject: target {pattern!r} matches no supported attention module "
                    f"of kind={kind!r} (there are {len(candidates)}: {sample or 'none'})"
                )
            chosen.update(hits)
    if not chosen:
        raise ValueError(
            f"stamp.inject: no attention module selected (kind={kind!r}). Supported: Hugging "
            "Face attention modules that use transformers' AttentionInterface (self-attention; "
            "cross-attention with kind='cross' or 'both') and timm's Attention (ViT)."
        )
    return chosen


def _default_mask(mask: MaskConfig | dict | None) -> MaskConfig:
    """The mask config ``inject`` uses: without an explicit ``init`` (None, a mapping without
    it, or a ``MaskConfig`` built without it) M starts at the identity, so the outputs do not
    change at injection; an explicit other init is honoured, with a warning."""
    if mask is None:
        return MaskConfig(type=MaskType.multilayer, init=MaskInit.identity)
    if not isinstance(mask, MaskConfig):
        mask = MaskConfig(**{"init": MaskInit.identity, **{k: mask[k] for k in mask}})
    elif not mask.init_given:
        mask = dataclasses.replace(mask, init=MaskInit.identity)
    if mask.init is not MaskInit.identity:
        warnings.warn(
            f"stamp.inject: mask.init={mask.init} does not start at the identity, so the model's "
            "outputs change at injection (leave init out, or init='identity', to keep them)",
            stacklevel=3,
        )
    return mask


@reversible  # stamp.unload(model) gives the original modules back
def inject(
    model: nn.Module,
    mask: MaskConfig | dict | None = None,
    targets: Targets = None,
    attention: AttentionConfig | str | dict | None = None,
    n_max: int | dict[str, int] | None = None,
    kind: str = "self",
) -> nn.Module:
    """Replace the attention of ``model`` (in place) with STAMP attention; returns ``model``.

    ``mask``: a ``MaskConfig`` or mapping (default: multi-layer STAMP with ``init=identity``, so
    the outputs equal the original's at injection; one without an explicit ``init`` starts at
    the identity too; an explicit other init is honoured with a warning).
    ``mask.type=global``: one generator on the first targeted layer's input, its M shared by
    every targeted layer (``mask.global_input=layer``: re-applied to each layer's input).
    ``targets``: None = every supported module of ``kind``; a name / glob pattern (matched
    against the whole module name or a dotted run of it, e.g. ``"layer.0"``), a list of them,
    or a predicate ``(name, module) -> bool``. ``kind``: the attention modules ``targets``
    chooses from: ``"self"`` (default), ``"cross"`` (a decoder's attention over its encoder,
    e.g. BART's ``encoder_attn``, T5's ``EncDecAttention``: M from the query tokens, the
    low-rank generator reads the key tokens too) or ``"both"``.
    ``attention``: the STAMP backend (``eager``, ``sdpa``, ``flex``, ``fused`` or an
    ``AttentionConfig``); None follows the model's own implementation (eager -> eager; sdpa ->
    sdpa for ``fusion=add``, fused for ``mul``).
    ``n_max``: the MLP generator's key columns (an int, or attention module name -> int);
    None = the model's longest key sequence (patches + [CLS], an encoder-decoder's source /
    target length, or ``max_position_embeddings``; T5 has none: pass it).
    The pretrained weights are kept; each targeted module gets a ``stamp`` sub-module.
    """
    mask = _default_mask(mask)
    attention_cfg = as_backend_config(attention)
    plan = MaskPlan(mask, attention_cfg, places=GENERATOR_PARTS, where="stamp.inject")
    if not plan.parts:
        raise ValueError("stamp.inject: mask.type=none injects nothing (use multilayer or global)")
    owner: InjectedStamp | None = None  # mask=global: the first targeted layer's stamp
    chosen = select_targets(model, targets, kind)
    already = [n for n, m in chosen.items() if isinstance(getattr(m, "stamp", None), InjectedStamp)]
    if already:
        raise ValueError(f"stamp.inject: already injected: {', '.join(already)}")
    from stamp.injection import hf

    for name, module in chosen.items():
        family = _family_of(module)
        limit = n_max.get(name) if isinstance(n_max, dict) else n_max
        if family == "hf":
            cross = hf.is_cross_attention(module, name)
            if limit is None:
                limit = hf.default_n_max(module, cross)
            _check_n_max(mask, limit, name)
            if owner is not None and owner.cross != cross:
                raise ValueError(
                    "stamp.inject: mask.type=global shares one generator, and the targets mix "
                    "self- and cross-attention; inject each kind separately (kind='self', 'cross')"
                )
            stamp = hf.make_stamp(module, mask, limit, attention_cfg, cross, shared=owner)
            hf.attach(module, stamp)
        elif family == "mha":
            from stamp.injection import mha

            if limit is None:
                limit = mha.default_n_max(model, name)
            _check_n_max(mask, limit, name)
            stamp = mha.make_stamp(module, mask, limit, attention_cfg, shared=owner)
            mha.attach(model, module, stamp)
        else:
            from stamp.injection import timm_vit

            if limit is None:
                limit = timm_vit.default_n_max(model, name)
            _check_n_max(mask, limit, name)
            dim, heads = timm_vit.dims(module)
            stamp = InjectedStamp(
                mask,
                dim=dim,
                num_heads=heads,
                n_max=limit,
                source=timm_vit.source_implementation(module),
                attention=attention_cfg,
                shared=owner,
            )
            ref = module.proj.weight
            timm_vit.attach(module, stamp.to(device=ref.device, dtype=ref.dtype))
        if SHARED_GENERATOR in plan.parts and owner is None:
            owner = stamp
    return model


def _check_n_max(mask: MaskConfig, n_max: int | None, name: str) -> None:
    if n_max is None and str(getattr(mask, "generator", "mlp")) == "mlp":
        raise ValueError(
            f"stamp.inject: cannot tell the longest sequence of {name!r} (the MLP generator "
            "needs one output per key position); pass n_max= or use mask.generator=lowrank"
        )


def stamp_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for stamp in injected_modules(model).values() for p in stamp.parameters()]


def mark_only_stamp_trainable(model: nn.Module) -> int:
    """Freeze every parameter except the STAMP generators'; returns the trainable count."""
    stamp_ids = {id(p) for p in stamp_parameters(model)}
    if not stamp_ids:
        raise ValueError("mark_only_stamp_trainable: the model has no injected STAMP modules")
    for p in model.parameters():
        p.requires_grad_(id(p) in stamp_ids)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stamp_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The STAMP weights only, under their names in ``model.state_dict()``."""
    prefixes = [f"{n}.stamp." if n else "stamp." for n in injected_modules(model)]
    return {k: v for k, v in model.state_dict().items() if any(k.startswith(p) for p in prefixes)}


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _as_dict(cfg: object | None) -> dict | None:
    if cfg is None:
        return None
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}


def injection_config(model: nn.Module) -> dict:
    """What ``save`` writes beside the weights: the mask, backend, targets and n_max."""
    stamps = injected_modules(model)
    if not stamps:
        raise ValueError("stamp.save: the model has no injected STAMP modules")
    first = next(iter(stamps.values()))
    masks = {json.dumps(_as_dict(s.mask_cfg), sort_keys=True) for s in stamps.values()}
    if len(masks) > 1:
        raise ValueError("stamp.save: the injected modules use different mask configs")
    return {
        "mask": _as_dict(first.mask_cfg),
        "attention": _as_dict(first.attention_cfg),
        "targets": list(stamps),
        "n_max": {name: s.n_max for name, s in stamps.items()},
        # every supported attention module of the model (injected or not): load refuses a model
        # with another layer set (a 3-layer model would keep its third layer without STAMP)
        "attention_modules": sorted(attention_modules(model)),
    }
