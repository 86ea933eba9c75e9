"""Checkpoints that know their model: the resolved model config travels with the weights (as
litgpt's ``model_config.yaml`` or HF's ``config.json``) and is compared key by key on load."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_KEY = "stamp_model_config"
# what else rebuilds the run's model at evaluation: the config groups chosen (task, mask, model,
# attention) and the resolved data / attention settings (feature dims, max lengths, vocab...)
RUN_KEY = "stamp_run_config"
RESTORED_GROUPS = ("task", "model", "mask", "attention")
# machine settings a checkpoint's data config does not impose on another machine
MACHINE_KEYS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")
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


def hydra_choices() -> dict[str, str]:
    """The config groups chosen for this run (``task``, ``mask``, ``model``, ``attention``) as
    Hydra recorded them; empty when composed without ``@hydra.main`` (tests)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        choices = HydraConfig.get().runtime.choices
    except ValueError:
        return {}
    return {g: str(choices[g]) for g in RESTORED_GROUPS if choices.get(g) is not None}


def run_config(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """What besides ``model_config`` rebuilds the run's model from its checkpoint alone: the
    group choices and the resolved ``data``, ``attention`` and ``module`` (evaluation settings:
    metrics, decoding, post-processing) settings (stored under
    ``RUN_KEY``; informative, never compared as the model config is)."""
    if choices is None:
        choices = hydra_choices()
    return {
        "choices": dict(choices),
        "data": OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
        if cfg.get("data") is not None
        else None,
        "attention": OmegaConf.to_container(cfg.attention, resolve=True, enum_to_str=True),
        "module": OmegaConf.to_container(cfg.module, resolve=True, enum_to_str=True)
        if cfg.get("module") is not None
        else None,
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


class UnsafeCheckpointError(ValueError):
    """The file holds pickled Python objects other than weights: loading them would run code."""


def checkpoint_safe_globals() -> list[Any]:
    """The classes besides tensors and plain containers that a Lightning checkpoint of this
    project may hold, and nothing else: paths (``ModelCheckpoint`` state written with a
    ``Path`` dirpath) and Lightning's ``AttributeDict`` (``save_hyperparameters``)."""
    from lightning.fabric.utilities.data import AttributeDict

    return [pathlib.PosixPath, pathlib.PurePosixPath, AttributeDict]


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Every ``torch.load`` inside (ours and Lightning's ``Trainer.fit / validate / test``
    with ``weights_only=True``) accepts the allow-list of ``checkpoint_safe_globals`` on top of
    torch's weights-only set."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def _unsafe_global(err: BaseException) -> str | None:
    """The refused global's name from torch's weights-only error, or None for other errors."""
    text = str(err)
    if "Weights only load failed" not in text and "weights_only" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1)
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"pickle opcode {found.group(1)}, outside torch.save's format"
    return "an object that is not a tensor"


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with the project's allow-list: the one way a
    user-supplied checkpoint is read. A file that pickles code (any class or function outside
    the allow-list) is refused with ``UnsafeCheckpointError`` before anything of it runs; an
    empty, truncated or foreign file gives a ``ValueError`` naming it."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): the run that wrote it was killed")
    try:
        with safe_loading():
            # memory-mapped (tensors are not read) where the format allows it
            return torch.load(
                path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True
            )
    except Exception as err:  # noqa: BLE001 - any unpickling / zip error means the same here
        name = _unsafe_global(err)
        if name is not None:
            raise UnsafeCheckpointError(
                f"{what} {path} refused: it holds a pickled Python object ({name}) that is "
                "not a tensor or a plain container, and unpickling it could run code from "
                "the file (a crafted checkpoint runs a shell command this way). Only weights "
                f"and {', '.join(c.__name__ for c in checkpoint_safe_globals())} are read; "
                "re-save it as a state dict of tensors if you trust where it comes from."
            ) from err
        raise ValueError(
            f"{what} {path} ({size} bytes) cannot be read: truncated or not a PyTorch "
            f"Lightning checkpoint ({type(err).__name__}: {err})"
        ) from err


LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's dict, read by ``safe_load``, or a clear error naming the file
    when it is not one (a ``torch.save``d dict without Lightning's keys)."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a PyTorch Lightning "
            "checkpoint (a dict with a state_dict)"
        )
    missing = [key for key in LIGHTNING_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not a PyTorch Lightning checkpoint: no {' / '.join(missing)} "
            f"(its keys: {', '.join(map(str, list(checkpoint)[:8])) or 'none'}). Pass a .ckpt "
            "written by train.py (<run>/checkpoints/)."
        )
    return checkpoint


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
            + (
                "(eval.py / predict.py ckpt_path=<file> take the checkpoint's settings by "
                "themselves: the differences come from this command's own overrides)\n"
                if evaluation
                else ""
            )
            + "Or allow_config_mismatch=true to use it anyway (recorded in results.json)."
        )
    if diffs:
        log.warning("allow_config_mismatch=true: %s differs in %s", path, sorted(diffs))
    return report


