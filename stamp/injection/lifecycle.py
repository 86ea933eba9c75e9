"""The life of a STAMP adapter after ``stamp.inject``: give the original modules back
(``unload``), write it as a directory and read it back by a path or a Hugging Face Hub id
(``save`` / ``load``, peft's ``save_pretrained`` / ``from_pretrained``), publish it
(``push_to_hub``).

The directory (format ``stamp-adapter/2``), as peft lays out an adapter:

    stamp_config.json          mask and backend config, injected module names, n_max, the
                               base model (class, name, config, tensor layout), format version
    adapter_model.safetensors  STAMP's weights only, under their names in model.state_dict()
    README.md                  a short model card: what, base model, mask, size, how to load

Nothing in it is a pickle: weights are safetensors, the rest is JSON and text. Directories of
the first format (``stamp-inject/1``: ``stamp_model.safetensors``) still load; its
``stamp_model.pt`` fallback (a pickle) is refused.

``unload`` is exact because ``inject`` is recorded: ``reversible`` compares every module of the
model before and after an injection (class, attributes, sub-modules, parameters, hooks) and keeps
what changed on the changed module; ``unload`` puts the old values back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

FORMAT = "stamp-adapter/2"
LEGACY_FORMAT = "stamp-inject/1"
CONFIG_FILE = "stamp_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
LEGACY_WEIGHTS = "stamp_model.safetensors"
LEGACY_PICKLE = "stamp_model.pt"
HUB_TIMEOUT = 10.0  # seconds for one Hub request: no network fails, it never hangs
UNDO_ATTR = "_stamp_undo"  # on each module inject changed: its changes, oldest first

# config entries that do not define the base model's function (metadata, run-time switches,
# label names, dropout rates): not compared on load
_RUNTIME_CONFIG_KEYS = {
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "attn_implementation",
    "_attn_implementation_internal",
    "_attn_implementation_autoset",
    "_commit_hash",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
}

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------------ unload
class _Absent:
    """Marks an attribute or dict entry that did not exist before the injection."""


@dataclass
class ModuleChange:
    """What one injection changed on one module, with the values from before."""

    cls: type
    attrs: dict[str, Any] = field(default_factory=dict)  # __dict__ key -> old value / _Absent
    items: dict[str, dict[Any, Any]] = field(default_factory=dict)  # dict attr -> key -> old
    order: dict[str, list[Any]] = field(default_factory=dict)  # dict attr -> its old key order


class _Snapshot:
    """Every module of ``model`` as it is now: class, ``__dict__``, and a copy of each dict
    attribute (``_parameters``, ``_modules``, ``_forward_pre_hooks``, ...)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [
            (
                m,
                type(m),
                dict(m.__dict__),
                {k: dict(v) for k, v in m.__dict__.items() if _is_map(v)},
            )
            for m in model.modules()
        ]

    def changes(self) -> list[tuple[nn.Module, ModuleChange]]:
        """(module, change) for every module that differs from the snapshot."""
        out = []
        for module, cls, attrs, maps in self.modules:
            change = ModuleChange(cls)
            now = module.__dict__
            for key in now.keys() - attrs.keys():
                change.attrs[key] = _Absent
            for key, old in attrs.items():
                new = now.get(key, _Absent)
                if key in maps and new is old:  # the same dict: compare its entries
                    diff = _map_changes(maps[key], new)
                    if diff:
                        change.items[key] = diff
                        change.order[key] = list(maps[key])
                elif new is not old:
                    change.attrs[key] = old
            if type(module) is not cls or change.attrs or change.items:
                out.append((module, change))
        return out


def _is_map(value: object) -> bool:
    return isinstance(value, dict)


def _map_changes(before: dict, now: dict) -> dict:
    diff = {k: _Absent for k in now.keys() - before.keys()}
    diff.update({k: v for k, v in before.items() if now.get(k, _Absent) is not v})
    return diff


def _revert(module: nn.Module, change: ModuleChange) -> None:
    """Put back what ``change`` records (class, attributes, dict entries in their old order)."""
    state = module.__dict__
    for key, old in change.attrs.items():
        if old is _Absent:
            state.pop(key, None)
        else:
            state[key] = old
    for key, entries in change.items.items():
        mapping = state[key]
        removed = False
        for k, old in entries.items():
            if old is _Absent:
                mapping.pop(k, None)
            else:
                removed |= k not in mapping
                mapping[k] = old
        if removed:  # re-inserted entries go back to their old place
            old_order = change.order[key]
            keys = [k for k in old_order if k in mapping] + [
                k for k in mapping if k not in old_order
            ]
            reordered = [(k, mapping[k]) for k in keys]
            mapping.clear()
            mapping.update(reordered)
    if type(module) is not change.cls:
        module.__class__ = change.cls


