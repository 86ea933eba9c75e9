"""QD-DETR's training losses (``SetCriterion``): span L1 + gIoU and fg / bg classification on
Hungarian-matched queries (for every decoder layer), and the saliency losses (margin ranking,
rank-contrastive, negative pair) on the encoder's clip scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.qvhighlights.matcher import FOREGROUND, HungarianMatcher
from tasks.qvhighlights.spans import generalized_temporal_iou, span_cxw_to_xx

BACKGROUND = 1


def _matched(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


class QDDETRLoss(nn.Module):
    """Weighted sum of the QD-DETR losses; ``forward`` returns each term and ``loss``."""

    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        span_weight: float = 10.0,
        giou_weight: float = 1.0,
        label_weight: float = 4.0,
        saliency_weight: float = 1.0,
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        rank_tau: float = 0.5,
        rank_levels: int = 12,
    ) -> None:
        super().__init__()
        self.matcher = matcher or HungarianMatcher()
        self.weights = {
            "loss_span": span_weight,
            "loss_giou": giou_weight,
            "loss_label": label_weight,
            "loss_saliency": saliency_weight,
        }
        self.saliency_margin, self.rank_tau, self.rank_levels = (
            saliency_margin,
            rank_tau,
            rank_levels,
        )
        class_weight = torch.ones(2)
        class_weight[BACKGROUND] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def span_losses(self, out: dict, tgt_spans: list[Tensor], indices) -> dict[str, Tensor]:
        idx = _matched(indices)
        src = out["pred_spans"][idx]
        tgt = torch.cat([t[j] for t, (_, j) in zip(tgt_spans, indices, strict=True)])
        giou = generalized_temporal_iou(span_cxw_to_xx(src), span_cxw_to_xx(tgt))
        return {"loss_span": F.l1_loss(src, tgt), "loss_giou": (1 - torch.diag(giou)).mean()}

    def label_loss(self, out: dict, indices) -> dict[str, Tensor]:
        logits = out["pred_logits"]
        idx = _matched(indices)
        target = torch.full(logits.shape[:2], BACKGROUND, dtype=torch.long, device=logits.device)
        target[idx] = FOREGROUND
        loss = F.cross_entropy(logits.transpose(1, 2), target, self.class_weight, reduction="none")
        matched = logits[idx]
        acc = (
            (matched.argmax(-1) == FOREGROUND).float().mean()
            if len(matched)
            else logits.new_ones(())
        )
        return {"loss_label": loss.mean(), "class_error": 100 * (1 - acc)}

    def saliency_loss(self, out: dict, batch: dict) -> Tensor:
        """Margin ranking (pos/neg clip pairs) + rank-contrastive over saliency levels
        + the negative-pair term pushing clip scores of mismatched text towards 0."""
        mask = out["video_mask"].float()
        scores, scores_neg = out["saliency_scores"], out["saliency_scores_neg"]
        loss_neg_pair = (-torch.log(1.0 - torch.sigmoid(scores_neg)) * mask).sum(1).mean()

        labels = batch["saliency_all_labels"]
        both = torch.cat([scores, scores_neg], dim=1)
        both_labels = torch.cat([labels, torch.zeros_like(labels)], dim=1)
        both_mask = mask.repeat(1, 2)
        both = both_mask * both + (1.0 - both_mask) * -1e3
        rank = both.new_zeros(())
        for level in range(1, self.rank_levels):
            pos = both_labels >= level
            if pos.sum() == 0:
                continue
            has_pos = pos.sum(1) > 0
            logits = both / self.rank_tau
            logits = logits - logits.max(dim=1, keepdim=True)[0]
            log_prob = logits - torch.log(torch.exp(logits).sum(1, keepdim=True) + 1e-6)
            mean_pos = (pos * log_prob * both_mask).sum(1) / (pos.sum(1) + 1e-6)
            rank = rank + (-mean_pos * has_pos).mean()
        rank = rank / self.rank_levels

        rows = torch.arange(len(scores), device=scores.device)[:, None]
        pos_scores = scores[rows, batch["saliency_pos_labels"]]
        neg_scores = scores[rows, batch["saliency_neg_labels"]]
        n_pairs = pos_scores.shape[1]
        margin = torch.clamp(self.saliency_margin + neg_scores - pos_scores, min=0).sum()
        margin = margin / (len(pos_scores) * n_pairs) * 2
        return margin + rank + loss_neg_pair

    def forward(self, out: dict, batch: dict) -> dict[str, Tensor]:
        tgt = batch["span_labels"]
        losses: dict[str, Tensor] = {}
        indices = self.matcher(out["pred_logits"], out["pred_spans"], tgt)
        losses.update(self.span_losses(out, tgt, indices))
        losses.update(self.label_loss(out, indices))
        losses["loss_saliency"] = self.saliency_loss(out, batch)
        total = sum(self.weights[k] * losses[k] for k in self.weights)
        for i, aux in enumerate(out.get("aux_outputs", [])):
            aux_indices = self.matcher(aux["pred_logits"], aux["pred_spans"], tgt)
            terms = {**self.span_losses(aux, tgt, aux_indices), **self.label_loss(aux, aux_indices)}
            for k, v in terms.items():
                losses[f"{k}_{i}"] = v
                if k in self.weights:
                    total = total + self.weights[k] * v
        losses["loss"] = total
        return losses
