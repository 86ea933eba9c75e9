"""Check a downloaded copy of the QVHighlights features against what this project reads.

    python scripts/check_qvhighlights_features.py <features dir>

For every feature family (``slowfast_features``, ``clip_features``: ``{vid}.npz`` key
``features``; ``clip_text_features``: ``qid{qid}.npz`` key ``last_hidden_state``) it reads every
file the annotation files need (default: the shipped ``data/qvhighlights`` train / val / test
files) and reports, per family and split, precisely what differs:

* defects (exit code 1): a needed file missing, unreadable or truncated, without the expected key,
  not a 2-d array with rows, a feature size other than the expected one (2304 / 512 / 512), a
  non-float dtype, NaN / Inf values, a checksum that differs from ``--checksums``;
* notes (counted, not defects; the reader handles them): video row counts that differ from
  ``duration / 2`` or between families (the reader cuts to the shortest), relevant clips beyond
  the features (their labels are dropped), queries longer than the 32 tokens the model reads,
  files no annotation needs (e.g. the pre-training ``clip_sub_features``), mixed dtypes.

No authoritative source publishes checksums of the official features (the original archive,
``moment_detr_features.tar.gz``, is lost: moment_detr issue #55); ``--write-checksums FILE``
writes the SHA-256 of every checked file of one copy, ``--checksums FILE`` compares another copy
with it. The folder names of the copy that ``line/lighthouse`` distributes (``slowfast/``,
``clip/``, ``clip_text/``) are recognised and named in the report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.common.runtime.data import DataValidationError  # noqa: E402
from tasks.qvhighlights.data import read_npz_array  # noqa: E402
from tasks.qvhighlights.metrics import load_jsonl  # noqa: E402
from tasks.qvhighlights.synthetic import (  # noqa: E402
    REAL_TEXT_DIM,
    REAL_VIDEO_DIMS,
    TEXT_FEATURE_TYPE,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANNOTATIONS = [
    REPO / "data" / "qvhighlights" / f"highlight_{split}_release.jsonl"
    for split in ("train", "val", "test")
]
VIDEO_KEY, TEXT_KEY = "features", "last_hidden_state"
MAX_QUERY_TOKENS = 32  # the model reads the first 32 tokens (QD-DETR max_q_l)
# Folder names of the copy distributed by line/lighthouse (features/QVHighlight/...).
LIGHTHOUSE_NAMES = {"slowfast_features": "slowfast", "clip_features": "clip"}
LIGHTHOUSE_NAMES[TEXT_FEATURE_TYPE] = "clip_text"


@dataclass
class FamilyReport:
    """What was found for one feature family (one folder)."""

    name: str
    folder: str
    key: str
    dim: int
    needed: dict[str, int] = field(default_factory=dict)  # split -> files needed
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> missing file names
    defects: dict[str, list[str]] = field(default_factory=dict)  # kind -> "file: message"
    dtypes: Counter = field(default_factory=Counter)
    rows: dict[str, int] = field(default_factory=dict)  # file stem -> rows
    extra: list[str] = field(default_factory=list)  # files no annotation needs
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> digest


@dataclass
class Report:
    """The whole check: per family, per split, notes and the verdict."""

    feature_dir: str
    families: list[FamilyReport]
    notes: dict[str, list[str]] = field(default_factory=dict)  # kind -> examples
    note_counts: dict[str, int] = field(default_factory=dict)
    checksum_defects: dict[str, list[str]] = field(default_factory=dict)

    @property
    def defect_count(self) -> int:
        n = sum(len(v) for f in self.families for v in f.missing.values())
        n += sum(len(v) for f in self.families for v in f.defects.values())
        return n + sum(len(v) for v in self.checksum_defects.values())

    def to_dict(self) -> dict:
        """JSON-able summary: counts and every defective file name."""
        return {
            "feature_dir": self.feature_dir,
            "defects": self.defect_count,
            "families": {
                f.name: {
                    "folder": f.folder,
                    "key": f.key,
                    "dim": f.dim,
                    "needed": f.needed,
                    "missing": f.missing,
                    "defects": f.defects,
                    "dtypes": dict(f.dtypes),
                    "extra_files": len(f.extra),
                }
                for f in self.families
            },
            "notes": self.note_counts,
            "checksum_defects": self.checksum_defects,
        }


def split_name(path: Path) -> str:
    """``highlight_val_release.jsonl`` -> ``val`` (the file stem otherwise)."""
    stem = path.stem
    for split in ("train", "val", "test"):
        if f"_{split}_" in f"_{stem}_":
            return split
    return stem


def resolve_folder(root: Path, name: str) -> tuple[Path, str | None]:
    """The family's folder; the lighthouse name when only that exists (returned as a note)."""
    official = root / name
    alias = LIGHTHOUSE_NAMES.get(name)
    if not official.is_dir() and alias and (root / alias).is_dir():
        return root / alias, f"{name}: read from {alias}/ (line/lighthouse's folder name)"
    return official, None


