"""Checkpoints that know their model: the resolved model config travels with the weights (as
litgpt's ``model_config.yaml`` or HF's ``config.json``) and is compared key by key on load."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_KEY = "stamp_model_config"
# machine-specific file locations: not part of the model's identity
PATH_KEYS = ("path", "_path", "_dir", "pretrained", "weights")
# settings that do not change what trained weights compute at evaluation (or only how they run)
EVAL_FREE = ("drop", "checkpoint", "freeze", "num_beams", "length_penalty", "max_gen_len")


class CheckpointConfigMismatch(ValueError):
    """The checkpoint was trained with another model config than the one requested."""


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the model of a run: task, resolved ``mask`` and ``model`` settings (the
    attention backend is left out: every backend computes the same function)."""
    return {
        "task_name": cfg.get("task_name"),
        "mask": OmegaConf.to_container(cfg.mask, resolve=True, enum_to_str=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
    }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _ignored(key: str, evaluation: bool) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    if leaf.endswith(PATH_KEYS):
        return True
    return evaluation and any(word in leaf for word in EVAL_FREE)


def config_differences(
    stored: dict[str, Any], requested: dict[str, Any], evaluation: bool = False
) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (checkpoint value, requested value)} for every key that differs; paths are
    ignored, and for evaluation also dropout / activation-checkpointing / decoding settings."""
    a, b = flatten(stored), flatten(requested)
    missing = object()
    diffs = {}
    for key in sorted(set(a) | set(b)):
        if _ignored(key, evaluation):
            continue
        left, right = a.get(key, missing), b.get(key, missing)
        if left != right:
            diffs[key] = (
                "<absent>" if left is missing else left,
                "<absent>" if right is missing else right,
            )
    return diffs


def as_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override syntax (lists in brackets, None as null)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}:{fmt(x)}" for k, x in v.items()) + "}"
        text = str(v)
        return text if re.fullmatch(r"[\w./+-]+", text) else "'" + text.replace("'", "\\'") + "'"

    return f"{key}={fmt(value)}"


def suggested_overrides(diffs: dict[str, tuple[Any, Any]]) -> list[str]:
    """The overrides that give the checkpoint's model: the task and mask type as their config
    groups (``task=``, ``mask=``) first, then each other differing key with the checkpoint's
    value (keys the checkpoint does not have are left out)."""
    groups = {"task_name": "task", "mask.type": "mask"}
    first = [f"{groups[k]}={v[0]}" for k, v in diffs.items() if k in groups]
    rest = [
        as_override(k, v[0]) for k, v in diffs.items() if k not in groups and v[0] != "<absent>"
    ]
    return first + rest


def training_overrides(path: str | Path) -> tuple[Path, list[str]] | None:
    """(file, overrides) of the run that wrote ``<run>/checkpoints/<file>.ckpt``: Hydra's
    ``<run>/.hydra/overrides.yaml``, when it is there."""
    file = Path(path).resolve().parent.parent / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return None
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(file))
    except Exception:  # noqa: BLE001 - a hint only
        return None
    return file, [str(o) for o in overrides or []]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (memory-mapped: tensors are not read), or a clear error naming the
    file when it is empty, truncated or not a checkpoint."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the run that wrote it was killed")
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling / zip error means the same here
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            pass
        raise ValueError(
            f"checkpoint {path} ({size} bytes) cannot be read: truncated or not a PyTorch "
            f"Lightning checkpoint ({type(err).__name__}: {err})"
        ) from err


def check_checkpoint_config(
    path: str | Path, cfg: DictConfig, evaluation: bool, allow_mismatch: bool = False
) -> dict[str, Any]:
    """Compare the checkpoint's stored model config with ``cfg``'s.

    Returns a dict for results.json: ``{"checked": bool, "mismatch": {key: [ckpt, requested]}}``.
    Raises ``CheckpointConfigMismatch`` listing each differing key unless ``allow_mismatch``.
    """
    checkpoint = read_checkpoint(path)
    stored = checkpoint.get(CONFIG_KEY)
    if stored is None:
        log.warning(
            "checkpoint %s carries no model config (written before configs were stored): "
            "cannot check that it matches the requested model",
            path,
        )
        return {"checked": False, "mismatch": {}, "epoch": checkpoint.get("epoch")}
    diffs = config_differences(stored, model_config(cfg), evaluation)
    report = {
        "checked": True,
        "mismatch": {k: list(v) for k, v in diffs.items()},
        "epoch": checkpoint.get("epoch"),
    }
    if diffs and not allow_mismatch:
        lines = "\n".join(
            f"  {k}: checkpoint {v[0]!r}, requested {v[1]!r}" for k, v in diffs.items()
        )
        fix = suggested_overrides(diffs)
        trained = training_overrides(path)
        raise CheckpointConfigMismatch(
            f"checkpoint {path} was trained with another model config:\n{lines}\n"
            + (
                f"Add the checkpoint's settings to the command line:\n  {' '.join(fix)}\n"
                if fix
                else ""
            )
            + (
                f"(its training run's overrides, {trained[0]}: {' '.join(trained[1]) or 'none'})\n"
                if trained
                else ""
            )
            + "Or allow_config_mismatch=true to use it anyway (recorded in results.json)."
        )
    if diffs:
        log.warning("allow_config_mismatch=true: %s differs in %s", path, sorted(diffs))
    return report
