"""Runs read back from W&B: offline run folders (the ``.wandb`` file) or an online project.

``load_wandb_runs(spec)`` returns records shaped like ``results.json`` (what
``tasks.common.reporting.tables`` aggregates): ``spec`` is a run folder / a ``.wandb`` file / a
directory holding ``offline-run-*`` folders (read here, no account or network), or
``entity/project`` (W&B's public API, after ``wandb login``).

A ``.wandb`` file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version)
followed by LevelDB-log records (32 KiB blocks; 7-byte chunk headers: crc32, length, type
FULL/FIRST/MIDDLE/LAST) whose payloads are ``wandb_internal_pb2.Record`` protobufs. The
Python reader that wandb once shipped is gone from wandb >= 0.19 (the Go core writes the file),
so this module reads the documented LevelDB log layout itself.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
SUMMARY_JOB = "sweep-summary"  # job_type of the run that holds a sweep's tables


def read_records(path: str | Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left
            continue
        payload = data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind == FIRST:
            pending = payload
            continue
        if kind == MIDDLE:
            pending += payload
            continue
        if kind == LAST:
            payload, pending = pending + payload, b""
        elif kind != FULL:
            raise ValueError(f"{path}: bad chunk type {kind} at byte {pos}")
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


@dataclass
class OfflineRun:
    """What a ``.wandb`` file holds: run identity, config, summary and every history row."""

    path: Path
    id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None  # None: the run never finished (crashed or still running)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "crashed"
        return "finished" if self.exit_code == 0 else "failed"

    def curve(self, key: str) -> list[tuple[int, Any]]:
        """(step, value) of every history row that logged ``key``."""
        return [(row.get("_step"), row[key]) for row in self.history if key in row]

    def media(self, key: str) -> list[Path]:
        """The files behind an image / table key (images, image lists and tables)."""
        files = []
        for _, value in self.curve(key):
            if not isinstance(value, dict):
                continue
            names = value.get("filenames") or [value.get("path")]
            files += [self.folder / "files" / n for n in names if n]
        return files


def read_offline_run(path: str | Path) -> OfflineRun:
    """An offline run from its ``.wandb`` file or its ``offline-run-*`` folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise FileNotFoundError(f"no .wandb file in {path}")
        path = files[0]
    run = OfflineRun(path=path)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.project = r.run_id, r.display_name, r.project
            run.group, run.job_type = r.run_group, r.job_type
            for item in r.config.update:
                _set(run.config, _path(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, _path(item), json.loads(item.value_json))
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, _path(item), json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, _path(item), json.loads(item.value_json))
            run.history.append(row)
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    return run


def wait_until_written(path: str | Path, timeout: float = 30.0) -> OfflineRun:
    """The offline run once its exit record is on disk: ``run.finish()`` can return before
    wandb's core process has written the file's last records."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_offline_run(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``.wandb`` file at or under ``root``."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.wandb"))


def record_of(run: OfflineRun) -> dict[str, Any]:
    """A results.json-like record of an offline training run."""
    from tasks.common.reporting.tables import record_from_wandb

    summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
    record = record_from_wandb(run.config, summary, run.state, run.name)
    record["run_dir"] = str(run.folder)
    record["wandb_id"] = run.id
    return record


def load_wandb_runs(spec: str | Path) -> list[dict[str, Any]]:
    """Records of W&B runs: offline runs under a path, else the runs of ``entity/project``.
    Sweep-summary runs (``job_type`` sweep-summary, they hold tables, not results) are skipped."""
    if Path(spec).exists():
        runs = [read_offline_run(p) for p in find_offline_runs(spec)]
        return [record_of(r) for r in runs if r.job_type != SUMMARY_JOB and r.config]
    from tasks.common.reporting.tables import load_wandb_records

    return [r for r in load_wandb_records(str(spec)) if r.get("task")]
