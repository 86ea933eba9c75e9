"""Paper tables from run results: group runs, aggregate seeds, print beside the paper's numbers.

Runs are grouped by table (results.json ``table``; ``experiment`` or ``task`` for untagged runs
such as the demo) and, inside a table, by configuration: the ``row`` id plus whichever of
fusion / depth / attention / compiled differ between runs of that row. Seeds of one
configuration are aggregated as mean ± sample std (ddof=1) with the run count. The paper's
numbers and the metric each column reads come from ``paper/results.yaml``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.common.results import load_results

ROOT = Path(__file__).resolve().parents[2]
PAPER_FILE = ROOT / "paper" / "results.yaml"
PROFILE_FILE = "profile.json"  # written by scripts/profile_compute.py
CONFIG_FIELDS = ("fusion", "depth", "attention", "compiled")  # shown where they vary in a row
SKIPPED_METRICS = ("aux_loss", "num_queries", "stage")  # bookkeeping, not results


@dataclass
class Stat:
    """Mean ± sample standard deviation over ``n`` runs (std is None for one run)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return None
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)


@dataclass
class Column:
    name: str  # the paper's header
    metric: str  # key after the split prefix, or a params/... key
    scale: float = 1.0
    unit: str = ""
    digits: int = 2


@dataclass
class PaperRow:
    id: str
    label: str
    paper: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    baseline: bool = False
    ours: bool = False


@dataclass
class TableSpec:
    id: str
    title: str
    columns: list[Column]
    rows: list[PaperRow] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    source: str | None = None
    gain: bool = False
    note: str = ""

    @property
    def runs_from(self) -> str:
        return self.source or self.id


def _paper_value(value: Any) -> tuple[float, float | None]:
    if isinstance(value, (list, tuple)):
        return float(value[0]), (float(value[1]) if len(value) > 1 else None)
    return float(value), None


def load_paper(path: str | Path = PAPER_FILE) -> dict[str, TableSpec]:
    """The paper's tables (numbers + metric mapping) from ``paper/results.yaml``."""
    data = yaml.safe_load(Path(path).read_text())
    specs = {}
    for table_id, t in data["tables"].items():
        rows = [
            PaperRow(
                id=str(r["id"]),
                label=r.get("label", str(r["id"])),
                paper={k: _paper_value(v) for k, v in (r.get("paper") or {}).items()},
                baseline=bool(r.get("baseline", False)),
                ours=bool(r.get("ours", False)),
            )
            for r in t.get("rows", [])
        ]
        specs[table_id] = TableSpec(
            id=table_id,
            title=t.get("title", table_id),
            columns=[Column(**c) for c in t["columns"]],
            rows=rows,
            splits=list(t.get("splits", [])),
            source=t.get("source"),
            gain=bool(t.get("gain", False)),
            note=" ".join(str(t.get("note", "")).split()),
        )
    return specs


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """results.json of every run under ``paths`` plus the records of profile.json files."""
    paths = list(paths)
    records = load_results(paths)
    for path in map(Path, paths):
        files = [path] if path.name == PROFILE_FILE else sorted(path.rglob(PROFILE_FILE))
        for file in files if path.exists() else []:
            records.extend(json.loads(file.read_text()))
    return records


def record_from_wandb(
    config: dict[str, Any], summary: dict[str, Any], state: str, name: str
) -> dict[str, Any]:
    """A results.json-like record from a W&B run: the pipeline logs the whole resolved config as
    the run's config, and the final metrics end up in its summary."""
    mask = config.get("mask") or {}
    attention = config.get("attention") or {}
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    return {
        "status": "ok" if state == "finished" else state,
        "task": config.get("task_name"),
        "mask": mask.get("type"),
        "fusion": mask.get("fusion"),
        "depth": mask.get("depth"),
        "attention": attention.get("backend"),
        "compiled": bool(attention.get("compile", False)),
        "seed": config.get("seed"),
        "experiment": config.get("experiment"),
        "table": config.get("table"),
        "row": config.get("row"),
        "params": {k: v for k, v in numbers.items() if k.startswith("params/")},
        "metrics": {k: float(v) for k, v in numbers.items() if k.startswith(("val/", "test/"))},
        "run_dir": f"wandb:{name}",
    }


