"""The AVE losses of the official code.

* MA-AVT (enyac-group/MA-AVT ``models/all_nets.py``, ``MA_AVT.calc_*``): foreground
  cross-entropy over the non-background segments, background BCE on the background class token,
  and the blockwise audio-visual contrastive loss (InfoNCE on L2-normalised projections of the
  shared tokens, temperature 0.07, symmetric, background segments left out), averaged over the
  blocks. ``total = fg + bg + contrastive`` (no weights).
* LAVISH / MBT through MA-AVT's ``train_baseline_vit.py``: cross-entropy on the segment logits;
  LAVISH's own AVE script (GenjiB/LAVISH ``AVE/main_trans.py``): ``BCELoss(softmax(logits),
  one-hot)``.

Labels are AVE's ``labels.h5`` rows: (B, T, C) one-hot per segment, background = column 28.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

TEMPERATURE = 0.07


def segment_targets(labels: Tensor) -> Tensor:
    """(B, T, C) one-hot labels -> (B*T,) class indices (the official ``label.view(-1)``)."""
    return labels.argmax(dim=-1).reshape(-1)


def gather_with_local_grad(x: Tensor) -> Tensor:
    """All ranks' rows (own rows keep their gradient), as the official ``dist.all_gather`` with
    ``gather[rank] = local``; the input itself without a process group of several ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def foreground_loss(fg_logits: Tensor, target: Tensor, is_bg: Tensor | None = None) -> Tensor:
    """Cross-entropy of the foreground head; background segments are left out when ``is_bg``
    is given (``calc_fg_loss``). A batch without a foreground segment gives 0 (the official
    code would return NaN)."""
    if is_bg is not None:
        keep = ~is_bg
        fg_logits, target = fg_logits[keep], target[keep]
    if target.numel() == 0:
        return fg_logits.sum() * 0.0
    return F.cross_entropy(fg_logits, target)


def background_loss(bg_logits: Tensor, is_bg: Tensor) -> Tensor:
    """BCE-with-logits of the background head against 'segment is background' (``calc_bg_loss``)."""
    return F.binary_cross_entropy_with_logits(bg_logits, is_bg.float())


def contrastive_loss(
    image_feat: Tensor,
    audio_feat: Tensor,
    is_bg: Tensor | None = None,
    temperature: float = TEMPERATURE,
) -> Tensor:
    """Symmetric InfoNCE between L2-normalised visual and audio features (``calc_cnt_loss``).

    Args:
        image_feat, audio_feat: (N, E), already normalised; gathered over all ranks here.
        is_bg: (N,) bool; background segments are dropped before the loss.
        temperature: the fixed 0.07 of the code (its ``logit_scale`` parameter is never used).
    """
    image_feat = gather_with_local_grad(image_feat)
    audio_feat = gather_with_local_grad(audio_feat)
    if is_bg is not None:
        keep = gather_with_local_grad(is_bg.to(torch.uint8)) == 0
        image_feat, audio_feat = image_feat[keep], audio_feat[keep]
    if image_feat.shape[0] == 0:  # no foreground segment in the (global) batch
        return image_feat.sum() * 0.0
    target = torch.arange(image_feat.shape[0], device=image_feat.device)
    pred_img = (1.0 / temperature) * (image_feat @ audio_feat.T)
    return (F.cross_entropy(pred_img, target) + F.cross_entropy(pred_img.T, target)) / 2


def lavish_bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """LAVISH's AVE loss: ``nn.BCELoss()(softmax(logits), one-hot)`` over every segment."""
    probs = F.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    return F.binary_cross_entropy(probs, labels.reshape(-1, labels.shape[-1]).to(probs.dtype))


def segment_ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``F.cross_entropy(outputs, target)`` of ``train_baseline_vit.py`` per segment."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), segment_targets(labels))
