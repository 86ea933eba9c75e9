"""``stamp.inject``: STAMP attention in an existing model, and its adapter-style save / load.

    model = stamp.inject(model)                       # every attention layer, M = identity
    stamp.mark_only_stamp_trainable(model)            # optional: train the generators only
    stamp.save(model, "stamp_adapter/")               # STAMP weights + mask config (JSON)
    stamp.load(fresh_model, "stamp_adapter/")         # injects (if needed) and loads them

Supported: Hugging Face transformers attention modules that dispatch through the
``AttentionInterface`` (BERT, ViT, CLIP text / vision, LLaMA-family decoders with KV cache, and
the many others written the same way) and timm's ``Attention`` (ViT). See docs/own_model.md.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from stamp.config import AttentionConfig, MaskConfig, MaskType
from stamp.injection.adapter import InjectedStamp, as_backend_config
from stamp.plan import GENERATOR_PARTS, SHARED_GENERATOR, MaskPlan

Targets = None | str | Iterable[str] | Callable[[str, nn.Module], bool]

CONFIG_FILE = "stamp_config.json"
WEIGHTS_SAFETENSORS = "stamp_model.safetensors"
WEIGHTS_TORCH = "stamp_model.pt"
FORMAT = "stamp-inject/1"


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
    return families


def _family_of(module: nn.Module) -> str | None:
    for name, family in _families():
        if name == "hf" and family.is_hf_attention(module):
            return "hf"
        if name == "timm" and family.is_timm_attention(module):
            return "timm"
    return None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every self-attention module ``stamp.inject`` can target (name -> module)."""
    found = {}
    for name, module in model.named_modules():
        family = _family_of(module)
        if family == "hf":
            from stamp.injection import hf

            if hf.is_cross_attention(module):
                continue
        if family is not None:
            found[name] = module
    return found


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


def select_targets(model: nn.Module, targets: Targets) -> dict[str, nn.Module]:
    """The attention modules that ``targets`` selects (see ``inject``)."""
    candidates = attention_modules(model)
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
                    f"(there are {len(candidates)}: {sample or 'none'})"
                )
            chosen.update(hits)
    if not chosen:
        raise ValueError(
            "stamp.inject: no attention module selected. Supported: Hugging Face attention "
            "modules that use transformers' AttentionInterface (self-attention) and timm's "
            "Attention (ViT)."
        )
    return chosen


def _default_mask(mask: MaskConfig | dict | None) -> MaskConfig:
    if mask is None:
        return MaskConfig(type=MaskType.multilayer, init="identity")
    if isinstance(mask, MaskConfig):
        return mask
    return MaskConfig(**{"init": "identity", **{k: mask[k] for k in mask}})


def inject(
    model: nn.Module,
    mask: MaskConfig | dict | None = None,
    targets: Targets = None,
    attention: AttentionConfig | str | dict | None = None,
    n_max: int | dict[str, int] | None = None,
) -> nn.Module:
    """Replace the attention of ``model`` (in place) with STAMP attention; returns ``model``.

    ``mask``: a ``MaskConfig`` or mapping (default: multi-layer STAMP with ``init=identity``, so
    the outputs equal the original's at injection; a mapping without ``init`` gets identity).
    ``mask.type=global``: one generator on the first targeted layer's input, its M shared by
    every targeted layer (``mask.global_input=layer``: re-applied to each layer's input).
    ``targets``: None = every supported self-attention module; a name / glob pattern (matched
    against the whole module name or a dotted run of it, e.g. ``"layer.0"``), a list of them,
    or a predicate ``(name, module) -> bool``. ``attention``: the STAMP backend (``eager``,
    ``sdpa``, ``flex``, ``fused`` or an ``AttentionConfig``); None follows the model's own
    implementation (eager -> eager; sdpa -> sdpa for ``fusion=add``, fused for ``mul``).
    ``n_max``: the MLP generator's key columns (an int, or attention module name -> int);
    None = the model's longest sequence (patches + [CLS], or ``max_position_embeddings``).
    The pretrained weights are kept; each targeted module gets a ``stamp`` sub-module.
    """
    mask = _default_mask(mask)
    attention_cfg = as_backend_config(attention)
    plan = MaskPlan(mask, attention_cfg, places=GENERATOR_PARTS, where="stamp.inject")
    if not plan.parts:
        raise ValueError("stamp.inject: mask.type=none injects nothing (use multilayer or global)")
    owner: InjectedStamp | None = None  # mask=global: the first targeted layer's stamp
    chosen = select_targets(model, targets)
    already = [n for n, m in chosen.items() if isinstance(getattr(m, "stamp", None), InjectedStamp)]
    if already:
        raise ValueError(f"stamp.inject: already injected: {', '.join(already)}")
    from stamp.injection import hf

    for name, module in chosen.items():
        family = _family_of(module)
        limit = n_max.get(name) if isinstance(n_max, dict) else n_max
        if family == "hf":
            if limit is None:
                limit = hf.default_n_max(module)
            _check_n_max(mask, limit, name)
            stamp = hf.make_stamp(module, mask, limit, attention_cfg, shared=owner)
            hf.attach(module, stamp)
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
            ref = module.qkv.weight
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
        "format": FORMAT,
        "mask": _as_dict(first.mask_cfg),
        "attention": _as_dict(first.attention_cfg),
        "targets": list(stamps),
        "n_max": {name: s.n_max for name, s in stamps.items()},
        # every supported attention module of the model (injected or not): load refuses a model
        # with another layer set (a 3-layer model would keep its third layer without STAMP)
        "attention_modules": sorted(attention_modules(model)),
    }


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write the STAMP weights (safetensors if installed, else torch.save) and
    ``stamp_config.json`` into ``directory``; returns the weights' path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = injection_config(model)
    weights = {k: v.detach().contiguous().cpu() for k, v in stamp_state_dict(model).items()}
    try:
        from safetensors.torch import save_file

        path = directory / WEIGHTS_SAFETENSORS
        save_file(weights, str(path))
    except ImportError:  # pragma: no cover - safetensors ships with transformers
        path = directory / WEIGHTS_TORCH
        torch.save(weights, path)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / WEIGHTS_SAFETENSORS).exists():
        from safetensors.torch import load_file

        return load_file(str(directory / WEIGHTS_SAFETENSORS))
    if (directory / WEIGHTS_TORCH).exists():
        return _read_weights_safely(directory / WEIGHTS_TORCH)
    raise FileNotFoundError(
        f"stamp.load: no {WEIGHTS_SAFETENSORS} or {WEIGHTS_TORCH} in {directory}"
    )