def load_wandb_records(project: str) -> list[dict[str, Any]]:
    """Records of the runs of an online W&B project (``entity/project``; needs ``wandb login``).
    Offline runs are read through the results.json written beside them instead."""
    import wandb

    runs = wandb.Api().runs(project)
    return [
        record_from_wandb(dict(run.config), dict(run.summary), run.state, run.name) for run in runs
    ]


def table_id(record: dict[str, Any]) -> str:
    """Where a run belongs: its paper table, else its experiment, else its task."""
    return str(record.get("table") or record.get("experiment") or record.get("task") or "runs")


def lookup(record: dict[str, Any], metric: str, splits: Sequence[str]) -> tuple[float, str] | None:
    """A column's value in one record and the key it came from (params/..., split/metric)."""
    params = record.get("params") or {}
    if metric in params:
        return float(params[metric]), metric
    metrics = record.get("metrics") or {}
    for key in [f"{split}/{metric}" for split in splits] + [metric]:
        value = metrics.get(key)
        if value is not None:
            return float(value), key
    return None


def unavailable_reason(
    records: list[dict[str, Any]], column: Column, splits: Sequence[str]
) -> tuple[str, str] | None:
    """(key, reason) where the runs recorded that a column's metric could not be computed
    (results.json ``unavailable``, e.g. SPICE without Stanford CoreNLP)."""
    for r in records:
        reasons = r.get("unavailable") or {}
        for key in [f"{split}/{column.metric}" for split in splits] + [column.metric]:
            if key in reasons:
                return key, str(reasons[key])
    return None


@dataclass
class ConfigGroup:
    """The runs (seeds) of one configuration of a table."""

    row: str
    extras: tuple[tuple[str, Any], ...]
    records: list[dict[str, Any]]

    @property
    def config(self) -> str:
        return self.row + "".join(f" {k}={v}" for k, v in self.extras)

    def stat(self, column: Column, splits: Sequence[str]) -> tuple[Stat | None, set[str]]:
        found = [lookup(r, column.metric, splits) for r in self.records]
        found = [f for f in found if f is not None]
        return Stat.of([v for v, _ in found]), {k for _, k in found}

    @property
    def seeds(self) -> list:
        return sorted({r.get("seed") for r in self.records if r.get("seed") is not None})


def _field(record: dict[str, Any], name: str) -> Any:
    """A config field of a run; fusion and depth mean nothing without a generated mask."""
    if name in ("fusion", "depth") and record.get("mask") in ("none", "sparse", None):
        return None
    return record.get(name)


