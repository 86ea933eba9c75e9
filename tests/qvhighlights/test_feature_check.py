"""scripts/check_qvhighlights_features.py: a clean generated copy passes; a copy with each kind
of defect is reported with the file and the kind (and exit code 1); the reader's quirks are
notes, not defects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scripts.check_qvhighlights_features import check_features, format_report, main
from tasks.qvhighlights.synthetic import write_synthetic_features

REPO = Path(__file__).resolve().parents[2]
DIMS = {"slowfast_features": 8, "clip_features": 4}
TEXT_DIM = 4


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qvh_features")
    anns = [
        REPO / "data" / "qvhighlights" / f"highlight_{s}_release.jsonl" for s in ("train", "val")
    ]
    write_synthetic_features(anns, out, DIMS, text_dim=TEXT_DIM, limit=6)
    return out


def copy_of(clean: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "features"
    shutil.copytree(clean, dest)
    return dest


def run_check(root: Path, **kwargs):
    anns = sorted((root / "annotations").glob("*.jsonl"))
    return check_features(root, anns, DIMS, text_dim=TEXT_DIM, threads=2, **kwargs)


def first_val_vid(root: Path) -> str:
    line = (root / "annotations" / "highlight_val_release.jsonl").read_text().splitlines()[0]
    return json.loads(line)["vid"]


def test_clean_copy_passes_and_counts_every_split(clean_copy, tmp_path):
    report = run_check(clean_copy)
    assert report.defect_count == 0
    slowfast, clip, text = report.families
    vids = {
        s: len(
            {
                json.loads(x)["vid"]
                for x in open(clean_copy / "annotations" / f"highlight_{s}_release.jsonl")
            }
        )
        for s in ("train", "val")
    }
    assert slowfast.needed == clip.needed == vids
    assert text.needed == {"train": 6, "val": 6}  # one query file per qid
    assert slowfast.dtypes == {"float32": len(slowfast.rows)}
    assert all(not f.missing["train"] and not f.missing["val"] for f in report.families)
    assert "result: OK" in format_report(report)
    anns = [str(p) for p in sorted((clean_copy / "annotations").glob("*.jsonl"))]
    dims = ["--video-dims", "8", "4", "--text-dim", "4"]
    js = tmp_path / "report.json"
    assert main([str(clean_copy), "--annotations", *anns, *dims, "--json", str(js)]) == 0
    assert json.loads(js.read_text())["defects"] == 0


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "unreadable",
        "missing key",
        "not a 2-d array with rows",
        "wrong feature size",
        "not a float dtype",
        "NaN / Inf values",
    ],
)
def test_each_kind_of_defect_is_named_with_its_file(clean_copy, tmp_path, kind):
    root = copy_of(clean_copy, tmp_path)
    vid = first_val_vid(root)
    path = root / "clip_features" / f"{vid}.npz"
    good = np.load(path)["features"]
    if kind == "missing":
        path.unlink()
    elif kind == "unreadable":
        path.write_bytes(path.read_bytes()[:100])  # a truncated download
    elif kind == "missing key":
        np.savez(path, feats=good)
    elif kind == "not a 2-d array with rows":
        np.savez(path, features=good[:0])
    elif kind == "wrong feature size":
        np.savez(path, features=good[:, :3])
    elif kind == "not a float dtype":
        np.savez(path, features=(good * 100).astype(np.int32))
    else:
        bad = good.copy()
        bad[5, 1] = np.nan
        np.savez(path, features=bad)
    report = run_check(root)
    clip = report.families[1]
    assert report.defect_count == 1
    assert report.families[0].defects == {} and report.families[2].defects == {}
    if kind == "missing":
        assert clip.missing["val"] == [f"{vid}.npz"] and clip.missing["train"] == []
        assert f"val: {clip.needed['val'] - 1} / {clip.needed['val']} files present, 1 MISSING" in (
            format_report(report)
        )
    else:
        assert list(clip.defects) == [kind]
        assert clip.defects[kind][0].startswith(f"{vid}.npz: ")
        assert f"DEFECT {kind}: 1 file(s): {vid}.npz" in format_report(report)
    if kind == "NaN / Inf values":
        assert clip.defects[kind] == [f"{vid}.npz: first at row 5"]
    anns = [str(p) for p in sorted((root / "annotations").glob("*.jsonl"))]
    assert (
        main([str(root), "--annotations", *anns, "--video-dims", "8", "4", "--text-dim", "4"]) == 1
    )


def test_missing_query_features_are_counted_per_split(clean_copy, tmp_path):
    root = copy_of(clean_copy, tmp_path)
    qids = [
        json.loads(x)["qid"] for x in open(root / "annotations" / "highlight_train_release.jsonl")
    ]
    for q in qids[:2]:
        (root / "clip_text_features" / f"qid{q}.npz").unlink()
    text = run_check(root).families[2]
    assert text.missing == {"train": sorted(f"qid{q}.npz" for q in qids[:2]), "val": []}


def test_checksums_written_for_one_copy_find_the_changed_file_in_another(clean_copy, tmp_path):
    anns = [str(p) for p in sorted((clean_copy / "annotations").glob("*.jsonl"))]
    dims = ["--annotations", *anns, "--video-dims", "8", "4", "--text-dim", "4"]
    sums = tmp_path / "sha256.json"
    assert main([str(clean_copy), *dims, "--write-checksums", str(sums)]) == 0
    table = json.loads(sums.read_text())
    assert len(table) == sum(len(f.rows) for f in run_check(clean_copy).families)  # one per file
    root = copy_of(clean_copy, tmp_path)
    vid = first_val_vid(root)
    path = root / "slowfast_features" / f"{vid}.npz"
    np.savez(path, features=np.load(path)["features"] + np.float32(1e-3))  # same shape, dtype
    report = run_check(root, checksums=table)
    assert report.checksum_defects == {"sha256 differs": [f"slowfast_features/{vid}.npz"]}
    assert main([str(root), *dims, "--checksums", str(sums)]) == 1


def test_quirks_are_notes_not_defects(clean_copy, tmp_path):
    root = copy_of(clean_copy, tmp_path)
    vid = first_val_vid(root)
    path = root / "clip_features" / f"{vid}.npz"
    np.savez(path, features=np.load(path)["features"][:10])  # fewer rows than the duration
    np.savez(root / "clip_features" / "unused_video.npz", features=np.zeros((3, 4), np.float32))
    report = run_check(root)
    assert report.defect_count == 0
    assert any(
        x.startswith(f"{vid}: 10 rows") for x in report.notes["clip_features: rows != duration / 2"]
    )
    assert report.notes["clip_features: files no annotation needs"] == ["unused_video.npz"]
    assert any(
        x.startswith(f"{vid}: ")
        for x in report.notes["families differ in rows (cut to the shortest)"]
    )


def test_lighthouse_folder_names_are_recognised(clean_copy, tmp_path):
    root = copy_of(clean_copy, tmp_path)
    for official, alias in [
        ("slowfast_features", "slowfast"),
        ("clip_features", "clip"),
        ("clip_text_features", "clip_text"),
    ]:
        (root / official).rename(root / alias)
    report = run_check(root)
    assert report.defect_count == 0
    assert report.families[0].folder.endswith("slowfast")
    assert len(report.notes["folder names"]) == 3


def test_released_test_labels_extend_the_test_release_line_by_line():
    """data/qvhighlights/highlight_test_with_gt.jsonl (moment_detr, released after CodaLab shut
    down) is the test release plus the label keys, and the local evaluation scores against it."""
    from tasks.qvhighlights.data import LABEL_KEYS, read_annotations
    from tasks.qvhighlights.metrics import eval_submission, load_jsonl

    data = REPO / "data" / "qvhighlights"
    release = load_jsonl(data / "highlight_test_release.jsonl")
    labelled = read_annotations(data / "highlight_test_with_gt.jsonl", need_labels=True)
    assert len(labelled) == len(release) == 1542
    for plain, full in zip(release, labelled, strict=True):
        assert {k: full[k] for k in plain} == plain
        assert set(full) - set(plain) == set(LABEL_KEYS)
    oracle = [
        {
            "qid": r["qid"],
            "vid": r["vid"],
            "pred_relevant_windows": [[*w, 1.0] for w in r["relevant_windows"]],
            "pred_saliency_scores": [0.0] * int(r["duration"] / 2),
        }
        for r in labelled
    ]
    brief = eval_submission(oracle, labelled)["brief"]
    assert brief["MR-full-R1@0.7"] == 100.0
