"""Temporal span utilities (QD-DETR / Moment-DETR ``span_utils``): spans as [start, end] ("xx")
or normalised [center, width] ("cxw"), IoU and generalised IoU."""

from __future__ import annotations

import torch
from torch import Tensor


def span_xx_to_cxw(xx: Tensor) -> Tensor:
    return torch.stack([(xx[..., 0] + xx[..., 1]) / 2, xx[..., 1] - xx[..., 0]], dim=-1)


def span_cxw_to_xx(cxw: Tensor) -> Tensor:
    return torch.stack([cxw[..., 0] - 0.5 * cxw[..., 1], cxw[..., 0] + 0.5 * cxw[..., 1]], dim=-1)


def temporal_iou(spans1: Tensor, spans2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of (N, 2) x (M, 2) spans in xx format -> (N, M) each."""
    areas1 = spans1[:, 1] - spans1[:, 0]
    areas2 = spans2[:, 1] - spans2[:, 0]
    left = torch.max(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.min(spans1[:, None, 1], spans2[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = areas1[:, None] + areas2[None, :] - inter
    return inter / union, union


def generalized_temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of (N, 2) x (M, 2) xx spans -> (N, M)."""
    iou, union = temporal_iou(spans1, spans2)
    left = torch.min(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.max(spans1[:, None, 1], spans2[None, :, 1])
    enclosing = (right - left).clamp(min=0)
    return iou - (enclosing - union) / enclosing