def inspect_file(path: Path, key: str, dim: int, checksum: bool) -> dict:
    """Read one file: rows, dtype, digest, or the defect (kind, message)."""
    out: dict = {"name": path.name}
    if checksum:
        out["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        arr = read_npz_array(path, key)
    except DataValidationError as err:
        problem = err.problem
        kind = (
            "missing key"
            if problem.startswith("expected key")
            else "not a 2-d array with rows"
            if problem.startswith("expected a 2-d")
            else "unreadable"
        )
        out["defect"] = (kind, problem)
        return out
    out["dtype"], out["rows"] = str(arr.dtype), int(arr.shape[0])
    if not np.issubdtype(arr.dtype, np.floating):
        out["defect"] = ("not a float dtype", f"dtype {arr.dtype}")
    elif arr.shape[1] != dim:
        out["defect"] = ("wrong feature size", f"shape {arr.shape}, expected (rows, {dim})")
    elif not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        out["defect"] = ("NaN / Inf values", f"first at row {row}")
    return out


def check_family(
    report: FamilyReport,
    folder: Path,
    needed: dict[str, list[str]],
    threads: int,
    checksum: bool,
) -> None:
    """Fill ``report`` for one family; ``needed`` maps split -> file stems the split reads."""
    present = {p.stem: p for p in folder.glob("*.npz")} if folder.is_dir() else {}
    wanted: set[str] = set()
    for split, stems in needed.items():
        report.needed[split] = len(stems)
        report.missing[split] = sorted(f"{s}.npz" for s in stems if s not in present)
        wanted.update(stems)
    report.extra = sorted(p.name for s, p in present.items() if s not in wanted)
    paths = [present[s] for s in sorted(wanted) if s in present]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(lambda p: inspect_file(p, report.key, report.dim, checksum), paths))
    for res in results:
        if "sha256" in res:
            report.sha256[res["name"]] = res["sha256"]
        if "dtype" in res:
            report.dtypes[res["dtype"]] += 1
            report.rows[Path(res["name"]).stem] = res["rows"]
        if "defect" in res:
            kind, message = res["defect"]
            report.defects.setdefault(kind, []).append(f"{res['name']}: {message}")


def check_features(
    feature_dir: str | Path,
    annotation_paths: Sequence[str | Path] = DEFAULT_ANNOTATIONS,
    video_dims: dict[str, int] | None = None,
    text_type: str = TEXT_FEATURE_TYPE,
    text_dim: int = REAL_TEXT_DIM,
    threads: int = 8,
    checksums: dict[str, str] | None = None,
    compute_checksums: bool = False,
) -> Report:
    """Check every feature file the annotation files need; see the module docstring.

    Args:
        feature_dir: the folder holding one sub-folder per family.
        annotation_paths: official jsonl files; each is one split (named from the file name).
        video_dims: video family folder -> expected feature size (default the real ones).
        text_type / text_dim: the query-token family and its feature size.
        checksums: ``"<family>/<file>" -> sha256`` to compare with (``--checksums``).
        compute_checksums: hash every checked file (implied by ``checksums``).
    """
    root = Path(feature_dir)
    video_dims = dict(video_dims or REAL_VIDEO_DIMS)
    rows_by_split = {split_name(Path(p)): load_jsonl(p) for p in annotation_paths}
    vids = {s: sorted({str(r["vid"]) for r in rows}) for s, rows in rows_by_split.items()}
    qids = {s: sorted({f"qid{r['qid']}" for r in rows}) for s, rows in rows_by_split.items()}
    notes: dict[str, list[str]] = {}
    families = []
    hashing = compute_checksums or checksums is not None
    for name, dim, key, needed in [
        *((n, d, VIDEO_KEY, vids) for n, d in video_dims.items()),
        (text_type, text_dim, TEXT_KEY, qids),
    ]:
        folder, alias_note = resolve_folder(root, name)
        if alias_note:
            notes.setdefault("folder names", []).append(alias_note)
        fam = FamilyReport(name=name, folder=str(folder), key=key, dim=dim)
        check_family(fam, folder, needed, threads, hashing)
        families.append(fam)
    report = Report(feature_dir=str(root), families=families, notes=notes)
    _row_notes(report, rows_by_split, families[:-1], families[-1])
    if checksums is not None:
        _compare_checksums(report, checksums)
    report.note_counts = {k: len(v) for k, v in report.notes.items()}
    return report


