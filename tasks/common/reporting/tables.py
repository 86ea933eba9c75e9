"""Paper tables from run results: group runs, aggregate seeds, print beside the paper's numbers.

Runs are grouped by table (results.json ``table``; ``experiment`` or ``task`` for untagged runs
such as the demo) and, inside a table, by configuration: the ``row`` id plus whichever of
fusion / depth / attention / compiled differ between runs of that row. A generator other than
the paper's (``mask.generator=lowrank``, ``mask.per_head=true``) is part of the row id itself
(``multilayer +lowrank(r=16)``, ``multilayer +per-head``; a row id that names the form, such
as an experiment's variant ``multilayer-lowrank``, is kept): such runs are rows of their own,
never averaged with the MLP generator's runs nor shown beside the paper's numbers. Seeds of one
configuration are aggregated as mean ± sample std (ddof=1, pandas) with the run count. The
paper's numbers and the metric each column reads come from ``paper/results.yaml``: one column
per selected source (ACL paper, ICLR submission, rebuttal), the split of every number
(measured: the metric key's prefix or an eval record's ``split``; paper: ``paper_split``), and
Table 8 computed from the gain rows. eval.py records (``kind: eval``) are tabulated apart from
training runs. tests/common/test_tables_golden.py holds the output byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tasks.common.runtime.results import is_true, load_results, mask_setting, mask_type

ROOT = Path(__file__).resolve().parents[3]
PAPER_FILE = ROOT / "paper" / "results.yaml"
PROFILE_FILE = "profile.json"  # written by scripts/profile_compute.py
CONFIG_FIELDS = ("fusion", "depth", "attention", "compiled")  # shown where they vary in a row
SKIPPED_METRICS = ("aux_loss", "num_queries", "stage")  # bookkeeping, not results
DEFAULT_SOURCE = "acl"  # the row key ``paper``: the STAMP paper (ACL version)
SOURCE_LABELS = {"acl": "paper", "iclr": "ICLR", "rebuttal": "rebuttal"}
DIFFERS = "†"  # marks a non-ACL paper value that differs from the ACL paper's


def record_kind(record: dict[str, Any]) -> str:
    """train | eval | profile: results.json ``kind``; without one, a record with a
    ``checkpoint`` (eval.py) is an eval record and anything else a training run."""
    kind = record.get("kind")
    if kind:
        return str(kind)
    return "eval" if "checkpoint" in record else "train"


@dataclass
class Stat:
    """Mean ± sample standard deviation over ``n`` runs (std is None for one run)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        """pandas' mean and std (ddof=1) of the values that are not None / NaN."""
        series = pd.Series(list(values), dtype=float).dropna()
        if series.empty:
            return None
        std = float(series.std()) if len(series) > 1 else None
        return cls(float(series.mean()), std, len(series))


@dataclass
class Column:
    name: str  # the paper's header
    metric: str  # key after the split prefix, or a params/... key
    scale: float = 1.0
    unit: str = ""
    digits: int = 2
    ratio: bool = False  # measured value / the value of the row's ``relative_to`` row (Table 9)


@dataclass
class PaperRow:
    id: str
    label: str
    paper: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # ACL
    baseline: bool = False
    ours: bool = False
    others: dict[str, dict[str, tuple[float, float | None]]] = field(default_factory=dict)
    paper_split: str | None = None  # overrides the table's
    extra: dict[str, Any] = field(default_factory=dict)  # T8: size, modality, from, ...

    def values(self, source: str = DEFAULT_SOURCE) -> dict[str, tuple[float, float | None]]:
        """The row's numbers in one source (empty where that source does not have the row)."""
        return self.paper if source == DEFAULT_SOURCE else self.others.get(source, {})


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
    paper_split: str | None = None
    kind: str = "table"  # or max_gain (Table 8), mean_gain (ICLR section 4.4)
    refs: dict[str, str] = field(default_factory=dict)

    @property
    def runs_from(self) -> str:
        return self.source or self.id

    def row_split(self, row: PaperRow) -> str | None:
        return row.paper_split or self.paper_split

    @property
    def baseline_and_ours(self) -> tuple[PaperRow | None, PaperRow | None]:
        """The rows a Gain (Δ) compares: ours - baseline."""
        base = next((r for r in self.rows if r.baseline), None)
        return base, next((r for r in self.rows if r.ours), None)

    @property
    def has_splits(self) -> bool:
        return self.paper_split is not None or any(r.paper_split for r in self.rows)