def _revert_all(changes: list[tuple[nn.Module, ModuleChange]]) -> None:
    for module, change in reversed(changes):
        _revert(module, change)


@contextlib.contextmanager
def undo_on_error(model: nn.Module) -> Iterator[None]:
    """Leave ``model`` as it was if the block raises (an injection that failed half-way)."""
    snapshot = _Snapshot(model)
    try:
        yield
    except BaseException:
        _revert_all(snapshot.changes())
        raise


def reversible(inject: F) -> F:
    """Make ``inject(model, ...)`` undoable: on success each changed module keeps its changes
    (``unload`` reverts them); on an error nothing of the half-done injection stays."""

    @functools.wraps(inject)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        snapshot = _Snapshot(model)
        try:
            out = inject(model, *args, **kwargs)
        except BaseException:
            _revert_all(snapshot.changes())
            raise
        for module, change in snapshot.changes():
            # a new tuple, not an append: an enclosing undo_on_error (stamp.load) sees it change
            module.__dict__[UNDO_ATTR] = (*module.__dict__.get(UNDO_ATTR, ()), change)
        return out

    return wrapper  # type: ignore[return-value]


def unload(model: nn.Module) -> nn.Module:
    """Give back the modules ``stamp.inject`` changed, as they were before it (in place).

    Classes, attributes, sub-modules, configs and hooks are restored and the STAMP modules are
    dropped: the state_dict keys and the outputs equal the original model's (bit for bit, as
    long as the original weights were not trained). ``requires_grad`` is left as it is
    (``mark_only_stamp_trainable`` froze the base: ``model.requires_grad_(True)`` unfreezes it).
    Returns ``model``.
    """
    changed = [m for m in model.modules() if UNDO_ATTR in m.__dict__]
    if not changed:
        raise ValueError(
            "stamp.unload: no module of this model was changed by stamp.inject (models built "
            "with STAMP layers, e.g. the tasks' StampEncoder, have nothing to unload)"
        )
    for module in changed:
        for change in reversed(module.__dict__.pop(UNDO_ATTR)):
            _revert(module, change)
    return model


# ---------------------------------------------------------------------------- the base model
def base_model_info(model: nn.Module, name: str | None = None) -> dict:
    """What the adapter was trained on: class, name (HF ``name_or_path``, timm's hub id, or
    ``name``), the HF config without run-time entries, and the shape of every base tensor."""
    from stamp.injection.api import stamp_state_dict

    stamp_keys = set(stamp_state_dict(model))
    config = getattr(model, "config", None)
    if name is None:
        name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if not name:
        pretrained = getattr(model, "pretrained_cfg", None) or {}
        name = pretrained.get("hf_hub_id") or pretrained.get("architecture")
    layout = {k: list(v.shape) for k, v in model.state_dict().items() if k not in stamp_keys}
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name_or_path": name or None,
        "config": _plain_config(config),
        "layout_sha256": _layout_hash(layout),
        "layout": layout,
    }


def _plain_config(config: object) -> dict | None:
    """An HF config as JSON values, without the entries that do not define the model."""
    if config is None or not hasattr(config, "to_dict"):
        return None
    return _drop_runtime(json.loads(json.dumps(config.to_dict(), default=str)))


def _drop_runtime(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _drop_runtime(v)
            for k, v in value.items()
            if k not in _RUNTIME_CONFIG_KEYS and "dropout" not in k
        }
    return value


