"""A per-query re-statement of the official QVHighlights evaluation (jayleicn/moment_detr
``standalone_eval/eval.py`` + ``utils.py``), written from its definitions with the same loops,
so that the vectorised ``tasks.qvhighlights.metrics`` can be checked against it. Slow on purpose.

``fake_predictions`` makes realistic predictions for a GT file (ties in scores and IoU included)
for the comparisons in the tests and in ``scripts/bench_qvhighlights.py``.

It differs from the official only where the official crashes: a query without predicted
windows is a miss for R1 (official: IndexError).
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict

import numpy as np
from sklearn.metrics import precision_recall_curve


def cross_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    areas1 = spans1[:, 1] - spans1[:, 0]
    areas2 = spans2[:, 1] - spans2[:, 0]
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = areas1[:, None] + areas2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def paired_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    inter = np.maximum(0, np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]))
    union = np.maximum(pred[:, 1], gt[:, 1]) - np.minimum(pred[:, 0], gt[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def detection_ap(gts: list[list[float]], preds: list[list[float]], thds) -> np.ndarray:
    ap = np.zeros(len(thds))
    if not preds:
        return ap
    preds = sorted(preds, key=lambda p: -p[2])  # stable
    lock = -np.ones((len(thds), len(gts)))
    tp = np.zeros((len(thds), len(preds)))
    fp = np.zeros((len(thds), len(preds)))
    gt_arr = np.array([[g[0], g[1]] for g in gts])
    for i, p in enumerate(preds):
        ious = cross_iou(np.array([[p[0], p[1]]]), gt_arr).reshape(-1)
        ranked = np.argsort(ious, kind="stable")[::-1]
        for t, thd in enumerate(thds):
            for j in ranked:
                if ious[j] < thd:
                    fp[t, i] = 1
                    break
                if lock[t, j] >= 0:
                    continue
                tp[t, i] = 1
                lock[t, j] = i
                break
            if fp[t, i] == 0 and tp[t, i] == 0:
                fp[t, i] = 1
    tp_c, fp_c = np.cumsum(tp, 1), np.cumsum(fp, 1)
    rec = tp_c / float(len(gts))
    prec = tp_c / (tp_c + fp_c)
    for t in range(len(thds)):
        ap[t] = interpolated_ap(prec[t], rec[t])
    return ap


def mr_map(submission, ground_truth, thds, max_pred=10):
    pred = defaultdict(list)
    for d in submission:
        for w in d["pred_relevant_windows"][:max_pred]:
            pred[d["qid"]].append(w)
    gt = {d["qid"]: d["relevant_windows"] for d in ground_truth}
    aps = np.array([detection_ap(gt[q], pred[q], thds) for q in pred])
    per_thd = aps.mean(0)
    out = {str(t): v for t, v in zip(thds, per_thd, strict=True)}
    out["average"] = np.mean(per_thd)
    return {k: float(f"{100 * v:.2f}") for k, v in out.items()}


def mr_r1(submission, ground_truth, thds):
    first = {
        d["qid"]: (d["pred_relevant_windows"][0][:2] if d["pred_relevant_windows"] else None)
        for d in submission
    }
    best_gt = {}
    for d in ground_truth:
        windows, idx = d["relevant_windows"], 0
        if first[d["qid"]] is not None and len(windows) > 0:
            idx = int(np.argmax(cross_iou(np.array([first[d["qid"]]]), np.array(windows))[0]))
        best_gt[d["qid"]] = windows[idx]
    qids = list(first)
    ious = np.array(
        [
            0.0
            if first[q] is None
            else paired_iou(np.array([first[q]], float), np.array([best_gt[q]], float))[0]
            for q in qids
        ]
    )
    return {str(t): float(f"{np.mean(ious >= t) * 100:.2f}") for t in thds}


def by_range(submission, ground_truth, lo, hi):
    if lo == 0 and hi == 150:
        return submission, ground_truth
    gt_in, qids = [], set()
    for d in ground_truth:
        ws = [w for w in d["relevant_windows"] if lo < w[1] - w[0] <= hi]
        if ws:
            d = copy.deepcopy(d)
            d["relevant_windows"] = ws
            gt_in.append(d)
            qids.add(d["qid"])
    return [copy.deepcopy(d) for d in submission if d["qid"] in qids], gt_in


def get_ap(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if len(set(y_true)) == 1:
        return 0.0 if y_true[0] == 0 else 1.0
    precision, recall, _ = precision_recall_curve(y_true, y_pred)
    recall = recall.astype(np.float32)
    for i in range(1, len(precision)):
        precision[i] = max(precision[i - 1], precision[i])
    return float(np.mean(precision[np.where(np.diff(recall))]))


def gt_scores(d) -> np.ndarray:
    s = np.zeros((int(d["duration"] / 2), 3))
    s[np.array(d["relevant_clip_ids"])] = np.array(d["saliency_scores"])
    return s


def highlight(submission, ground_truth):
    preds = {d["qid"]: d for d in submission}
    full = {d["qid"]: gt_scores(d) for d in ground_truth}
    out = {}
    for level, name in zip([2, 3, 4], ["Fair", "Good", "VeryGood"], strict=True):
        binary = {k: (v >= level).astype(float) for k, v in full.items()}
        hits = np.zeros((len(preds), 3))
        aps = np.zeros((len(preds), 3))
        for i, q in enumerate(preds):
            p = np.array(preds[q]["pred_saliency_scores"])
            top = np.argmax(p)
            if top < len(binary[q]):
                hits[i] = binary[q][top]
            for w in range(3):
                y = binary[q][:, w]
                yp = (
                    p[: len(y)]
                    if len(y) <= len(p)
                    else np.concatenate([p, np.zeros(len(y) - len(p))])
                )
                aps[i, w] = get_ap(y, yp)
        out[f"HL-min-{name}"] = {
            "HL-mAP": float(f"{100 * np.mean(aps):.2f}"),
            "HL-Hit1": float(f"{100 * np.mean(np.max(hits, 1)):.2f}"),
        }
    return out


def eval_submission(submission, ground_truth):
    thds = [float(f"{e:.2f}") for e in np.linspace(0.5, 0.95, 10)]
    metrics, brief = {}, OrderedDict()
    ranges = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": (0, 150)}
    for name, (lo, hi) in ranges.items():
        s, g = by_range(submission, ground_truth, lo, hi)
        metrics[name] = {"MR-mAP": mr_map(s, g, thds), "MR-R1": mr_r1(s, g, thds)}
    mr = {
        "MR-full-mAP": metrics["full"]["MR-mAP"]["average"],
        "MR-full-mAP@0.5": metrics["full"]["MR-mAP"]["0.5"],
        "MR-full-mAP@0.75": metrics["full"]["MR-mAP"]["0.75"],
        "MR-short-mAP": metrics["short"]["MR-mAP"]["average"],
        "MR-middle-mAP": metrics["middle"]["MR-mAP"]["average"],
        "MR-long-mAP": metrics["long"]["MR-mAP"]["average"],
        "MR-full-R1@0.5": metrics["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": metrics["full"]["MR-R1"]["0.7"],
    }
    brief.update(sorted(mr.items()))
    hl = highlight(submission, ground_truth)
    metrics.update(hl)
    for k, v in hl.items():
        for sub_k in v:
            brief[f"{k}-{sub_k.split('-')[1]}"] = v[sub_k]
    out = OrderedDict(brief=brief)
    out.update(sorted(metrics.items()))
    return out


def fake_predictions(gt: list[dict], seed: int) -> list[dict]:
    """Predictions near / away from the GT, on the 2 s grid (IoU and score ties) or not."""
    rng = np.random.default_rng(seed)
    sub = []
    for d in gt:
        wins = []
        for _ in range(int(rng.integers(0 if rng.random() < 0.02 else 1, 11))):
            if rng.random() < 0.6:
                g = d["relevant_windows"][int(rng.integers(len(d["relevant_windows"])))]
                st, ed = g[0] + rng.normal(0, 4), g[1] + rng.normal(0, 4)
            else:
                st = rng.uniform(0, d["duration"])
                ed = st + rng.uniform(0, 60)
            st, ed = sorted((st, ed))
            if rng.random() < 0.7:
                st, ed = 2 * round(st / 2), 2 * round(ed / 2)
            wins.append([float(st), float(ed), round(float(rng.choice([0.5, rng.random()])), 4)])
        wins.sort(key=lambda w: -w[2])
        n = max(1, int(d["duration"] / 2) + int(rng.integers(-3, 4)))
        sal = np.round(rng.normal(size=n), 1).astype(np.float16).tolist()
        sub.append({"qid": d["qid"], "pred_relevant_windows": wins, "pred_saliency_scores": sal})
    return sub