def _paper_value(value: Any) -> tuple[float, float | None]:
    if isinstance(value, (list, tuple)):
        return float(value[0]), (float(value[1]) if len(value) > 1 else None)
    return float(value), None


ROW_KEYS = {"id", "label", "baseline", "ours", "paper", "paper_split"}


def load_sources(path: str | Path = PAPER_FILE) -> dict[str, dict[str, str]]:
    """The sources of paper numbers (``sources:`` of results.yaml): id -> label, file, what."""
    data = yaml.safe_load(Path(path).read_text())
    sources = data.get("sources") or {}
    return {k: {kk: str(vv) for kk, vv in v.items()} for k, v in sources.items()}


def load_paper(path: str | Path = PAPER_FILE) -> dict[str, TableSpec]:
    """The paper's tables (numbers of every source + metric mapping) from results.yaml."""
    data = yaml.safe_load(Path(path).read_text())
    others = [s for s in (data.get("sources") or {}) if s != DEFAULT_SOURCE]
    specs = {}
    for table_id, t in data["tables"].items():
        rows = [
            PaperRow(
                id=str(r["id"]),
                label=r.get("label", str(r["id"])),
                paper={k: _paper_value(v) for k, v in (r.get("paper") or {}).items()},
                baseline=bool(r.get("baseline", False)),
                ours=bool(r.get("ours", False)),
                others={
                    src: {k: _paper_value(v) for k, v in r[src].items()}
                    for src in others
                    if r.get(src)
                },
                paper_split=r.get("paper_split"),
                extra={k: v for k, v in r.items() if k not in ROW_KEYS and k not in others},
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
            paper_split=t.get("paper_split"),
            kind=str(t.get("kind", "table")),
            refs={k: str(v) for k, v in (t.get("refs") or {}).items()},
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


DEFAULT_RANK = 16  # MaskConfig.rank


def generator_tag(record: dict[str, Any], row: str = "") -> str:
    """The part of a run's row id that names a generator other than the paper's per-position
    MLP shared by the heads: `` +lowrank(r=R)`` and / or `` +per-head``, and
    `` +global_input=layer`` for the rebuttal's reading of ``mask=global`` (empty for the MLP
    form, the ACL reading and masks without a generator). A ``row`` that already names the form (an
    experiment's variant such as ``multilayer-lowrank-perhead``) gets only what it does not
    say: the rank when it is not the default."""
    kind = mask_type(record)
    if kind is None or not kind.uses_generator:
        return ""
    named = row.lower().replace("-", "").replace("_", "")
    tags = []
    if str(mask_setting(record, "generator") or "mlp") == "lowrank":
        rank = mask_setting(record, "rank")
        rank_text = "" if rank is None else f"(r={rank})"
        if "lowrank" not in named:
            tags.append("lowrank" + rank_text)
        elif rank is not None and int(rank) != DEFAULT_RANK:
            tags.append(rank_text.strip("()"))
    if is_true(mask_setting(record, "per_head")) and "perhead" not in named:
        tags.append("per-head")
    if str(mask_setting(record, "global_input") or "encoder") == "layer":
        tags.append("global_input=layer")  # the rebuttal's reading of global (stamp.GlobalInput)
    return "".join(f" +{t}" for t in tags)


def row_id(record: dict[str, Any]) -> str:
    """A run's row in its table: ``row`` (else the mask type) plus its generator tag."""
    row = str(record.get("row") or record.get("mask"))
    return row + generator_tag(record, row)


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
        "generator": mask.get("generator"),
        "rank": mask.get("rank"),
        "per_head": mask.get("per_head"),
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


def record_splits(record: dict[str, Any], splits: Sequence[str]) -> list[str]:
    """The metric prefixes to try for one record: an eval record's own split first."""
    own = record.get("split") if record_kind(record) == "eval" else None
    return [own, *[s for s in splits if s != own]] if own else list(splits)


def split_of(key: str) -> str:
    """The split a metric key was measured on (``val/mAP`` -> val); params are not split."""
    head, sep, _ = key.partition("/")
    if not sep or head == "params":
        return ""
    return head


def lookup(record: dict[str, Any], metric: str, splits: Sequence[str]) -> tuple[float, str] | None:
    """A column's value in one record and the key it came from (params/..., split/metric)."""
    params = record.get("params") or {}
    if metric in params:
        return float(params[metric]), metric
    metrics = record.get("metrics") or {}
    for key in [f"{split}/{metric}" for split in record_splits(record, splits)] + [metric]:
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


def ratio_stat(
    stat: Stat | None, reference: ConfigGroup | None, column: Column, splits: Sequence[str]
) -> Stat | None:
    """A ``ratio`` column: the mean over the reference row's mean (runs on one device give
    comparable ratios, e.g. AVE Table 9's throughput measured on another GPU than the paper's)."""
    ref = reference.stat(column, splits)[0] if reference is not None else None
    if stat is None or ref is None or not ref.mean:
        return None
    return Stat(stat.mean / ref.mean, None, stat.n)


def _field(record: dict[str, Any], name: str) -> Any:
    """A config field of a run; fusion and depth mean nothing without generator settings."""
    kind = mask_type(record)
    if name in ("fusion", "depth") and (kind is None or not kind.has_generator_settings):
        return None
    return record.get(name)


def group_configs(records: list[dict[str, Any]]) -> list[ConfigGroup]:
    """Runs of one table -> one group per row id (with its generator tag, ``row_id``; in order
    of first appearance) + the config fields that vary inside it (sorted by their values)."""
    fields = [[_field(r, f) for f in CONFIG_FIELDS] for r in records]
    fields = pd.DataFrame(fields, columns=list(CONFIG_FIELDS), dtype=object)
    groups = []
    for row, frame in fields.groupby(pd.Series(map(row_id, records), dtype=object), sort=False):
        varying = [f for f in CONFIG_FIELDS if frame[f].astype(str).nunique() > 1]
        extras = [tuple(zip(varying, values, strict=True)) for values in frame[varying].values]
        extras = pd.Series(extras, index=frame.index, dtype=object)
        for _, members in extras.groupby(extras.map(str)):
            groups.append(ConfigGroup(row, members.iloc[0], [records[i] for i in members.index]))
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


def source_label(source: str) -> str:
    return SOURCE_LABELS.get(source, source)


def _paper_cell(prow: PaperRow | None, column: Column, source: str) -> str:
    """One paper number; a non-ACL value that differs from the ACL paper's gets DIFFERS."""
    if prow is None:
        return "—"
    value = prow.values(source).get(column.name)
    text = format_paper(value, column)
    acl = prow.paper.get(column.name)
    if source != DEFAULT_SOURCE and value is not None and differs(value, acl):
        text += DIFFERS
    return text


def differs(value: tuple[float, float | None], acl: tuple[float, float | None] | None) -> bool:
    """A source's number differs from the ACL paper's: another mean, or another std where both
    print one (a source that prints no std does not differ by that alone)."""
    if acl is None:
        return True
    if value[0] != acl[0]:
        return True
    return value[1] is not None and acl[1] is not None and value[1] != acl[1]


def sources_of(spec: TableSpec, sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """(shown, absent): the requested sources that have numbers in this table (the ACL paper,
    when requested, is always shown: its rows define the table)."""
    shown, absent = [], []
    for src in sources:
        has = src == DEFAULT_SOURCE or any(row.values(src) for row in spec.rows)
        (shown if has else absent).append(src)
    return shown, absent


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_header(header: Sequence[str]) -> list[str]:
    return [_md_row(header), "|" + "---|" * len(header)]


def _refs_text(spec: TableSpec, sources: Sequence[str]) -> str:
    refs = [f"{source_label(s)}: {spec.refs[s]}" for s in sources if s in spec.refs]
    return f" ({'; '.join(refs)})" if refs else ""


def _source_notes(sources: Sequence[str], absent: Sequence[str]) -> list[str]:
    """Under a table's title: what marks a number that differs, and the sources without it."""
    notes = []
    if any(s != DEFAULT_SOURCE for s in sources):
        notes.append(f"{DIFFERS}: differs from the ACL paper")
    if absent:
        notes.append(f"not in {', '.join(source_label(s) for s in absent)}")
    return notes


def _note(spec: TableSpec) -> list[str]:
    return [f"note: {spec.note}"] if spec.note else []


def _splits_text(keys: Iterable[str]) -> str:
    return ", ".join(sorted({split_of(k) for k in keys if split_of(k)})) or "—"


@dataclass
class RenderedTable:
    spec: TableSpec
    markdown: str
    rows: list[dict[str, Any]]  # long format, for CSV
    kind: str = "train"  # the kind of records it shows: train (with profiles) or eval
    gains: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # column -> (Δ, split)


def render(
    spec: TableSpec,
    records: list[dict[str, Any]],
    sources: Sequence[str] = (DEFAULT_SOURCE,),
    kind: str = "train",
) -> RenderedTable:
    """One table in the paper's layout: a measured column and each selected source's paper
    numbers beside every metric, the measured and the paper's split of every row where the
    table has splits (tables without paper rows, such as the demo's, have the measured columns
    only)."""
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    failed = [r for r in records if r.get("status", "ok") != "ok"]
    profiles = [r for r in ok if r.get("kind") == "profile"]
    groups = group_configs(ok)
    paper_rows = {r.id: r for r in spec.rows}
    sources, absent = sources_of(spec, sources) if paper_rows else ([], [])
    order = {r.id: i for i, r in enumerate(spec.rows)}

    def position(g: ConfigGroup) -> int:  # the paper's row order; else full attention first
        if order:
            return order.get(g.row, len(order))
        return int(not all(getattr(mask_type(r), "is_full_attention", 0) for r in g.records))

    groups.sort(key=lambda g: (position(g), g.row, g.config))
    with_splits = bool(paper_rows) and spec.has_splits

    header = ["Model"] + (["split"] if with_splits else [])
    for c in spec.columns:
        header += [c.name] + [f"{c.name} ({source_label(src)})" for src in sources]
    if with_splits:
        header.append("paper split")
    lines = _md_header(header)
    long_rows: list[dict[str, Any]] = []
    keys_used: set[str] = set()
    means: dict[str, dict[str, Stat | None]] = {}
    row_keys: dict[str, set[str]] = {}
    unavailable: dict[str, str] = {}

    shown = set()
    by_row = {g.row: g for g in groups}  # ratio columns' reference rows
    for g in groups:
        prow = paper_rows.get(g.row)
        label = (prow.label if prow else g.row) + "".join(f" [{k}={v}]" for k, v in g.extras)
        if prow and paper_rows:
            label += f" `{g.row}`"
        cells, group_keys = [], set()
        for c in spec.columns:
            stat, keys = g.stat(c, spec.splits)
            if c.ratio:
                reference = by_row.get(str(prow.extra.get("relative_to"))) if prow else None
                stat = ratio_stat(stat, reference, c, spec.splits)
            keys_used |= keys
            group_keys |= keys
            means.setdefault(g.row, {}).setdefault(c.name, stat)
            from_runs = any(
                r.get("kind") != "profile" and lookup(r, c.metric, spec.splits) is not None
                for r in g.records
            )  # a profile is one measurement: no "(n)"
            reason = None if stat is not None else unavailable_reason(g.records, c, spec.splits)
            if reason is not None:
                unavailable.setdefault(reason[0], reason[1])
            cells.append("n/a" if reason else format_stat(stat, c, count=from_runs))
            cells += [_paper_cell(prow, c, src) for src in sources]
            for src in sources or [DEFAULT_SOURCE]:
                long_rows.append(_long(spec, g, label, c, stat, keys, prow, src, kind))
        row_keys.setdefault(g.row, set()).update(group_keys)
        split_cells = []
        if with_splits:
            paper_split = (spec.row_split(prow) if prow else None) or "—"
            cells.append(paper_split)
            split_cells = [_splits_text(group_keys)]
        lines.append(_md_row([label, *split_cells, *cells]))
        shown.add(g.row)
    for prow in spec.rows:  # paper rows without runs
        if prow.id in shown:
            continue
        cells = ["—"] if with_splits else []
        for c in spec.columns:
            cells += ["—"] + [_paper_cell(prow, c, src) for src in sources]
            for src in sources:
                long_rows.append(_long(spec, None, prow.label, c, None, set(), prow, src, kind))
        if with_splits:
            cells.append(spec.row_split(prow) or "—")
        lines.append(_md_row([f"{prow.label} `{prow.id}`", *cells]))
    gains: dict[str, tuple[float | None, str]] = {}
    if spec.gain and paper_rows:
        lines.append(_gain_line(spec, means, row_keys, long_rows, sources, gains, with_splits))

    seeds = sorted({r.get("seed") for r in ok if r.get("seed") is not None})
    title = spec.title + (" — eval.py records" if kind == "eval" else "")
    out = [f"## {spec.id}{' [eval]' if kind == 'eval' else ''} — {title}", ""]
    runs = len(ok) - len(profiles)
    summary = []
    if runs:
        what = "eval records" if kind == "eval" else "runs"
        summary.append(
            f"{runs} {what} (seeds {', '.join(map(str, seeds)) or '—'}); measured: mean ± std "
            "over seeds (number of runs)"
        )
    if profiles:
        summary.append(f"{len(profiles)} compute profiles (scripts/profile_compute.py)")
    if sources:
        summary.append("paper numbers beside" + _refs_text(spec, sources))
    if not records:
        summary.append("no runs")
    out += ["; ".join(summary), *_source_notes(sources, absent)]
    if keys_used and paper_rows:
        out.append(f"metrics read: {', '.join(sorted(keys_used))}")
    out += _note(spec)
    for key, why in sorted(unavailable.items()):
        out.append(f"n/a: {key} could not be computed: {why}")
    for status in sorted({str(r.get("status")) for r in failed}):  # failed, diverged, running
        skipped = [r for r in failed if str(r.get("status")) == status]
        dirs = ", ".join(Path(str(r.get("run_dir", "?"))).name for r in skipped)
        out.append(f"{status} runs left out: {len(skipped)} ({dirs})")
    return RenderedTable(spec, "\n".join([*out, "", *lines]), long_rows, kind, gains)


def _csv_row(spec: TableSpec, row: str, label: str, column: str, **values: Any) -> dict[str, Any]:
    """One row of the long format (``to_csv``); the fields not given are left empty."""
    return {"table": spec.id, "row": row, "config": row, "label": label, "column": column, **values}


def _long(spec, group, label, column, stat, keys, prow, source, kind) -> dict[str, Any]:
    ref = prow.values(source).get(column.name) if prow is not None else None
    row = group.row if group is not None else prow.id
    return _csv_row(
        spec,
        row,
        label,
        column.name,
        kind=kind,
        config=group.config if group is not None else row,
        metric=";".join(sorted(keys)),
        split=_splits_text(keys) if keys else "",
        mean=None if stat is None else stat.mean * column.scale,
        std=None if stat is None or stat.std is None else stat.std * column.scale,
        n=0 if stat is None else stat.n,
        source=source if prow is not None else "",
        paper=None if ref is None else ref[0],
        paper_std=None if ref is None else ref[1],
        paper_split=(spec.row_split(prow) or "") if prow is not None else "",
        seeds=" ".join(map(str, group.seeds)) if group is not None else "",
    )


def _gain_line(
    spec: TableSpec,
    means: dict,
    row_keys: dict[str, set[str]],
    long_rows: list[dict[str, Any]],
    sources: Sequence[str],
    gains: dict[str, tuple[float | None, str]],
    with_splits: bool,
) -> str:
    """ours - baseline, measured and in each source."""
    base, ours = spec.baseline_and_ours
    measured_split = ""
    if base and ours:
        measured_split = _splits_text(row_keys.get(base.id, set()) | row_keys.get(ours.id, set()))
    cells = ["Gain (Δ)"] + ([measured_split] if with_splits else [])
    for c in spec.columns:
        measured = None
        if base and ours:
            b, o = means.get(base.id, {}).get(c.name), means.get(ours.id, {}).get(c.name)
            if b is not None and o is not None:
                measured = (o.mean - b.mean) * c.scale
        gains[c.name] = (measured, measured_split)
        cells.append("—" if measured is None else f"{measured:+.{c.digits}f}")
        for src in sources:
            paper_gain = paper_gain_of(spec, c, src)
            cells.append("—" if paper_gain is None else f"{paper_gain:+.2f}")
            split = measured_split if measured is not None else ""
            row = _csv_row(spec, "gain", "Gain (Δ)", c.name, split=split, mean=measured)
            long_rows.append({**row, "source": src, "paper": paper_gain})
    if with_splits:
        splits = {spec.row_split(r) for r in (base, ours) if r is not None}
        cells.append(" / ".join(sorted(s for s in splits if s)) or "—")
    return _md_row(cells)


def paper_gain_of(spec: TableSpec, column: Column, source: str = DEFAULT_SOURCE) -> float | None:
    """ours - baseline in one source's numbers (None where either is missing)."""
    base, ours = spec.baseline_and_ours
    if base is None or ours is None:
        return None
    b, o = base.values(source).get(column.name), ours.values(source).get(column.name)
    return None if b is None or o is None else round(o[0] - b[0], 6)


def render_max_gain(
    spec: TableSpec,
    paper: dict[str, TableSpec],
    rendered: dict[str, RenderedTable],
    sources: Sequence[str] = (DEFAULT_SOURCE,),
) -> RenderedTable:
    """Table 8: per dataset, the largest measured gain (ours - baseline) over the metrics of
    its source tables (``from``), beside each source's paper value and the source tables' own
    largest paper gain; the splits are those of the source tables."""
    sources, absent = sources_of(spec, sources)
    header = ["Dataset", "Size", "Modality", "Max. Gain", "from", "split"]
    header += [f"Max. Gain ({source_label(s)})" for s in sources] + ["paper split"]
    lines = _md_header(header)
    long_rows = []
    column = spec.columns[0]
    for row in spec.rows:
        tables = [str(t) for t in row.extra.get("from", [])]
        best: tuple[float, str, str] | None = None
        for t in tables:
            for name, (value, split) in (rendered.get(t).gains if t in rendered else {}).items():
                metric = next(c.metric for c in paper[t].columns if c.name == name)
                if value is None or metric.startswith("params/"):
                    continue
                if best is None or value > best[0]:
                    best = (value, f"{t} {name}", split)
        size = str(row.extra.get("size", "—"))
        if "iclr" in sources and row.extra.get("iclr_size"):
            size += f" (ICLR: {row.extra['iclr_size']})"
        splits = []
        for t in tables:
            splits += [paper[t].row_split(r) or "" for r in paper[t].rows if r.baseline or r.ours]
        paper_split = " / ".join(sorted({s for s in splits if s})) or "—"
        cells = [
            row.label,
            size,
            str(row.extra.get("modality", "—")),
            "—" if best is None else f"{best[0]:+.2f}",
            "—" if best is None else best[1],
            "—" if best is None else best[2],
            *[_paper_cell(row, column, src) for src in sources],
            paper_split,
        ]
        lines.append(_md_row(cells))
        for src in sources:
            ref = row.values(src).get(column.name)
            mean, metric, split = best or (None, "", "")
            cell = {"metric": metric, "split": split, "mean": mean, "source": src}
            cell |= {"paper": None if ref is None else ref[0], "paper_split": paper_split}
            long_rows.append(_csv_row(spec, row.id, row.label, column.name, **cell))
    measured = "measured: the largest Gain (Δ) of the source tables' runs; paper numbers beside"
    out = [f"## {spec.id} — {spec.title}", "", measured + _refs_text(spec, sources)]
    out += [*_source_notes(sources, absent), *_note(spec)]
    return RenderedTable(spec, "\n".join([*out, "", *lines]), long_rows)


def _mean_max(gains: Sequence[float]) -> tuple[float | None, float | None]:
    return (sum(gains) / len(gains), max(gains)) if gains else (None, None)


def render_mean_gain(
    spec: TableSpec,
    paper: dict[str, TableSpec],
    rendered: dict[str, RenderedTable],
    sources: Sequence[str] = (DEFAULT_SOURCE,),
) -> RenderedTable:
    """The ICLR version's section 4.4 (kind ``mean_gain``): per source table (``from``), the
    average and the largest Gain (Δ) over its metric columns, measured (from the runs' gain
    row) and computed from each source's own table numbers, beside the values the text states
    (the row's ``stated`` source). A stated value that its own table does not give is marked."""
    stated_sources = [str(row.extra.get("stated", "iclr")) for row in spec.rows]
    sources = list(dict.fromkeys([*sources, *stated_sources]))  # the stating source's table too
    header = ["Table", "Avg. Gain", "Max. Gain", "split"]
    for src in sources:
        header += [f"Avg. ({source_label(src)} table)", f"Max. ({source_label(src)} table)"]
    header += ["Avg. (stated)", "Max. (stated)", "stated in"]
    lines = _md_header(header)
    long_rows: list[dict[str, Any]] = []
    mismatches = []
    for row in spec.rows:
        table = paper[str(row.extra["from"])]
        columns = [c for c in table.columns if not c.metric.startswith("params/")]
        measured = (rendered.get(table.id).gains if table.id in rendered else {}) or {}
        values = [
            measured[c.name][0] for c in columns if measured.get(c.name, (None,))[0] is not None
        ]
        split = ", ".join(sorted({measured[c.name][1] for c in columns if c.name in measured}))
        avg, best = _mean_max(values) if len(values) == len(columns) else (None, None)
        cells = [row.label, _signed(avg), _signed(best), split if avg is not None else "—"]
        stated_src = str(row.extra.get("stated", "iclr"))
        stated = row.values(stated_src)
        for src in sources:
            gains = [paper_gain_of(table, c, src) for c in columns]
            p_avg, p_max = _mean_max([g for g in gains if g is not None])
            if None in gains:
                p_avg = p_max = None
            cells += [_signed(p_avg), _signed(p_max)]
            if src != stated_src:
                continue
            for name, computed in (("Avg. Gain", p_avg), ("Max. Gain", p_max)):
                value = stated.get(name)
                if value and computed is not None and round(computed, 2) != value[0]:
                    mismatches.append(
                        f"{row.label} {name}: stated {value[0]:.2f}, its table gives {computed:.4f}"
                    )
        for name in ("Avg. Gain", "Max. Gain"):
            value = stated.get(name)
            cells.append("—" if value is None else f"{value[0]:+.2f}")
        cells.append(f"{source_label(stated_src)}: {row.extra.get('where', '')}".strip())
        lines.append(_md_row(cells))
        for name, value in (("Avg. Gain", avg), ("Max. Gain", best)):
            ref = stated.get(name)
            cell = {"split": split if value is not None else "", "mean": value}
            cell |= {"source": stated_src, "paper": None if ref is None else ref[0]}
            long_rows.append(_csv_row(spec, row.id, row.label, name, **cell))
    out = [f"## {spec.id} — {spec.title}", ""]
    out.append(
        "measured: mean / max over the table's metric columns of the runs' Gain (Δ); "
        "each source's table gives its own mean / max; stated: the text's numbers"
    )
    out += [f"stated value not given by its own table: {m}" for m in mismatches] + _note(spec)
    return RenderedTable(spec, "\n".join([*out, "", *lines]), long_rows)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def make_tables(
    records: list[dict[str, Any]],
    paper: dict[str, TableSpec] | None = None,
    tables: Sequence[str] = (),
    metrics: Sequence[str] = (),
    sources: Sequence[str] = (DEFAULT_SOURCE,),
    paper_tables: bool = False,
) -> list[RenderedTable]:
    """Every paper table that has runs (``paper_tables``: every paper table), Table 8 from
    their gains, then one table per untagged experiment / task; eval.py records after the
    training runs, in tables of their own."""
    paper = load_paper() if paper is None else paper
    rendered: list[RenderedTable] = []
    for kind in ("train", "eval"):
        subset = [r for r in records if (record_kind(r) == "eval") == (kind == "eval")]
        if not subset and (kind == "eval" or not paper_tables):
            continue
        rendered += _make_kind(subset, paper, tables, metrics, sources, paper_tables, kind)
    return rendered


def _make_kind(records, paper, tables, metrics, sources, paper_tables, kind):
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_table.setdefault(table_id(r), []).append(r)
    rendered: dict[str, RenderedTable] = {}
    used = set()
    show_all = paper_tables and kind == "train"
    for spec in paper.values():
        if spec.kind in COMPUTED_KINDS:
            continue
        runs = by_table.get(spec.runs_from)
        if (runs or show_all) and (not tables or spec.id in tables):
            rendered[spec.id] = render(spec, runs or [], sources, kind)
            used.add(spec.runs_from)
        elif runs:  # filtered out by --tables: still feeds Table 8
            rendered[spec.id] = render(spec, runs, sources, kind)
            rendered[spec.id].kind = "hidden"
    out = [t for t in rendered.values() if t.kind != "hidden"]
    for spec in paper.values():
        if spec.kind not in COMPUTED_KINDS or (tables and spec.id not in tables):
            continue
        froms = {str(t) for row in spec.rows for t in _as_list(row.extra.get("from", []))}
        if show_all or froms & set(rendered):
            out.append(COMPUTED_KINDS[spec.kind](spec, paper, rendered, sources))
            out[-1].kind = kind
    for name, runs in by_table.items():
        if name in used or name in paper or (tables and name not in tables):
            continue
        out.append(render(generic_spec(name, runs, metrics), runs, sources, kind))
    return out


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# tables computed from other tables' gain rows (kind in results.yaml -> renderer)
COMPUTED_KINDS = {"max_gain": render_max_gain, "mean_gain": render_mean_gain}


CSV_FIELDS = "table kind row config label column metric split mean std n source paper".split()
CSV_FIELDS += ["paper_std", "paper_split", "seeds"]


def to_csv(rendered: list[RenderedTable]) -> str:
    """Long format: one row per (table, configuration, column, source of paper numbers)."""
    rows = [{"kind": table.kind, **row} for table in rendered for row in table.rows]
    frame = pd.DataFrame(rows, columns=CSV_FIELDS, dtype=object)
    return frame.to_csv(index=False, lineterminator="\r\n")  # the csv module's line ends


def to_markdown(rendered: list[RenderedTable]) -> str:
    return "\n\n".join(t.markdown for t in rendered) + "\n"
