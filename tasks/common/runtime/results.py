"""Reading and writing the per-run ``results.json`` files and printing them as a table."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stamp.config import MaskType

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux; else the
    ``os.umask`` set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_file_mode(fd: int) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode an ordinary ``open`` would: 0666
    less the user's umask, so colleagues on a shared cluster can read a run (0644 under the
    usual umask 022)."""
    os.fchmod(fd, 0o666 & ~current_umask())


def atomic_temp(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path`` (same directory, hence same file system: the
    rename is atomic and nothing is left in /tmp), with the user's file mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    user_file_mode(fd)
    return fd, tmp


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader
    (or a kill) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = atomic_temp(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


# the fields that tables and summaries compute with, and the JSON types they must have
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "kind": (str,),
    "task": (str, type(None)),
    "seed": (int, type(None)),
    "metrics": (dict,),
    "params": (dict, type(None)),
    "best": (dict, type(None)),
    "config": (dict, type(None)),
    "tags": (list, type(None)),
    "wall_time_s": (int, float, type(None)),
}


def record_problems(record: dict[str, Any]) -> list[str]:
    """Fields of a results record whose type is not the one the tables compute with (a
    results.json edited or written by another tool), e.g. ``metrics is a str, not an object``."""
    names = {dict: "object", list: "list", str: "string", int: "integer", float: "number"}
    problems = []
    for key, types in FIELD_TYPES.items():
        value = record.get(key)
        if key in record and (isinstance(value, bool) or not isinstance(value, types)):
            wanted = " or ".join(names.get(t, "null") for t in types)
            problems.append(f"{key} is {json.dumps(value, default=str)[:40]}, not {wanted}")
    metrics = record.get("metrics")
    for name, value in metrics.items() if isinstance(metrics, dict) else []:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            shown = json.dumps(value, default=str)[:40]
            problems.append(f"metrics.{name} is {shown}, not a number")
    return problems


def read_record(file: str | Path) -> dict[str, Any] | None:
    """One results.json, or None (with a warning naming the file) when it is empty, truncated,
    not a JSON object, or has a field of the wrong type (``record_problems``)."""
    file = Path(file)
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("skipping unreadable results file %s (%s)", file, err or "empty")
        return None
    if not isinstance(record, dict):
        log.warning("skipping results file %s: not a JSON object", file)
        return None
    problems = record_problems(record)
    if problems:
        log.warning("skipping results file %s: %s", file, "; ".join(problems))
        return None
    return record


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All readable results.json under the given run / sweep directories (or the files
    themselves), each with ``results_file``, the path it was read from; unreadable ones are
    skipped with a warning naming the file."""
    records = []
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob(RESULTS_FILE))
        for file in files:
            record = read_record(file)
            if record is None:
                continue
            record.setdefault("run_dir", str(file.parent))
            record["results_file"] = str(file)  # where it was read (the run may have moved)
            records.append(record)
    return records


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def mask_setting(record: dict[str, Any], name: str) -> Any:
    """A ``mask.<name>`` setting of a run: a top-level field of the record, else the
    resolved config saved in results.json (``config.mask``); None when neither has it."""
    if record.get(name) is not None:
        return record[name]
    config = record.get("config") or {}
    return (config.get("mask") or {}).get(name) if isinstance(config, dict) else None


def mask_type(record: dict[str, Any]) -> MaskType | None:
    """A run's mask mode (results.json ``mask``); None for a record without one. Code outside
    ``stamp/`` asks it what it is (``uses_generator``, ...) instead of comparing names."""
    mask = record.get("mask")
    if mask is None:
        return None
    try:
        return MaskType(str(mask))
    except ValueError:
        raise ValueError(
            f"{record.get('run_dir', 'a run record')}: mask {mask!r} is not one of "
            f"{', '.join(m.value for m in MaskType)}"
        ) from None


def is_true(value: Any) -> bool:
    """A flag read from a record, a config or a W&B export (bool or its text)."""
    return value is True or str(value).lower() in ("true", "1", "yes")


def generator_label(record: dict[str, Any]) -> str:
    """The generator form of a run: ``mlp``, ``lowrank(r=16)``, with ``+per-head``."""
    form = str(mask_setting(record, "generator") or "mlp")
    if form == "lowrank":
        form += f"(r={mask_setting(record, 'rank')})"
    return form + ("+per-head" if is_true(mask_setting(record, "per_head")) else "")


def format_summary(records: list[dict[str, Any]], max_metrics: int = 8) -> str:
    """A markdown table: one row per run with its settings, status and validation metrics."""
    metric_keys: list[str] = []
    for r in records:
        for key in r.get("metrics", {}):
            if (
                key.startswith(("val/", "test/"))
                and "aux_loss" not in key
                and key not in metric_keys
            ):
                metric_keys.append(key)
    metric_keys = sorted(metric_keys)[:max_metrics]
    header = [
        "run",
        "mask",
        "fusion",
        "depth",
        "generator",
        "attention",
        "seed",
        "status",
        "mask params",
        *metric_keys,
        "time (s)",
    ]
    rows = []
    for r in records:
        kind = mask_type(r)
        masked = kind is not None and not kind.is_full_attention
        rows.append(
            [
                Path(r.get("run_dir", "")).name,
                r.get("mask"),
                r.get("fusion") if masked else "",
                r.get("depth") if masked else "",
                generator_label(r) if masked else "",
                r.get("attention"),
                r.get("seed"),
                r.get("status"),
                (r.get("params") or {}).get("params/mask"),
                *[r.get("metrics", {}).get(k) for k in metric_keys],
                r.get("wall_time_s"),
            ]
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
