"""Hungarian matching of predicted spans to GT spans (QD-DETR / DETR ``HungarianMatcher``)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from tasks.qvhighlights.spans import generalized_temporal_iou, span_cxw_to_xx

FOREGROUND = 0  # class index of "a moment" (1 is background / no object)


def matching_cost(
    pred_logits: Tensor,
    pred_spans: Tensor,
    tgt_spans: Tensor,
    cost_class: float,
    cost_span: float,
    cost_giou: float,
) -> Tensor:
    """Cost of every (prediction, target) pair: (N, 2) logits, (N, 2) / (M, 2) cxw spans -> (N, M).

    L1 distance of (center, width), minus generalised IoU, minus the foreground probability.
    """
    prob_fg = pred_logits.softmax(-1)[:, FOREGROUND]
    c_span = torch.cdist(pred_spans, tgt_spans, p=1)
    c_giou = -generalized_temporal_iou(span_cxw_to_xx(pred_spans), span_cxw_to_xx(tgt_spans))
    return cost_span * c_span + cost_giou * c_giou - cost_class * prob_fg[:, None]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to the queries of minimal total cost, per video."""

    def __init__(self, cost_class: float = 4.0, cost_span: float = 10.0, cost_giou: float = 1.0):
        super().__init__()
        if cost_class == 0 and cost_span == 0 and cost_giou == 0:
            raise ValueError("matcher costs cannot all be 0")
        self.cost_class, self.cost_span, self.cost_giou = cost_class, cost_span, cost_giou

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_spans: Tensor, tgt_spans: list[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        """(B, Q, 2) logits and spans, B x (M_b, 2) targets -> B x (query idx, target idx).

        The costs are computed in float32 whatever the model's precision: ``torch.cdist`` has
        no bf16 kernel (``trainer.precision=bf16-true``) and scipy reads float arrays."""
        B, Q = pred_spans.shape[:2]
        sizes = [len(t) for t in tgt_spans]
        cost = (
            matching_cost(
                pred_logits.flatten(0, 1).float(),
                pred_spans.flatten(0, 1).float(),
                torch.cat(tgt_spans).float(),
                self.cost_class,
                self.cost_span,
                self.cost_giou,
            )
            .view(B, Q, -1)
            .cpu()
        )
        out = []
        for b, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[b].numpy())
            out.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return out
