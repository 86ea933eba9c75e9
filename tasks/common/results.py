"""Reading the per-run ``results.json`` files and printing them as a table."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All results.json under the given run / sweep directories (or the files themselves)."""
    records = []
    for path in paths:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob(RESULTS_FILE))
        for file in files:
            record = json.loads(file.read_text())
            record.setdefault("run_dir", str(file.parent))
            records.append(record)
    return records


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


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
        "attention",
        "seed",
        "status",
        "mask params",
        *metric_keys,
        "time (s)",
    ]
    rows = []
    for r in records:
        masked = r.get("mask") not in (None, "none")
        rows.append(
            [
                Path(r.get("run_dir", "")).name,
                r.get("mask"),
                r.get("fusion") if masked else "",
                r.get("depth") if masked else "",
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
