"""Model outputs -> rows of the official submission format (QD-DETR ``compute_mr_results`` and
``PostProcessorDETR(clip_ts, round_multiple)``)."""

from __future__ import annotations

import torch
from torch import Tensor

from tasks.qvhighlights.matcher import FOREGROUND
from tasks.qvhighlights.spans import span_cxw_to_xx


def postprocess_windows(
    windows: Tensor, clip_length: float = 2.0, min_ts: float = 0.0, max_ts: float = 150.0
) -> Tensor:
    """Clamp [start, end] seconds to [min_ts, max_ts], then round to multiples of a clip."""
    windows = windows.clamp(min=min_ts, max=max_ts)
    return torch.round(windows / clip_length) * clip_length


def submission_rows(
    meta: list[dict],
    pred_logits: Tensor,
    pred_spans: Tensor,
    saliency: Tensor,
    video_mask: Tensor,
    clip_length: float = 2.0,
    max_ts: float = 150.0,
) -> list[dict]:
    """One row per query: windows [start, end, score] sorted by score (4 decimals, post-processed)
    and one saliency score per valid clip (through float16, as the original)."""
    scores = pred_logits.float().softmax(-1)[..., FOREGROUND].cpu()
    spans = pred_spans.float().cpu()
    sal = saliency.half().cpu()
    lengths = video_mask.sum(1).long().cpu().tolist()
    rows = []
    for i, m in enumerate(meta):
        xx = span_cxw_to_xx(spans[i]) * m["duration"]
        ranked = torch.cat([xx, scores[i, :, None]], dim=1).tolist()
        ranked = sorted(ranked, key=lambda r: r[2], reverse=True)
        ranked = torch.tensor([[float(f"{e:.4f}") for e in r] for r in ranked])
        windows = postprocess_windows(ranked[:, :2], clip_length, 0.0, max_ts)
        windows = torch.cat([windows, ranked[:, 2:3]], dim=1).tolist()
        rows.append(
            {
                "qid": m["qid"],
                "query": m.get("query"),
                "vid": m.get("vid"),
                "pred_relevant_windows": [w[:2] + [float(f"{w[2]:.4f}")] for w in windows],
                "pred_saliency_scores": sal[i, : lengths[i]].tolist(),
            }
        )
    return rows