def load(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load STAMP weights saved by ``save`` into ``model`` (in place; returns it).

    A model without STAMP is injected first with the saved mask config, targets and n_max; an
    injected one must match them (differences are listed). Every tensor is checked for a
    missing / unexpected name and its shape before anything is copied.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"stamp.load: {config_path} not found (written by stamp.save)")
    saved = json.loads(config_path.read_text())
    if saved.get("format") != FORMAT:
        raise ValueError(
            f"stamp.load: {config_path} has format {saved.get('format')!r}, expected {FORMAT!r}"
        )
    if not injected_modules(model):
        missing = [t for t in saved["targets"] if t not in attention_modules(model)]
        if missing:
            raise ValueError(
                "stamp.load: the model has no supported attention module named "
                f"{', '.join(missing[:4])} (saved targets); is it the same architecture?"
            )
        _check_layer_set(saved, model, config_path)
        inject(
            model,
            mask=MaskConfig(**saved["mask"]),
            targets=lambda name, _: name in set(saved["targets"]),
            attention=None if saved["attention"] is None else AttentionConfig(**saved["attention"]),
            n_max=saved["n_max"],
        )
    else:
        _check_layer_set(saved, model, config_path)
        problems = _config_differences(saved, injection_config(model))
        if problems:
            raise ValueError(
                "stamp.load: the model's STAMP injection differs from the saved one:\n  "
                + "\n  ".join(problems)
            )
    weights = _read_weights(directory)
    own = stamp_state_dict(model)
    problems = [f"missing in the file: {k}" for k in own if k not in weights]
    problems += [f"not in the model: {k}" for k in weights if k not in own]
    problems += [
        f"shape of {k}: file {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    if problems:
        raise ValueError(
            "stamp.load: the saved STAMP weights do not fit:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(weights, strict=False)
    return model


def _check_layer_set(saved: dict, model: nn.Module, config_path: Path) -> None:
    """The model has the attention layers of the model the STAMP weights were saved from
    (files written before this was recorded carry no list and are not checked)."""
    if saved.get("attention_modules") is None:
        return
    before, now = set(saved["attention_modules"]), set(attention_modules(model))
    if before == now:
        return
    lines = [f"only in the model: {', '.join(sorted(now - before))}"] if now - before else []
    if before - now:
        lines.append(f"only in the saved model: {', '.join(sorted(before - now))}")
    raise ValueError(
        f"stamp.load: {config_path} was saved from a model with another set of attention "
        f"layers ({len(before)} saved, {len(now)} here):\n  " + "\n  ".join(lines)
    )


def _read_weights_safely(file: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: tensors only; a file that pickles code is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a weights-only refusal or a corrupt file
        raise ValueError(
            f"stamp.load: {file} cannot be read as tensors only ({type(err).__name__}); a file "
            "that pickles Python objects is refused, since unpickling them could run code"
        ) from err


def _config_differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in ("mask", "attention"):
        a, b = saved.get(key) or {}, current.get(key) or {}
        for field in sorted(set(a) | set(b)):
            if a.get(field) != b.get(field):
                out.append(f"{key}.{field}: saved {a.get(field)!r}, model {b.get(field)!r}")
    if sorted(saved["targets"]) != sorted(current["targets"]):
        only_saved = sorted(set(saved["targets"]) - set(current["targets"]))
        only_model = sorted(set(current["targets"]) - set(saved["targets"]))
        out.append(f"targets: only saved {only_saved}, only in the model {only_model}")
    for name, value in saved.get("n_max", {}).items():
        if name in current["n_max"] and current["n_max"][name] != value:
            out.append(f"n_max[{name}]: saved {value}, model {current['n_max'][name]}")
    return out