def group_configs(records: list[dict[str, Any]]) -> list[ConfigGroup]:
    """Runs of one table -> one group per row id + the config fields that vary inside it."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_row.setdefault(str(r.get("row") or r.get("mask")), []).append(r)
    groups = []
    for row, rows in by_row.items():
        varying = [f for f in CONFIG_FIELDS if len({str(_field(r, f)) for r in rows}) > 1]
        by_key: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            by_key.setdefault(tuple((f, _field(r, f)) for f in varying), []).append(r)
        for extras, members in sorted(by_key.items(), key=lambda kv: str(kv[0])):
            groups.append(ConfigGroup(row, extras, members))
    return groups


# the columns of a compute profile without a paper table (Tables 4 / 7 layout)
COMPUTE_COLUMNS = [
    Column("FLOPs", "compute/flops", scale=1e-9, unit="G", digits=3),
    Column("MACs", "compute/macs", scale=1e-9, unit="G", digits=3),
    Column("Params", "compute/params", scale=1e-6, unit="M", digits=3),
    Column("Latency (ms)", "compute/latency_ms", digits=2),
]


def generic_spec(
    table: str, records: list[dict[str, Any]], metrics: Sequence[str] = ()
) -> TableSpec:
    """A table of runs the paper has no table for (the demo): every val/ and test/ metric;
    compute profiles get the columns of Tables 4 / 7."""
    if not metrics and all(r.get("kind") == "profile" for r in records):
        return TableSpec(id=table, title="compute profile", columns=COMPUTE_COLUMNS)
    keys = list(metrics)
    if not keys:
        found = {k for r in records for k in (r.get("metrics") or {})}
        keys = sorted(
            k
            for k in found
            if k.startswith(("val/", "test/", "compute/")) and not k.endswith(SKIPPED_METRICS)
        )
    columns = [Column(name=k, metric=k, digits=4) for k in keys]
    if any((r.get("params") or {}).get("params/mask") is not None for r in records):
        columns.append(Column(name="mask params", metric="params/mask", digits=0))
    return TableSpec(id=table, title=f"{table} runs", columns=columns)


SI_PREFIXES = {"T": 1e12, "G": 1e9, "B": 1e9, "M": 1e6, "k": 1e3}  # B = billion (params)


def _display(value: float, column: Column) -> tuple[float, str]:
    """The (scale, unit) to print ``value`` with: the column's, or for an SI column whose
    value would print as 0 (a tiny model in a table sized for 7B) the largest prefix that fits."""
    scale, unit = column.scale, column.unit
    if unit in SI_PREFIXES and value and abs(value * scale) < 10**-column.digits:
        billion = "B" if unit == "B" else "G"
        for prefix, size in [("T", 1e12), (billion, 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)]:
            if abs(value) >= size or prefix == "":
                return 1.0 / size, prefix
    return scale, unit


def format_stat(stat: Stat | None, column: Column, count: bool = True) -> str:
    """``mean ± std (n)``; ``count=False`` drops ``(n)`` (profiles: one measurement each)."""
    if stat is None:
        return "—"
    scale, unit = _display(stat.mean, column)
    text = f"{stat.mean * scale:.{column.digits}f}{unit}"
    if stat.std is not None:
        text += f" ± {stat.std * scale:.{column.digits}f}"
    return f"{text} ({stat.n})" if count else text


def format_paper(value: tuple[float, float | None] | None, column: Column) -> str:
    if value is None:
        return "—"
    mean, std = value
    text = f"{mean:g}{column.unit}"
    return text if std is None else f"{text} ± {std:g}"


@dataclass
class RenderedTable:
    spec: TableSpec
    markdown: str
    rows: list[dict[str, Any]]  # long format, for CSV


def render(spec: TableSpec, records: list[dict[str, Any]]) -> RenderedTable:
    """One table in the paper's layout: a measured column and the paper's beside each metric
    (tables without paper rows, such as the demo's, have the measured columns only)."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    failed = [r for r in records if r.get("status", "ok") != "ok"]
    profiles = [r for r in ok if r.get("kind") == "profile"]
    groups = group_configs(ok)
    paper_rows = {r.id: r for r in spec.rows}
    order = {r.id: i for i, r in enumerate(spec.rows)} or {"none": 0}  # baseline first
    groups.sort(key=lambda g: (order.get(g.row, len(order)), g.row, g.config))

    header = ["Model"]
    for c in spec.columns:
        header += [c.name, f"{c.name} (paper)"] if paper_rows else [c.name]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    long_rows: list[dict[str, Any]] = []
    keys_used: set[str] = set()
    means: dict[str, dict[str, Stat | None]] = {}
    unavailable: dict[str, str] = {}

    shown = set()
    for g in groups:
        prow = paper_rows.get(g.row)
        label = (prow.label if prow else g.row) + "".join(f" [{k}={v}]" for k, v in g.extras)
        if prow and paper_rows:
            label += f" `{g.row}`"
        cells = []
        for c in spec.columns:
            stat, keys = g.stat(c, spec.splits)
            keys_used |= keys
            means.setdefault(g.row, {}).setdefault(c.name, stat)
            from_runs = any(
                r.get("kind") != "profile" and lookup(r, c.metric, spec.splits) is not None
                for r in g.records
            )  # a profile is one measurement: no "(n)"
            reason = None if stat is not None else unavailable_reason(g.records, c, spec.splits)
            if reason is not None:
                unavailable.setdefault(reason[0], reason[1])
            cells.append("n/a" if reason else format_stat(stat, c, count=from_runs))
            ref = prow.paper.get(c.name) if prow else None
            if paper_rows:
                cells.append(format_paper(ref, c))
            long_rows.append(_long(spec, g.row, g.config, label, c, stat, ref, keys, g))
        lines.append("| " + " | ".join([label, *cells]) + " |")
        shown.add(g.row)
    for prow in spec.rows:  # paper rows without runs
        if prow.id in shown:
            continue
        cells = []
        for c in spec.columns:
            cells += ["—", format_paper(prow.paper.get(c.name), c)]
        lines.append("| " + " | ".join([f"{prow.label} `{prow.id}`", *cells]) + " |")
    if spec.gain and paper_rows:
        lines.append(_gain_line(spec, means, long_rows))

    seeds = sorted({r.get("seed") for r in ok if r.get("seed") is not None})
    out = [f"## {spec.id} — {spec.title}", ""]
    runs = len(ok) - len(profiles)
    summary = []
    if runs:
        summary.append(
            f"{runs} runs (seeds {', '.join(map(str, seeds)) or '—'}); measured: mean ± std over "
            "seeds (number of runs)"
        )
    if profiles:
        summary.append(f"{len(profiles)} compute profiles (scripts/profile_compute.py)")
    if paper_rows:
        summary.append("the paper's numbers beside")
    out.append("; ".join(summary))
    if keys_used and paper_rows:
        out.append(f"metrics read: {', '.join(sorted(keys_used))}")
    if spec.note:
        out.append(f"note: {spec.note}")
    for key, why in sorted(unavailable.items()):
        out.append(f"n/a: {key} could not be computed: {why}")
    if failed:
        dirs = ", ".join(Path(str(r.get("run_dir", "?"))).name for r in failed)
        out.append(f"failed runs left out: {len(failed)} ({dirs})")
    return RenderedTable(spec, "\n".join([*out, "", *lines]), long_rows)


def _long(spec, row, config, label, column, stat, ref, keys, group) -> dict[str, Any]:
    return {
        "table": spec.id,
        "row": row,
        "config": config,
        "label": label,
        "column": column.name,
        "metric": ";".join(sorted(keys)),
        "mean": None if stat is None else stat.mean * column.scale,
        "std": None if stat is None or stat.std is None else stat.std * column.scale,
        "n": 0 if stat is None else stat.n,
        "paper": None if ref is None else ref[0],
        "paper_std": None if ref is None else ref[1],
        "seeds": " ".join(map(str, group.seeds)) if group is not None else "",
    }


def _gain_line(spec: TableSpec, means: dict, long_rows: list[dict[str, Any]]) -> str:
    """ours - baseline, measured and in the paper."""
    base = next((r for r in spec.rows if r.baseline), None)
    ours = next((r for r in spec.rows if r.ours), None)
    cells = ["Gain (Δ)"]
    for c in spec.columns:
        measured = paper_gain = None
        if base and ours:
            b, o = means.get(base.id, {}).get(c.name), means.get(ours.id, {}).get(c.name)
            if b is not None and o is not None:
                measured = (o.mean - b.mean) * c.scale
            pb, po = base.paper.get(c.name), ours.paper.get(c.name)
            if pb is not None and po is not None:
                paper_gain = po[0] - pb[0]
        cells.append("—" if measured is None else f"{measured:+.{c.digits}f}")
        cells.append("—" if paper_gain is None else f"{paper_gain:+.2f}")
        long_rows.append(
            {
                "table": spec.id,
                "row": "gain",
                "config": "gain",
                "label": "Gain (Δ)",
                "column": c.name,
                "metric": "",
                "mean": measured,
                "std": None,
                "n": None,
                "paper": paper_gain,
                "paper_std": None,
                "seeds": "",
            }
        )
    return "| " + " | ".join(cells) + " |"


def make_tables(
    records: list[dict[str, Any]],
    paper: dict[str, TableSpec] | None = None,
    tables: Sequence[str] = (),
    metrics: Sequence[str] = (),
) -> list[RenderedTable]:
    """Every paper table that has runs, then one table per untagged experiment / task."""
    paper = load_paper() if paper is None else paper
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_table.setdefault(table_id(r), []).append(r)
    rendered = []
    used = set()
    for spec in paper.values():
        runs = by_table.get(spec.runs_from)
        if runs and (not tables or spec.id in tables):
            rendered.append(render(spec, runs))
            used.add(spec.runs_from)
    for name, runs in by_table.items():
        if name in used or name in paper or (tables and name not in tables):
            continue
        rendered.append(render(generic_spec(name, runs, metrics), runs))
    return rendered


CSV_FIELDS = [
    "table",
    "row",
    "config",
    "label",
    "column",
    "metric",
    "mean",
    "std",
    "n",
    "paper",
    "paper_std",
    "seeds",
]


def to_csv(rendered: list[RenderedTable]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for table in rendered:
        writer.writerows(table.rows)
    return buffer.getvalue()


def to_markdown(rendered: list[RenderedTable]) -> str:
    return "\n\n".join(t.markdown for t in rendered) + "\n"