def write_checkpoint_file(checkpoint: dict[str, Any], file: Any) -> None:
    """Serialize ``checkpoint`` into the open binary ``file`` (the one place that writes a
    checkpoint's bytes; the disk-full tests replace it)."""
    torch.save(checkpoint, file)


def atomic_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to a temporary file in ``path``'s directory and rename it over
    ``path``: a kill or a full disk never leaves a partial file under a final name, and no
    temporary file is written elsewhere (Lightning's own save goes through fsspec, whose
    transaction writes into /tmp and copies across file systems). On failure the temporary
    file is removed and the error (e.g. ``OSError(ENOSPC)``) propagates, naming ``path``."""
    from tasks.common.runtime.results import atomic_temp

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = atomic_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write_checkpoint_file(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"no space left on the device writing checkpoint {path}"
            ) from err
        raise


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O for this project's runs: saves are atomic (``atomic_save``)
    and loads go through ``safe_load`` (weights only, the project's allow-list), whatever
    ``weights_only`` Lightning passes. Remote paths (``s3://``...) keep Lightning's own I/O."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return safe_load(path)


# -- rebuilding a run's config from its checkpoint alone (eval.py / predict.py ckpt_path=<file>)

# Hydra's command-line flags that take a value (the value is not an override)
HYDRA_FLAGS_WITH_VALUE = (
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun",
)  # fmt: skip
_DATA_INTERPOLATION = re.compile(r"^\$\{(data\.[\w.]+)\}$")


def split_argv(argv: list[str]) -> tuple[list[str], list[int]]:
    """(overrides, their positions) among ``argv``'s Hydra flags and overrides."""
    overrides, positions, skip = [], [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token.startswith("-") and not token.startswith("~"):
            skip = token in HYDRA_FLAGS_WITH_VALUE
        else:
            overrides.append(token)
            positions.append(i)
    return overrides, positions


def _user_keys(overrides: list[Any]) -> set[str]:
    return {o.key_or_group for o in overrides if not o.key_or_group.startswith("hydra")}


def _set_by_user(key: str, user: set[str]) -> bool:
    """``key`` or one of its parents / children is on the command line."""
    return any(key == u or key.startswith(u + ".") or u.startswith(key + ".") for u in user)


def _machine_value(key: str, value: Any) -> bool:
    """A setting of the machine that wrote the checkpoint: worker counts, and file paths that
    do not exist here (this machine's own paths, ``configs/local``, are kept)."""
    if key.rsplit(".", 1)[-1] in MACHINE_KEYS:
        return True
    return isinstance(value, str) and value.startswith("/") and not Path(value).exists()


def _tree_overrides(
    stored: Any, composed: Any, raw: Any, key: str, user: set[str], skip_interpolated: bool
) -> list[tuple[str, Any, Any]]:
    """[(override, stored value, interpolation)] that turn ``composed`` into ``stored`` (dicts
    walked key by key; a key the command line sets, or a machine setting, is left as composed).
    With ``skip_interpolated``, a differing key whose config value is an interpolation gives no
    override ("") but its interpolation, to be restored through its source."""
    if isinstance(stored, dict) and isinstance(composed, dict):
        out = []
        raw = raw if isinstance(raw, dict) else {}
        for k in sorted(set(stored) | set(composed), key=str):
            sub = f"{key}.{k}"
            if k not in stored:  # (the mask / attention schemas' fields cannot be deleted)
                if not _set_by_user(sub, user) and sub.startswith(("model.", "data.", "module.")):
                    out.append((f"~{sub}", None, None))
                continue
            if k not in composed:
                if not _set_by_user(sub, user) and not _machine_value(sub, stored[k]):
                    out.append((as_override("+" + sub, stored[k]), stored[k], None))
                continue
            out += _tree_overrides(stored[k], composed[k], raw.get(k), sub, user, skip_interpolated)
        return out
    if stored == composed or _set_by_user(key, user) or _machine_value(key, stored):
        return []
    if skip_interpolated and isinstance(raw, str) and "${" in raw:
        return [("", stored, raw)]  # resolves from another key: see after the others
    return [(as_override(key, stored), stored, None)]


def _closest_option(
    compose: Callable[[list[str]], DictConfig],
    restored: list[str],
    group: str,
    options: list[str],
    stored: dict[str, Any],
    user: set[str],
) -> str:
    """``group=<option>`` whose composed settings differ from ``stored`` in the fewest keys."""

    def distance(option: str) -> int:
        node = compose([*restored, f"{group}={option}"])[group]
        composed = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        return len(_tree_overrides(stored, composed, {}, group, user, False))

    return f"{group}={min(options, key=distance)}"


def checkpoint_overrides(
    path: str | Path, overrides: list[str], config_name: str = "eval"
) -> list[str]:
    """The overrides that rebuild the model of checkpoint ``path`` (its task, model, mask and
    attention groups, then each model / mask / attention / data / module setting that differs
    from the config composed with them), less everything ``overrides`` (the command line) sets:
    the user's settings win, and where they ask for another model than the checkpoint's, the
    evaluation stops with the differing keys (``check_checkpoint_config``). Module settings
    are the run's evaluation settings (metrics, decoding, post-processing).

    Model settings that are interpolations of ``data.X`` (``vid_dim: ${data.v_feat_dim}``) are
    restored through ``data.X``, so data and model agree. Paths are restored only where they
    exist on this machine; worker counts are not restored. Checkpoints written before the data
    settings were stored (no ``RUN_KEY``) restore task, mask and model. Returns [] when the
    checkpoint carries no config or the command line names another task."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tasks.common.runtime.compose import CONFIG_DIR, compose_config

    checkpoint = read_checkpoint(path)
    stored = checkpoint.get(CONFIG_KEY)
    if stored is None:
        log.warning("checkpoint %s carries no model config: nothing to rebuild from it", path)
        return []
    run = checkpoint.get(RUN_KEY) or {}
    parsed = OverridesParser.create().parse_overrides(overrides)
    user = _user_keys(parsed)
    probe = [o.input_line for o in parsed if not o.is_sweep_override()]
    choices = {"task": stored["task_name"], "mask": stored["mask"].get("type")}
    choices.update(run.get("choices") or {})
    groups = [f"{g}={c}" for g, c in choices.items() if c is not None and g not in user]
    # a group the user sets to the checkpoint's own choice (``task=X mask=Y`` as eval.py took
    # before) restores its settings; another choice keeps the user's (another mask / backend
    # is their request)
    same = {o.key_or_group for o in parsed if choices.get(o.key_or_group) == str(o.value())}
    user -= same & set(RESTORED_GROUPS)
    sections = {
        "mask": stored.get("mask"),
        "model": stored.get("model"),
        "data": run.get("data"),
        "attention": run.get("attention"),
        "module": run.get("module"),
    }
    sections = {k: v for k, v in sections.items() if v is not None and k not in user}

    def compose(extra: list[str]) -> DictConfig:
        with tempfile.TemporaryDirectory() as tmp:
            return compose_config([*extra, *probe], tmp, config_name)

    restored = list(groups)
    for last in (False, True):
        try:
            cfg = compose(restored)
        except Exception as err:  # noqa: BLE001 - Hydra reports the command line's own errors
            log.warning("could not compose %s with checkpoint %s's config: %s", probe, path, err)
            return []
        if cfg.get("task_name") != stored["task_name"]:
            log.info(
                "task %s requested, checkpoint %s is %s: its config is not restored",
                cfg.get("task_name"), path, stored["task_name"],
            )  # fmt: skip
            return []
        group = "model"
        if not last and group not in choices and group not in user and "model" in sections:
            # a task with a model group (AVE) whose checkpoint did not record the choice (a run
            # composed without @hydra.main): the option closest to the stored model
            if cfg.hydra.runtime.choices.get(group) is not None:
                options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
                restored.append(
                    _closest_option(compose, restored, group, options, sections[group], user)
                )
                cfg = compose(restored)
        added: list[str] = []
        for section, tree in sections.items():
            if cfg.get(section) is None:
                continue
            composed = OmegaConf.to_container(cfg[section], resolve=True, enum_to_str=True)
            raw = OmegaConf.to_container(cfg[section], resolve=False)
            for override, value, interpolation in _tree_overrides(
                tree, composed, raw, section, user, skip_interpolated=not last
            ):
                if override:
                    added.append(override)
                    continue
                # a model key interpolating data.X: restore data.X when the checkpoint has no
                # data settings, else the next round sees whether it resolved
                source = _DATA_INTERPOLATION.match(interpolation)
                if "data" not in sections and source and not _set_by_user(source[1], user):
                    added.append(as_override(source[1], value))
        done = {o.split("=", 1)[0].lstrip("+~") for o in restored}
        added = [o for o in dict.fromkeys(added) if o.split("=", 1)[0].lstrip("+~") not in done]
        restored += added
        if not added:
            break
    return restored


def with_checkpoint_config(argv: list[str], config_name: str = "eval") -> list[str]:
    """``argv`` (a command line's arguments after the script) with the overrides of
    ``checkpoint_overrides`` inserted before the user's own, when it has one
    ``ckpt_path=<existing file>`` (a glob matching one file counts). The pre-compose step of
    eval.py / predict.py: Hydra composes the config before ``main`` runs, so the checkpoint's
    task and model must be on the command line it parses. An unreadable checkpoint is left to
    the run itself to report."""
    import glob

    overrides, positions = split_argv(argv)
    paths = [o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")]
    if len(paths) != 1:
        return list(argv)
    path = paths[0]
    if not Path(path).exists() and glob.has_magic(path):
        matches = sorted(glob.glob(path))
        path = matches[0] if len(matches) == 1 else path
    if not Path(path).is_file():
        return list(argv)
    try:
        restored = checkpoint_overrides(path, overrides, config_name)
    except ValueError:  # unreadable / unsafe: the run stops with the message naming the file
        return list(argv)
    if restored:
        print(f"from checkpoint {path}: {' '.join(restored)}", file=sys.stderr)
    at = positions[0]
    return [*argv[:at], *restored, *argv[at:]]
