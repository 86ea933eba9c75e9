"""QVHighlights metrics: hand-computed cases, and equality with an official-style per-query
reference (tests/qvhighlights/qvh_official_reference.py) on the real val annotations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.qvhighlights.metrics import (
    IOU_THRESHOLDS,
    _pad,
    detection_ap,
    eval_submission,
    load_jsonl,
    save_jsonl,
)
from tests.qvhighlights import qvh_official_reference as reference
from tests.qvhighlights.qvh_official_reference import fake_predictions

ROOT = Path(__file__).resolve().parents[2]
VAL = ROOT / "data" / "qvhighlights" / "highlight_val_release.jsonl"


def gt_row(qid, windows, duration=150, clip_ids=(0,), scores=((1, 1, 1),)):
    return {
        "qid": qid,
        "query": "q",
        "vid": f"v{qid}",
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": list(clip_ids),
        "saliency_scores": [list(s) for s in scores],
    }


def pred_row(qid, windows, saliency=(1.0,)):
    return {"qid": qid, "pred_relevant_windows": windows, "pred_saliency_scores": list(saliency)}


def mr(sub, gt, rng="full"):
    return eval_submission(sub, gt)[rng]


def test_perfect_first_window_and_extra_false_positive():
    out = mr([pred_row(1, [[0, 10, 0.9], [20, 30, 0.8]])], [gt_row(1, [[0, 10]])])
    assert out["MR-R1"]["0.5"] == 100.0 and out["MR-R1"]["0.95"] == 100.0
    assert out["MR-mAP"]["average"] == 100.0  # the tp ranks first: AP 1 at every threshold


def test_equal_scores_keep_submission_order():
    # the false positive is listed first with the same score: precision 0 then 1/2 -> AP 0.5
    out = mr([pred_row(1, [[20, 30, 0.5], [0, 10, 0.5]])], [gt_row(1, [[0, 10]])])
    assert out["MR-mAP"]["0.5"] == 50.0
    assert out["MR-R1"]["0.5"] == 0.0  # R1 takes the first window as submitted


def test_empty_predictions_left_out_of_map_and_a_miss_for_r1():
    sub = [pred_row(1, [[0, 10, 0.9]]), pred_row(2, [])]
    gt = [gt_row(1, [[0, 10]]), gt_row(2, [[0, 10]])]
    out = mr(sub, gt)
    assert out["MR-mAP"]["average"] == 100.0  # official: only queries with predictions
    assert out["MR-R1"]["0.5"] == 50.0


def test_window_longer_than_the_video():
    out = mr([pred_row(1, [[140, 160, 1.0]])], [gt_row(1, [[140, 150]])])
    assert out["MR-R1"]["0.5"] == 100.0 and out["MR-R1"]["0.7"] == 0.0  # IoU 10 / 20
    assert out["MR-mAP"]["0.5"] == 100.0 and out["MR-mAP"]["0.55"] == 0.0
    assert out["MR-mAP"]["average"] == 10.0


def test_one_prediction_two_tied_gt_windows():
    # IoU 0.5 with both GT windows: one is matched at IoU 0.5 -> recall 1/2, AP 0.5
    out = mr([pred_row(1, [[0, 4, 1.0]])], [gt_row(1, [[0, 2], [2, 4]])])
    assert out["MR-mAP"]["0.5"] == 50.0 and out["MR-mAP"]["average"] == 5.0
    assert out["MR-R1"]["0.5"] == 100.0  # intersection over the hull of the pair: 2 / 4


def test_length_ranges_keep_only_windows_in_range():
    gt = [gt_row(1, [[0, 4], [10, 30], [40, 100]])]
    sub = [pred_row(1, [[10, 30, 0.9], [0, 4, 0.8]])]
    out = eval_submission(sub, gt)
    assert out["short"]["MR-mAP"]["average"] == 50.0  # tp at rank 2 of 2
    assert out["middle"]["MR-mAP"]["average"] == 100.0
    assert out["long"]["MR-mAP"]["average"] == 0.0
    assert out["full"]["MR-mAP"]["average"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert out["brief"]["MR-short-mAP"] == 50.0


def test_highlight_by_hand():
    gt = [gt_row(1, [[2, 6]], duration=8, clip_ids=(1, 2), scores=((4, 4, 0), (2, 3, 4)))]
    out = eval_submission([pred_row(1, [[2, 6, 1.0]], saliency=(0.1, 0.9, 0.5, 0.2))], gt)
    for level in ("Fair", "Good", "VeryGood"):  # annotators 1, 2: AP 1; annotator 3: AP 1/2
        assert out[f"HL-min-{level}"]["HL-mAP"] == 83.33
        assert out[f"HL-min-{level}"]["HL-Hit1"] == 100.0
    assert list(out["brief"])[-2:] == ["HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"]


def test_highlight_ties_and_lengths():
    gt = [gt_row(1, [[2, 4]], duration=8, clip_ids=(1,), scores=((4, 4, 4),))]
    tied = eval_submission([pred_row(1, [[0, 2, 1]], saliency=(0.5, 0.5, 0.5, 0.5))], gt)
    assert tied["HL-min-VeryGood"]["HL-mAP"] == 25.0  # one threshold: precision 1/4
    assert tied["HL-min-VeryGood"]["HL-Hit1"] == 0.0  # argmax -> clip 0
    longer = eval_submission([pred_row(1, [[0, 2, 1]], saliency=(0, 1, 0, 0, 0, 9))], gt)
    assert longer["HL-min-VeryGood"]["HL-mAP"] == 100.0  # cut to the 4 clips
    assert longer["HL-min-VeryGood"]["HL-Hit1"] == 0.0  # arg-max outside the video
    shorter = eval_submission([pred_row(1, [[0, 2, 1]], saliency=(-1.0, -2.0))], gt)
    assert shorter["HL-min-VeryGood"]["HL-mAP"] == 25.0  # padded zeros and -1 outrank clip 1


def test_qid_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="1 GT qids have no prediction"):
        eval_submission([pred_row(1, [[0, 2, 1]])], [gt_row(1, [[0, 2]]), gt_row(2, [[0, 2]])])


def test_equals_official_reference_on_real_val_subset():
    gt = load_jsonl(VAL)[:200]
    sub = fake_predictions(gt, 0)
    assert eval_submission(sub, gt) == reference.eval_submission(sub, gt)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_equals_official_reference_on_all_1550_val_queries(seed):
    gt = load_jsonl(VAL)
    sub = [d for d in fake_predictions(gt, seed) if d["pred_relevant_windows"]]
    gt_qids = {d["qid"] for d in sub}  # the official R1 cannot take empty predictions
    gt = [d for d in gt if d["qid"] in gt_qids]
    assert eval_submission(sub, gt) == reference.eval_submission(sub, gt)


def test_per_query_ap_unrounded():
    gt = load_jsonl(VAL)[:300]
    sub = [d for d in fake_predictions(gt, 3) if d["pred_relevant_windows"]]
    by_qid = {d["qid"]: d for d in gt}
    preds = [d["pred_relevant_windows"][:10] for d in sub]
    gts = [by_qid[d["qid"]]["relevant_windows"] for d in sub]
    p, pv = _pad(preds, 10, 3)
    g, gv = _pad(gts, max(map(len, gts)), 2)
    fast = detection_ap(p, pv, g, gv)
    slow = np.stack(
        [reference.detection_ap(gw, pw, IOU_THRESHOLDS) for gw, pw in zip(gts, preds, strict=True)]
    )
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_cli_prints_brief_and_saves(tmp_path):
    gt = load_jsonl(VAL)[:50]
    save_jsonl(gt, tmp_path / "gt.jsonl")
    save_jsonl(fake_predictions(gt, 0), tmp_path / "pred.jsonl")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "eval_qvhighlights.py"),
        "--submission",
        str(tmp_path / "pred.jsonl"),
        "--gt",
        str(tmp_path / "gt.jsonl"),
        "--save",
        str(tmp_path / "m.json"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    brief = json.loads(res.stdout)
    assert brief == json.loads((tmp_path / "m.json").read_text())["brief"]
    assert "MR-full-mAP" in brief and "HL-min-VeryGood-Hit1" in brief
    save_jsonl(gt[:10], tmp_path / "gt_small.jsonl")
    cmd[5] = str(tmp_path / "gt_small.jsonl")
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "qids in the submission and the ground truth" in bad.stderr
