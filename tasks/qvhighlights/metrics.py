"""QVHighlights evaluation, equal in results to the official ``standalone_eval/eval.py``
(jayleicn/moment_detr), vectorised with numpy instead of a per-query Python loop.

Moment retrieval (MR): R1@IoU (first predicted window vs. the best-overlapping GT window) and
mAP over IoU 0.5:0.05:0.95 (ActivityNet-style detection AP, top-10 predictions per query), for
all queries ("full") and for GT windows of length (0, 10], (10, 30], (30, 150] s.
Highlight detection (HL): per-clip saliency scored against each of the 3 annotators, with a clip
positive when its score >= 2 / 3 / 4 (Fair / Good / VeryGood): mAP (video2gif AP) and HIT@1.

Definitions taken from the official code, including its corner cases:
* a query with an empty ``pred_relevant_windows`` has no entry in the MR-mAP average (the official
  code only visits queries that have predictions); for R1, where the official code would raise
  an ``IndexError``, such a query counts as a miss;
* predictions are sorted by score with a stable sort (equal scores keep the submission order);
  R1 uses the first window *as submitted*, not the best-scored one;
* a prediction is matched to the unlocked GT window of highest IoU; among equal IoUs the GT with
  the highest index wins (numpy's ``argsort()[::-1]`` on short arrays); a NaN IoU (zero-length
  prediction and GT) passes every threshold, as in the official comparison ``iou < thd``;
* saliency predictions longer than the video are cut, shorter ones padded with zeros (HL-mAP);
  HIT@1 takes the arg-max over the full submitted list and scores 0 outside the video.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CLIP_LENGTH = 2
IOU_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
MAX_PRED_WINDOWS = 10
LENGTH_RANGES = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": (0, 150)}
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
BRIEF_MR = {
    "MR-full-mAP": ("full", "MR-mAP", "average"),
    "MR-full-mAP@0.5": ("full", "MR-mAP", "0.5"),
    "MR-full-mAP@0.75": ("full", "MR-mAP", "0.75"),
    "MR-short-mAP": ("short", "MR-mAP", "average"),
    "MR-middle-mAP": ("middle", "MR-mAP", "average"),
    "MR-long-mAP": ("long", "MR-mAP", "average"),
    "MR-full-R1@0.5": ("full", "MR-R1", "0.5"),
    "MR-full-R1@0.7": ("full", "MR-R1", "0.7"),
}


def load_jsonl(path: str | Path) -> list[dict]:
    """One JSON object per line (the official annotation / submission format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QVHighlights: no such jsonl file: {path}")
    rows = []
    try:
        with path.open() as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}, line {number}: malformed JSON ({err.msg} at column {err.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number}: expected a JSON object")
                rows.append(row)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
    return rows


def save_jsonl(rows: Iterable[dict], path: str | Path) -> None:
    """One JSON object a line, written atomically (temporary file + rename)."""
    from tasks.common.runtime.results import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _pct(value: float) -> float:
    """The official rounding: percent with two decimals."""
    return float(f"{100 * value:.2f}")


def _pad(
    rows: Sequence[Sequence[Sequence[float]]], width: int, cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged list of (n_i, >=cols) windows -> (Q, width, cols) float array and (Q, width) mask."""
    out = np.zeros((len(rows), max(width, 1), cols), dtype=np.float64)
    valid = np.zeros((len(rows), max(width, 1)), dtype=bool)
    for i, row in enumerate(rows):
        n = min(len(row), width)
        if n:
            out[i, :n] = np.asarray([w[:cols] for w in row[:n]], dtype=np.float64)
            valid[i, :n] = True
    return out, valid


def _cross_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of (Q, P, 2) predictions against (Q, G, 2) GT windows -> (Q, P, G); 0/0 -> NaN."""
    left = np.maximum(pred[:, :, None, 0], gt[:, None, :, 0])
    right = np.minimum(pred[:, :, None, 1], gt[:, None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = (
        (pred[:, :, None, 1] - pred[:, :, None, 0])
        + (gt[:, None, :, 1] - gt[:, None, :, 0])
        - inter
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def detection_ap(
    pred: np.ndarray,
    pred_valid: np.ndarray,
    gt: np.ndarray,
    gt_valid: np.ndarray,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
    """Detection AP per query and IoU threshold -> (Q, T).

    ``pred`` (Q, P, 3) rows [start, end, score] in submission order, ``gt`` (Q, G, 2). Greedy
    matching in score order, each GT matched at most once per threshold; AP is the area under the
    interpolated precision envelope (VOC 2011 / ActivityNet, as mmaction2's
    ``compute_average_precision_detection``). The loop runs over the (at most 10) prediction
    ranks; queries, thresholds and GT windows are vectorised.
    """
    Q, P, _ = pred.shape
    thr = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(np.where(pred_valid, -pred[..., 2], np.inf), axis=1, kind="stable")
    pred = np.take_along_axis(pred, order[..., None], axis=1)
    pred_valid = np.take_along_axis(pred_valid, order, axis=1)
    iou = _cross_iou(pred[..., :2], gt)
    iou = np.where(np.isnan(iou), np.inf, iou)  # NaN is never "< thd" in the official loop
    iou = np.where(gt_valid[:, None, :], iou, -np.inf)
    G = gt.shape[1]
    locked = np.zeros((Q, len(thr), G), dtype=bool)
    tp = np.zeros((Q, len(thr), P), dtype=bool)
    q_idx, t_idx = np.meshgrid(np.arange(Q), np.arange(len(thr)), indexing="ij")
    for j in range(P):
        cand = (iou[:, j, None, :] >= thr[None, :, None]) & ~locked
        key = np.where(cand, iou[:, j, None, :], -np.inf)[..., ::-1]
        chosen = G - 1 - key.argmax(-1)  # highest IoU; ties -> highest GT index
        hit = cand.any(-1) & pred_valid[:, j, None]
        tp[:, :, j] = hit
        locked[q_idx[hit], t_idx[hit], chosen[hit]] = True
    fp = pred_valid[:, None, :] & ~tp
    tp_cum = np.cumsum(tp, axis=-1, dtype=np.float64)
    fp_cum = np.cumsum(fp, axis=-1, dtype=np.float64)
    n_gt = gt_valid.sum(1).astype(np.float64)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_cum / n_gt
        precision = np.nan_to_num(tp_cum / (tp_cum + fp_cum))
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, -1), axis=-1), -1)
    step = np.diff(recall, axis=-1, prepend=0.0)
    ap = np.where(step != 0, step * envelope, 0.0).sum(-1)
    ap[~pred_valid.any(1)] = 0.0
    return ap


def _r1_iou(first: np.ndarray, gt: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
    """IoU of each query's first predicted window with its best-overlapping GT window."""
    cross = _cross_iou(first[:, None, :], gt)[:, 0, :]  # (Q, G)
    key = np.where(np.isnan(cross), np.inf, cross)  # np.argmax returns the first NaN
    key = np.where(gt_valid, key, -np.inf)
    best = np.take_along_axis(gt, key.argmax(1)[:, None, None].repeat(2, -1), axis=1)[:, 0]
    inter = np.maximum(0, np.minimum(first[:, 1], best[:, 1]) - np.maximum(first[:, 0], best[:, 0]))
    hull = np.maximum(first[:, 1], best[:, 1]) - np.minimum(first[:, 0], best[:, 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def _filter_by_length(
    submission: list[dict], ground_truth: list[dict], length_range: tuple[float, float]
) -> tuple[list[dict], list[dict]]:
    """GT windows with min < length <= max, and the queries that keep at least one."""
    lo, hi = length_range
    if (lo, hi) == LENGTH_RANGES["full"]:
        return submission, ground_truth
    kept = []
    for d in ground_truth:
        windows = [w for w in d["relevant_windows"] if lo < w[1] - w[0] <= hi]
        if windows:
            kept.append({**d, "relevant_windows": windows})
    qids = {d["qid"] for d in kept}
    return [d for d in submission if d["qid"] in qids], kept


def eval_moment_retrieval(submission: list[dict], ground_truth: list[dict]) -> dict[str, dict]:
    """MR-mAP (per IoU threshold and averaged) and MR-R1 for each GT-length range."""
    results = {}
    for name, length_range in LENGTH_RANGES.items():
        sub, gt = _filter_by_length(submission, ground_truth, length_range)
        gt_by_qid = {d["qid"]: d["relevant_windows"] for d in gt}
        gt_rows = [gt_by_qid[d["qid"]] for d in sub]
        gt_arr, gt_valid = _pad(gt_rows, max((len(r) for r in gt_rows), default=1), 2)
        preds = [d["pred_relevant_windows"][:MAX_PRED_WINDOWS] for d in sub]
        pred_arr, pred_valid = _pad(preds, MAX_PRED_WINDOWS, 3)

        has_pred = pred_valid.any(1)
        ap = detection_ap(
            pred_arr[has_pred], pred_valid[has_pred], gt_arr[has_pred], gt_valid[has_pred]
        )
        ap_per_thd = ap.mean(0) if len(ap) else np.full(len(IOU_THRESHOLDS), np.nan)
        mr_map = {str(t): v for t, v in zip(IOU_THRESHOLDS, ap_per_thd, strict=True)}
        mr_map["average"] = float(np.mean(ap_per_thd))
        iou = _r1_iou(pred_arr[:, 0, :2], gt_arr, gt_valid)
        iou[~has_pred] = 0.0  # no prediction: a miss (the official script would crash here)
        results[name] = {
            "MR-mAP": {k: _pct(v) for k, v in mr_map.items()},
            "MR-R1": {
                str(t): _pct(float(np.mean(iou >= t)) if len(iou) else float("nan"))
                for t in IOU_THRESHOLDS
            },
        }
    return results


def gt_saliency(ground_truth: list[dict], clip_length: int = CLIP_LENGTH) -> list[np.ndarray]:
    """Per query (n_clips, 3) annotator scores in [0, 4]; n_clips = int(duration / clip_length)."""
    out = []
    for d in ground_truth:
        scores = np.zeros((int(d["duration"] / clip_length), 3))
        ids = np.asarray(d["relevant_clip_ids"], dtype=int)
        if len(ids) and ids.max() >= len(scores):
            raise ValueError(
                f"qid {d['qid']}: relevant_clip_ids reach {ids.max()} but the video has only "
                f"{len(scores)} clips of {clip_length} s (duration {d['duration']})"
            )
        scores[ids] = np.asarray(d["saliency_scores"], dtype=np.float64).reshape(len(ids), 3)
        out.append(scores)
    return out


def saliency_ap(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """video2gif AP (interpolated, one precision per recall level) per row -> (N,).

    ``scores`` / ``labels`` (N, L) with ``valid`` (N, L); equals the official ``get_ap``
    (sklearn ``precision_recall_curve`` + running max): all-negative rows score 0, all-positive 1.
    """
    scores = np.where(valid, scores, -np.inf)
    labels = np.where(valid, labels, 0.0)
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    y = np.take_along_axis(labels, order, axis=1)
    cum_tp = np.cumsum(y, axis=1)
    is_end = np.ones_like(s, dtype=bool)  # last position of each group of equal scores
    is_end[:, :-1] = s[:, :-1] != s[:, 1:]
    rank = np.arange(1, s.shape[1] + 1, dtype=np.float64)
    precision = np.where(is_end, cum_tp / rank, 0.0)
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, 1), axis=1), 1)
    end_tp = np.where(is_end, cum_tp, 0.0)
    prev_end_tp = np.zeros_like(end_tp)
    prev_end_tp[:, 1:] = np.maximum.accumulate(end_tp, axis=1)[:, :-1]
    new_level = is_end & (cum_tp > prev_end_tp)
    n_levels = new_level.sum(1)
    total = np.where(new_level, envelope, 0.0).sum(1)
    return np.divide(total, n_levels, out=np.zeros_like(total), where=n_levels > 0)


def eval_highlight(submission: list[dict], ground_truth: list[dict]) -> dict[str, dict]:
    """HL-mAP and HL-Hit1 at the Fair / Good / VeryGood saliency levels."""
    gt_by_qid = dict(zip((d["qid"] for d in ground_truth), gt_saliency(ground_truth), strict=True))
    gts = [gt_by_qid[d["qid"]] for d in submission]
    preds = [np.asarray(d["pred_saliency_scores"], dtype=np.float64) for d in submission]
    n_clips = np.array([len(g) for g in gts])
    width = max(int(n_clips.max(initial=0)), 1)
    Q = len(gts)
    gt_arr = np.zeros((Q, width, 3))
    pred_arr = np.zeros((Q, width))  # shorter predictions are padded with zeros (official)
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        gt_arr[i, : len(g)] = g
        n = min(len(p), len(g))
        pred_arr[i, :n] = p[:n]
    valid = np.arange(width)[None, :] < n_clips[:, None]
    top = np.array([int(np.argmax(p)) for p in preds])
    top_in_video = top < n_clips
    top_clamped = np.minimum(top, width - 1)

    results = {}
    for name, level in SALIENCY_LEVELS.items():
        binary = (gt_arr >= level).astype(np.float64)  # (Q, L, 3)
        hit = binary[np.arange(Q), top_clamped].max(1) * top_in_video
        rows = binary.transpose(0, 2, 1).reshape(Q * 3, width)
        ap = saliency_ap(np.repeat(pred_arr, 3, axis=0), rows, np.repeat(valid, 3, axis=0))
        results[f"HL-min-{name}"] = {
            "HL-mAP": _pct(float(np.mean(ap))),
            "HL-Hit1": _pct(float(np.mean(hit))),
        }
    return results


def check_qids(submission: list[dict], ground_truth: list[dict]) -> None:
    """The official script requires the same qid set in both files."""
    pred, gt = [d["qid"] for d in submission], [d["qid"] for d in ground_truth]
    if len(set(pred)) != len(pred):
        raise ValueError("the submission lists some qids more than once")
    missing, extra = set(gt) - set(pred), set(pred) - set(gt)
    if missing or extra:
        raise ValueError(
            "qids in the submission and the ground truth must match: "
            f"{len(missing)} GT qids have no prediction (e.g. {sorted(missing)[:5]}), "
            f"{len(extra)} predicted qids are not in the GT (e.g. {sorted(extra)[:5]})"
        )


def _finite_numbers(values: Any) -> bool:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(arr).all())


def check_submission(submission: list[dict], ground_truth: list[dict]) -> list[str]:
    """Refuse submissions the official script would score wrongly, silently.

    Errors (``ValueError`` naming the row and qid): a ground-truth file passed as the submission,
    a row without ``qid`` or without a prediction key that other rows have, NaN / Inf scores or
    window bounds, a window with start > end (the official IoU rewards it). Returned warnings:
    windows outside [0, duration], which the official script scores as submitted (so do we).
    """
    keys = ("pred_relevant_windows", "pred_saliency_scores")
    if submission and not any(k in row for row in submission for k in keys):
        looks_gt = any(k in submission[0] for k in ("relevant_windows", "saliency_scores"))
        raise ValueError(
            "the submission has no pred_relevant_windows / pred_saliency_scores in any row"
            + (
                ": it looks like a ground-truth file (rows have relevant_windows / "
                "saliency_scores); pass it as the ground truth, and predictions as the submission"
                if looks_gt
                else ""
            )
        )
    present = [k for k in keys if any(k in row for row in submission)]
    duration = {d.get("qid"): d.get("duration") for d in ground_truth}
    outside = 0
    for i, row in enumerate(submission, start=1):
        where = f"submission row {i} (qid {row.get('qid')})"
        lacking = [k for k in ("qid", *present) if k not in row]
        if lacking:
            raise ValueError(f"{where} lacks {lacking} (other rows have them)")
        if "pred_saliency_scores" in row and not _finite_numbers(row["pred_saliency_scores"]):
            raise ValueError(f"{where}: pred_saliency_scores must be finite numbers (NaN / Inf)")
        for window in row.get("pred_relevant_windows", []):
            if len(window) < 3 or not _finite_numbers(window[:3]):
                raise ValueError(
                    f"{where}: window {window} must be [start, end, score] of finite numbers"
                )
            start, end = float(window[0]), float(window[1])
            if start > end:
                raise ValueError(f"{where}: window {window} has start > end")
            length = duration.get(row["qid"])
            if start < 0 or (length is not None and end > float(length)):
                outside += 1
    warnings = []
    if outside:
        warnings.append(
            f"{outside} predicted windows extend outside [0, duration]: scored as submitted, as "
            "the official script does (IoU with the window as given, not clipped)"
        )
    return warnings


def eval_submission(
    submission: list[dict],
    ground_truth: list[dict],
    match_number: bool = True,
    check: bool = True,
) -> OrderedDict[str, Any]:
    """All metrics in the official layout: ``{"brief": {...}, "HL-min-Fair": ..., "full": ...}``.

    The submission is checked first (``check_submission``; its warnings are logged) unless
    ``check=False`` (the caller checked it).
    """
    if check:
        for warning in check_submission(submission, ground_truth):
            log.warning(warning)
    if match_number:
        check_qids(submission, ground_truth)
    else:
        shared = {d["qid"] for d in submission} & {d["qid"] for d in ground_truth}
        submission = [d for d in submission if d["qid"] in shared]
        ground_truth = [d for d in ground_truth if d["qid"] in shared]
    if not submission:
        raise ValueError("empty submission: nothing to evaluate")
    ground_truth = copy.copy(ground_truth)
    metrics: dict[str, Any] = {}
    brief: OrderedDict[str, float] = OrderedDict()
    if "pred_relevant_windows" in submission[0]:
        mr = eval_moment_retrieval(submission, ground_truth)
        metrics.update(mr)
        pairs = [(k, mr[a][b][c]) for k, (a, b, c) in BRIEF_MR.items()]
        brief.update(sorted(pairs, key=lambda kv: kv[0]))
    if "pred_saliency_scores" in submission[0]:
        hl = eval_highlight(submission, ground_truth)
        metrics.update(hl)
        for name, values in hl.items():
            for key, value in values.items():
                brief[f"{name}-{key.split('-')[1]}"] = value
    out: OrderedDict[str, Any] = OrderedDict(brief=brief)
    out.update(sorted(metrics.items(), key=lambda kv: kv[0]))
    return out
