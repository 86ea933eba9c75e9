"""scripts/eval_qvhighlights.py refuses submissions the official script would score wrongly:
NaN / Inf scores, start > end, a missing key in any row, a ground-truth file as the submission;
windows outside [0, duration] are scored as the official script does, with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.eval_qvhighlights import main
from tasks.qvhighlights.metrics import eval_submission, load_jsonl, save_jsonl

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"


@pytest.fixture(scope="module")
def gt() -> list[dict]:
    return load_jsonl(ANN / "highlight_val_release.jsonl")[:12]


def submission(gt: list[dict]) -> list[dict]:
    """Noisy predictions near the GT: a valid submission."""
    rng = np.random.default_rng(0)
    rows = []
    for d in gt:
        s, e = d["relevant_windows"][0]
        windows = [[float(s), float(e), 0.9], [max(0.0, s - 4.0), float(e), 0.5]]
        scores = rng.random(int(d["duration"] // 2)).round(4).tolist()
        rows.append(
            {"qid": d["qid"], "pred_relevant_windows": windows, "pred_saliency_scores": scores}
        )
    return rows


def run(tmp_path: Path, rows: list[dict], gt: list[dict], capsys) -> tuple[int, str, str]:
    sub, gt_file = tmp_path / "sub.jsonl", tmp_path / "gt.jsonl"
    save_jsonl(rows, sub)
    save_jsonl(gt, gt_file)
    code = main(["--submission", str(sub), "--gt", str(gt_file)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_valid_submission_scores(tmp_path, gt, capsys):
    code, out, err = run(tmp_path, submission(gt), gt, capsys)
    assert code == 0 and "warning" not in err
    assert json.loads(out)["MR-full-R1@0.5"] == 100.0  # the first window is the GT window


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda r: r[3]["pred_saliency_scores"].__setitem__(2, float("nan")), "row 4 .*NaN / Inf"),
        (lambda r: r[0]["pred_saliency_scores"].__setitem__(0, float("inf")), "row 1 .*NaN / Inf"),
        (lambda r: r[5]["pred_relevant_windows"][1].__setitem__(2, float("nan")), "row 6 .*finite"),
        (lambda r: r[2]["pred_relevant_windows"].append([30.0, 10.0, 0.99]), "row 3 .*start > end"),
        (lambda r: r[6].pop("pred_saliency_scores"), r"row 7 .*lacks \['pred_saliency_scores'\]"),
        (lambda r: r[7].pop("qid"), r"row 8 .*lacks \['qid'\]"),
    ],
)
def test_bad_submissions_are_errors_naming_the_row(tmp_path, gt, capsys, corrupt, message):
    rows = submission(gt)
    corrupt(rows)
    code, out, err = run(tmp_path, rows, gt, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: submission row") and __import__("re").search(message, err), err


def test_ground_truth_as_submission_is_refused(tmp_path, gt, capsys):
    code, out, err = run(tmp_path, gt, gt, capsys)
    assert code == 2 and "looks like a ground-truth file" in err and out == ""


def test_windows_outside_the_video_warn_and_score_as_official(tmp_path, gt, capsys):
    rows = submission(gt)
    rows[1]["pred_relevant_windows"].append([140.0, 170.0, 0.1])  # duration is 150
    code, out, err = run(tmp_path, rows, gt, capsys)
    assert code == 0
    assert "warning: 1 predicted windows extend outside [0, duration]" in err
    assert json.loads(out) == dict(eval_submission(rows, gt, check=False)["brief"])


def test_malformed_submission_line_is_named(tmp_path, gt, capsys):
    sub, gt_file = tmp_path / "sub.jsonl", tmp_path / "gt.jsonl"
    save_jsonl(gt, gt_file)
    lines = [json.dumps(r) for r in submission(gt)]
    lines[4] = lines[4][:30]
    sub.write_text("\n".join(lines) + "\n")
    assert main(["--submission", str(sub), "--gt", str(gt_file)]) == 2
    assert f"{sub}, line 5: malformed JSON" in capsys.readouterr().err