def _row_notes(
    report: Report,
    rows_by_split: dict[str, list[dict]],
    video: list[FamilyReport],
    text: FamilyReport,
) -> None:
    """Quirks the reader handles: row counts against durations and between families, relevant
    clips beyond the features, queries longer than the model reads, unused files."""
    notes = report.notes
    seen: set[str] = set()
    for rows in rows_by_split.values():
        for r in rows:
            vid = str(r["vid"])
            counts = {f.name: f.rows[vid] for f in video if vid in f.rows}
            if not counts:
                continue
            if vid not in seen:
                seen.add(vid)
                expected = round(float(r["duration"]) / 2)
                for fam, n in counts.items():
                    if n != expected:
                        notes.setdefault(f"{fam}: rows != duration / 2", []).append(
                            f"{vid}: {n} rows, duration {r['duration']} s -> {expected} clips"
                        )
                if len(set(counts.values())) > 1:
                    notes.setdefault("families differ in rows (cut to the shortest)", []).append(
                        f"{vid}: {counts}"
                    )
            ids = r.get("relevant_clip_ids") or []
            if ids and max(ids) >= min(counts.values()):
                notes.setdefault("relevant clips beyond the features (labels dropped)", []).append(
                    f"qid {r['qid']}: clip {max(ids)} of {min(counts.values())} rows"
                )
    long = [f"{q}: {n} tokens" for q, n in sorted(text.rows.items()) if n > MAX_QUERY_TOKENS]
    if long:
        notes[f"queries over {MAX_QUERY_TOKENS} tokens (cut)"] = long
    for fam in [*video, text]:
        if fam.extra:
            notes[f"{fam.name}: files no annotation needs"] = fam.extra
        if len(fam.dtypes) > 1:
            notes[f"{fam.name}: mixed dtypes"] = [f"{k}: {v}" for k, v in fam.dtypes.items()]


def _compare_checksums(report: Report, reference: dict[str, str]) -> None:
    got = {f"{f.name}/{n}": h for f in report.families for n, h in f.sha256.items()}
    diff = sorted(k for k, h in got.items() if k in reference and reference[k] != h)
    absent = sorted(k for k in got if k not in reference)
    if diff:
        report.checksum_defects["sha256 differs"] = diff
    if absent:
        report.checksum_defects["not in the checksum file"] = absent


def checksum_table(report: Report) -> dict[str, str]:
    """``"<family>/<file>" -> sha256`` of every checked file (for ``--write-checksums``)."""
    return {f"{f.name}/{n}": h for f in report.families for n, h in sorted(f.sha256.items())}


def format_report(report: Report, max_examples: int = 5) -> str:
    """Human-readable report: per family and split what was expected, found and differs."""

    def examples(items: list[str]) -> str:
        more = f" ... (+{len(items) - max_examples} more)" if len(items) > max_examples else ""
        return "; ".join(items[:max_examples]) + more

    lines = [f"QVHighlights features in {report.feature_dir}"]
    for f in report.families:
        dtypes = ", ".join(f"{k} x {v}" for k, v in f.dtypes.items()) or "none read"
        lines.append(f"{f.name} ({f.folder}): key {f.key!r}, (rows, {f.dim}); dtypes {dtypes}")
        if f.rows:
            n = np.fromiter(f.rows.values(), dtype=int)
            lines.append(
                f"  rows per file: min {n.min()}, median {int(np.median(n))}, max {n.max()}"
            )
        for split, count in f.needed.items():
            missing = f.missing[split]
            status = "ok" if not missing else f"{len(missing)} MISSING: {examples(missing)}"
            lines.append(f"  {split}: {count - len(missing)} / {count} files present, {status}")
        for kind, items in f.defects.items():
            lines.append(f"  DEFECT {kind}: {len(items)} file(s): {examples(items)}")
    for kind, items in report.checksum_defects.items():
        lines.append(f"DEFECT checksum, {kind}: {len(items)} file(s): {examples(items)}")
    for kind, items in report.notes.items():
        lines.append(f"note, {kind}: {len(items)}: {examples(items)}")
    verdict = "OK" if report.defect_count == 0 else f"{report.defect_count} DEFECT(S)"
    lines.append(f"result: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("feature_dir", help="folder with one sub-folder per feature family")
    parser.add_argument("--annotations", nargs="+", default=[str(p) for p in DEFAULT_ANNOTATIONS])
    parser.add_argument("--video-types", nargs="+", default=list(REAL_VIDEO_DIMS))
    parser.add_argument("--video-dims", nargs="+", type=int, default=list(REAL_VIDEO_DIMS.values()))
    parser.add_argument("--text-type", default=TEXT_FEATURE_TYPE)
    parser.add_argument("--text-dim", type=int, default=REAL_TEXT_DIM)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-examples", type=int, default=5, help="file names shown per kind")
    parser.add_argument("--json", help="also write the report as JSON here")
    parser.add_argument("--checksums", help="JSON of '<family>/<file>': sha256 to compare with")
    parser.add_argument("--write-checksums", help="write the SHA-256 of every checked file here")
    args = parser.parse_args(argv)
    if len(args.video_types) != len(args.video_dims):
        parser.error("--video-types and --video-dims need the same number of entries")
    if not Path(args.feature_dir).is_dir():
        parser.error(f"feature dir {args.feature_dir} does not exist")
    reference = json.loads(Path(args.checksums).read_text()) if args.checksums else None
    report = check_features(
        args.feature_dir,
        args.annotations,
        dict(zip(args.video_types, args.video_dims, strict=True)),
        text_type=args.text_type,
        text_dim=args.text_dim,
        threads=args.threads,
        checksums=reference,
        compute_checksums=bool(args.write_checksums),
    )
    print(format_report(report, args.max_examples))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    if args.write_checksums:
        Path(args.write_checksums).write_text(json.dumps(checksum_table(report), indent=1))
    return 0 if report.defect_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