def _layout_hash(layout: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def _base_differences(saved: dict, model: nn.Module) -> list[str]:
    """The ways ``model`` differs from the saved base model, one line each."""
    here = base_model_info(model)
    out = []
    if saved.get("class") != here["class"]:
        out.append(f"base model class: saved {saved.get('class')}, model {here['class']}")
    out += [f"config.{line}" for line in _dict_differences(saved.get("config"), here["config"])]
    if saved.get("layout_sha256") not in (None, here["layout_sha256"]) and "layout" in saved:
        before, now = saved["layout"], here["layout"]
        only_saved, only_here = (
            sorted(before.keys() - now.keys()),
            sorted(now.keys() - before.keys()),
        )
        if only_saved:
            out.append(f"base tensors only in the saved model: {_some(only_saved)}")
        if only_here:
            out.append(f"base tensors only in this model: {_some(only_here)}")
        out += [
            f"shape of base tensor {k}: saved {tuple(before[k])}, model {tuple(now[k])}"
            for k in before
            if k in now and list(before[k]) != list(now[k])
        ]
    return out


def _dict_differences(saved: dict | None, here: dict | None, prefix: str = "") -> list[str]:
    """Entries present on both sides whose values differ (an entry only one side has is taken
    as a version difference of the library, not of the model)."""
    if saved is None or here is None:
        return []
    out = []
    for key in sorted(saved.keys() & here.keys()):
        a, b = saved[key], here[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, model {b!r}")
    return out


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _describe_base(base: dict | None) -> str:
    if not base:
        return "an unrecorded base model (format stamp-inject/1)"
    name = f" {base['name_or_path']!r}" if base.get("name_or_path") else ""
    return f"{base.get('class')}{name}"


# ------------------------------------------------------------------------------------- save
def save(
    model: nn.Module,
    directory: str | Path,
    *,
    base_model: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``model``'s STAMP adapter into ``directory``: ``stamp_config.json``,
    ``adapter_model.safetensors`` and a ``README.md`` model card; returns the directory.

    Args:
        model: a model injected by ``stamp.inject``.
        directory: created if missing; the three files are overwritten.
        base_model: the base model's Hub id or path for the card and the config (default: HF's
            ``config.name_or_path`` or timm's ``pretrained_cfg``).
        repo_id: the Hub id the card's loading example names (``push_to_hub`` sets it).
    """
    from safetensors.torch import save_file

    from stamp.injection.api import injection_config, stamp_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory (a generator shared by layers)
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in stamp_state_dict(model).items()}
    config = {
        "format": FORMAT,
        **injection_config(model),
        "parameters": _stamp_parameter_count(model),
        "base_model": base_model_info(model, base_model),
        "saved_with": _versions(),
    }
    save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    _model_card(config, repo_id).save(directory / CARD_FILE)
    return directory


def _stamp_parameter_count(model: nn.Module) -> int:
    from stamp.injection.api import stamp_parameters

    return sum(p.numel() for p in {id(p): p for p in stamp_parameters(model)}.values())


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("stamp-framework", "torch", "transformers", "timm"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def _hub_id(name: str | None) -> str | None:
    """``name`` if it reads as a Hub model id (not an existing local path)."""
    if not name or os.path.exists(name) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    return name


def _model_card(config: dict, repo_id: str | None) -> Any:
    """The README.md of the adapter directory (Hub metadata + what, base, mask, size, how)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = config["base_model"]
    mask = config["mask"]
    hub_id = _hub_id(base.get("name_or_path"))
    data = ModelCardData(library_name="stamp", base_model=hub_id, tags=["stamp", "attention-mask"])
    targets = config["targets"]
    backend = (config.get("attention") or {}).get("backend") or "the model's own (eager / sdpa)"
    base_class = base["class"].rsplit(".", 1)[-1]
    build = f"\nmodel = ...  # the base model: {base['class']}"
    if hub_id and base["class"].startswith("transformers."):
        build = (
            f'import transformers\n\nmodel = transformers.{base_class}.from_pretrained("{hub_id}")'
        )
    elif hub_id and base["class"].startswith("timm."):
        timm_name = f"hf-hub:{hub_id}" if "/" in hub_id else hub_id
        build = f'import timm\n\nmodel = timm.create_model("{timm_name}", pretrained=True)'
    named = f" (`{base['name_or_path']}`)" if base.get("name_or_path") else ""
    kind = f"generator `{mask.get('generator', 'mlp')}`, per head: {mask.get('per_head', False)}"
    more = ", ..." if len(targets) > 1 else ""
    source = repo_id or "<this repository's id or a local copy>"
    body = f"""
# STAMP adapter for {base.get("name_or_path") or base_class}

A learnable soft attention mask (STAMP): in each injected attention layer a small generator
computes M = F(X) from the layer's input tokens and fuses it with the attention logits before
the softmax, `softmax((QKᵀ/√d) ◇ M + mask) V`. This repository holds STAMP's weights only; the
base model's weights are not in it.

* base model: `{base["class"]}`{named}
* mask: `{mask.get("type")}`, fusion `{mask.get("fusion")}`, {kind}
* injected attention layers: {len(targets)} (`{targets[0]}`{more})
* backend: {backend}
* STAMP parameters: {config["parameters"]:,}
* format: `{config["format"]}` (`{CONFIG_FILE}`, `{WEIGHTS_FILE}`)

## How to load

```python
import stamp
{build}
stamp.load(model, "{source}")  # injects STAMP, loads its weights
stamp.unload(model)  # the base model again, unchanged
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    base_model: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload STAMP adapter",
    api: Any = None,
) -> Any:
    """Publish ``model``'s STAMP adapter as the Hub model repository ``repo_id`` (created if
    missing): the directory ``save`` writes, uploaded by ``huggingface_hub``. Returns the
    commit info. ``api``: a ``huggingface_hub.HfApi`` (default: one with ``token``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save(model, tmp, base_model=base_model, repo_id=repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                commit_message=commit_message,
                repo_type="model",
            )
        except (OSError, HTTPError) as err:  # offline mode, no network, HTTP errors
            raise OSError(
                f"stamp.push_to_hub: could not upload to the Hub repository {repo_id!r} "
                f"({type(err).__name__}: {err}). Write the adapter with "
                f"stamp.save(model, DIR) and upload DIR later (`hf upload {repo_id} DIR`)."
            ) from err


# ------------------------------------------------------------------------------------- load
def resolve(
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> Path:
    """The local directory of an adapter: ``source`` itself when it is a directory (a ``Path``
    is always local), else the snapshot of the Hub repository ``source``: downloaded, or from
    the Hub cache (``HF_HUB_CACHE`` or ``cache_dir``) when offline (``HF_HUB_OFFLINE=1``) or
    when the Hub cannot be reached. Every Hub request has a ``HUB_TIMEOUT`` (no hang)."""
    local = Path(source)
    if local.is_dir() or isinstance(source, Path):
        if not local.is_dir():
            raise FileNotFoundError(
                f"stamp.load: {local} is not a directory (written by stamp.save)"
            )
        return local
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, HTTPError
    from huggingface_hub.utils import validate_repo_id

    repo = str(source)
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"stamp.load: {repo!r} is neither a local directory nor a Hub repository id ({err})"
        ) from err
    fetch = functools.partial(
        snapshot_download,
        repo,
        cache_dir=cache_dir,
        token=token,
        allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, LEGACY_WEIGHTS],
        etag_timeout=HUB_TIMEOUT,
    )
    try:
        if constants.HF_HUB_OFFLINE:
            return Path(fetch(revision=revision))  # the cache only
        # snapshot_download looks the revision up without a timeout: resolve it here with one
        # (a commit hash needs no further look-up; each download has etag_timeout)
        info = HfApi(token=token).repo_info(repo, revision=revision, timeout=HUB_TIMEOUT)
        return Path(fetch(revision=info.sha))
    # not cached offline, no network (HTTPError: a connection error or timeout of the look-up),
    # unknown / gated repository (OSError)
    except (OSError, HTTPError) as err:
        error = err
    if not constants.HF_HUB_OFFLINE:
        with contextlib.suppress(OSError):  # the Hub cannot be reached: the cache may have it
            return Path(fetch(revision=revision, local_files_only=True))
    raise FileNotFoundError(
        f"stamp.load: {repo!r} is not a local directory, and the Hub repository {repo!r} "
        f"could not be fetched ({type(error).__name__}: {str(error).splitlines()[0]}). "
        "Provide the directory stamp.save wrote (a path), or the repository in the Hub cache "
        f"(HF_HUB_CACHE or cache_dir=, e.g. after `hf download {repo}` on a machine with "
        "network)" + (", or unset HF_HUB_OFFLINE." if constants.HF_HUB_OFFLINE else ".")
    ) from error


def read_adapter(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and the weights of the adapter in ``directory`` (either format)."""
    from safetensors.torch import load_file

    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"stamp.load: {config_path} not found (written by stamp.save)")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"stamp.load: {config_path} is not valid JSON ({err})") from err
    fmt = saved.get("format")
    if fmt not in (FORMAT, LEGACY_FORMAT):
        raise ValueError(
            f"stamp.load: {config_path} has format {fmt!r}; this version reads {FORMAT!r} and "
            f"{LEGACY_FORMAT!r}"
        )
    weights = directory / (WEIGHTS_FILE if fmt == FORMAT else LEGACY_WEIGHTS)
    if not weights.exists():
        if fmt == LEGACY_FORMAT and (directory / LEGACY_PICKLE).exists():
            raise ValueError(
                f"stamp.load: {directory / LEGACY_PICKLE} is a torch.save (pickle) file; STAMP "
                "adapters are read from safetensors only, since unpickling could run code. "
                "Convert a file you trust: safetensors.torch.save_file(torch.load(path, "
                f"weights_only=True), '{directory / LEGACY_WEIGHTS}')"
            )
        raise FileNotFoundError(f"stamp.load: {weights} not found (written by stamp.save)")
    return saved, load_file(str(weights))


def load(
    model: nn.Module,
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    check_base: bool = True,
) -> nn.Module:
    """Load a saved STAMP adapter into ``model`` (in place; returns it).

    A model without STAMP is injected first with the saved mask config, targets and n_max; an
    injected one must match them. Everything that does not fit is listed in one error, which
    names the saved base model, and ``model`` is left as it was: differences from the saved
    base (class, config key by key, base tensor names and shapes; skipped with
    ``check_base=False``), missing attention modules, STAMP tensors missing in the file, not in
    the model, or of another shape.

    Args:
        model: the base model (with or without STAMP).
        source: a directory written by ``save``, or a Hub repository id (see ``resolve``).
        revision / cache_dir / token: for a Hub id (a branch, tag or commit; the Hub cache; a
            token for a private repository, default: huggingface_hub's login or HF_TOKEN).
        check_base: compare the model with the saved base model.
    """
    from stamp.config import MaskConfig
    from stamp.injection.api import (
        attention_modules,
        inject,
        injected_modules,
        injection_config,
        stamp_state_dict,
    )

    directory = resolve(source, revision=revision, cache_dir=cache_dir, token=token)
    saved, weights = read_adapter(directory)
    base = saved.get("base_model")
    problems = _base_differences(base, model) if check_base and base else []
    problems += _layer_set_differences(saved, attention_modules(model))
    with undo_on_error(model):
        if not injected_modules(model):
            missing = [t for t in saved["targets"] if t not in attention_modules(model)]
            if missing:
                problems.append(
                    f"no supported attention module named {_some(missing)} (saved targets)"
                )
            else:
                with warnings.catch_warnings():  # the saved weights replace the init anyway
                    warnings.filterwarnings("ignore", message="stamp.inject: mask.init")
                    inject(
                        model,
                        mask=MaskConfig(**saved["mask"]),
                        targets=lambda name, _: name in set(saved["targets"]),
                        attention=_attention_of(saved),
                        n_max=saved["n_max"],
                        kind="both",  # the saved targets name self- and cross-attention alike
                    )
        else:
            problems += _config_differences(saved, injection_config(model))
        if injected_modules(model):
            problems += _weight_differences(weights, stamp_state_dict(model))
        if problems:
            hint = (
                "\n(pass check_base=False to load into another base model whose STAMP tensors fit)"
                if check_base and base
                else ""
            )
            raise ValueError(
                f"stamp.load: the STAMP adapter {source} (saved from {_describe_base(base)}) does "
                f"not fit this model ({type(model).__name__}):\n  " + "\n  ".join(problems) + hint
            )
    model.load_state_dict(weights, strict=False)
    return model


def _attention_of(saved: dict) -> Any:
    from stamp.config import AttentionConfig

    return None if saved["attention"] is None else AttentionConfig(**saved["attention"])


def _weight_differences(
    weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> list[str]:
    out = [f"missing in the file: {k}" for k in own if k not in weights]
    out += [f"not in the model: {k}" for k in weights if k not in own]
    out += [
        f"shape of {k}: file {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    return out


def _layer_set_differences(saved: dict, now: dict) -> list[str]:
    """The model has the attention layers of the model the adapter was saved from."""
    if saved.get("attention_modules") is None:
        return []
    before, here = set(saved["attention_modules"]), set(now)
    if before == here:
        return []
    out = [f"another set of attention layers ({len(before)} saved, {len(here)} here):"]
    if here - before:
        out.append(f"  only in the model: {_some(sorted(here - before))}")
    if before - here:
        out.append(f"  only in the saved model: {_some(sorted(before - here))}")
    return out


def _config_differences(saved: dict, current: dict) -> list[str]:
    """How an already injected model's STAMP differs from the saved one."""
    out = []
    for key in ("mask", "attention"):
        a, b = saved.get(key) or {}, current.get(key) or {}
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{key}.{name}: saved {a.get(name)!r}, model {b.get(name)!r}")
    if sorted(saved["targets"]) != sorted(current["targets"]):
        only_saved = sorted(set(saved["targets"]) - set(current["targets"]))
        only_model = sorted(set(current["targets"]) - set(saved["targets"]))
        out.append(f"targets: only saved {only_saved}, only in the model {only_model}")
    for name, value in saved.get("n_max", {}).items():
        if name in current["n_max"] and current["n_max"][name] != value:
            out.append(f"n_max[{name}]: saved {value}, model {current['n_max'][name]}")
    return out
