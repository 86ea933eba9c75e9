"""Does a STAMP layer do anything? Per-layer statistics of the soft mask M and of the attention.

For each attention module that receives a mask (a "STAMP layer"):

* ``mean_abs``          mean |M| over valid (query, key) entries;
* ``token_dependence``  std of M across the valid query rows (per sample and key column,
                        averaged) divided by ``mean_abs``: 0 when every token gets the same mask
                        row (a position-only bias, i.e. global STAMP in disguise);
* ``neg_share``         share of negative entries (under ``mul`` they flip a logit's sign);
* ``entropy``           attention entropy (nats) with M, averaged over heads and valid rows;
* ``entropy_unmasked``  the same logits without M (bias and padding kept);
* ``grad_norm_first``   L2 norm of the gradient reaching the generator's first layer (set from
                        outside, at the last training step; see ``generator_grad_norms``).

``MaskStatistics`` records these over a few forward passes (routing the recorded modules through
the eager path, as ``record_attention`` does); pure PyTorch, used by the Lightning callback
``tasks.common.runtime.mask_stats.MaskDiagnostics`` and by ``scripts/plot_mask_stats.py``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from stamp.attention import RecordsAttention
from stamp.mask import MaskGenerator

STAT_NAMES = (
    "mean_abs",
    "token_dependence",
    "neg_share",
    "entropy",
    "entropy_unmasked",
    "grad_norm_first",
)


def _as_bqk(mask: Tensor) -> Tensor:
    """(B, Nq, Nk) or per-head (B, H, Nq, Nk) -> (B', Nq, Nk), heads folded into the batch."""
    return mask.flatten(0, 1) if mask.dim() == 4 else mask


def _valid(mask: Tensor, query_valid: Tensor | None, key_valid: Tensor | None) -> Tensor:
    """(B, Nq, Nk) bool: entries whose query and key are real tokens."""
    B, nq, nk = mask.shape
    q = (
        torch.ones(B, nq, dtype=torch.bool, device=mask.device)
        if query_valid is None
        else query_valid
    )
    k = torch.ones(B, nk, dtype=torch.bool, device=mask.device) if key_valid is None else key_valid
    return q[:, :, None] & k[:, None, :]


def token_dependence(
    mask: Tensor, query_valid: Tensor | None = None, key_valid: Tensor | None = None
) -> float:
    """std of M across valid query rows (per sample and key column), averaged, / mean |M|."""
    m = _as_bqk(mask).double()
    qv, kv = _repeat_heads(mask, query_valid), _repeat_heads(mask, key_valid)
    valid = _valid(m, qv, kv)
    w = valid.double()
    rows = w.sum(1)  # (B, Nk) number of valid query rows per column
    mean = (m * w).sum(1) / rows.clamp(min=1)
    var = (((m - mean[:, None]) ** 2) * w).sum(1) / (rows - 1).clamp(min=1)
    cols = (rows > 1) & (kv if kv is not None else torch.ones_like(rows, dtype=torch.bool))
    std = var.sqrt()[cols].mean() if cols.any() else torch.zeros((), dtype=m.dtype)
    mean_abs = m.abs()[valid].mean()
    return float(std / mean_abs) if mean_abs > 0 else 0.0


def _repeat_heads(mask: Tensor, valid: Tensor | None) -> Tensor | None:
    if valid is None or mask.dim() == 3:
        return valid
    return valid.repeat_interleave(mask.shape[1], dim=0)


def attention_entropy(probs: Tensor, query_valid: Tensor | None = None) -> float:
    """Mean entropy (nats) of the attention rows of ``probs`` (B, H, Nq, Nk)."""
    p = probs.double()
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)  # (B, H, Nq)
    if query_valid is None:
        return float(ent.mean())
    w = query_valid[:, None, :].expand_as(ent)
    return float(ent[w].mean())


def layer_statistics(
    mask: Tensor,
    probs: Tensor,
    probs_unmasked: Tensor,
    key_padding_mask: Tensor | None = None,
    self_attention: bool = True,
) -> dict[str, float]:
    """The statistics of one layer for one batch (``grad_norm_first`` excepted)."""
    key_valid = None if key_padding_mask is None else ~key_padding_mask
    query_valid = key_valid if self_attention else None
    m = _as_bqk(mask).double()
    valid = _valid(m, _repeat_heads(mask, query_valid), _repeat_heads(mask, key_valid))
    values = m[valid]
    return {
        "mean_abs": float(values.abs().mean()),
        "token_dependence": token_dependence(mask, query_valid, key_valid),
        "neg_share": float((values < 0).double().mean()),
        "entropy": attention_entropy(probs, query_valid),
        "entropy_unmasked": attention_entropy(probs_unmasked, query_valid),
    }


def generator_grad_norms(model: nn.Module) -> dict[str, float]:
    """Gradient norm of each generator's first layer weight (name -> norm; 0 without a grad)."""
    norms = {}
    for name, module in model.named_modules():
        if isinstance(module, MaskGenerator):
            grad = module.first_linear.weight.grad
            norms[name] = 0.0 if grad is None else float(grad.detach().float().norm())
    return norms


class MaskStatistics:
    """Accumulates ``layer_statistics`` over forward passes while started.

        stats = MaskStatistics(model)
        stats.start(); model(batch); stats.stop()
        stats.summary(grad_norms)  # {layer name: {stat: value}}

    Each STAMP layer is attributed to the generator called most recently before it (its own
    generator for multi-layer STAMP, the shared one for global STAMP), for ``grad_norm_first``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[str, int] = defaultdict(int)
        self.generator_of: dict[str, str] = {}
        self._last_generator: str | None = None
        self._hooks: list = []
        self._attention = [
            (n, m)
            for n, m in model.named_modules()
            if isinstance(m, RecordsAttention)  # StampAttention, stamp.inject's InjectedStamp
        ]

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def start(self) -> None:
        if self.active:
            return
        for name, module in self.model.named_modules():
            if isinstance(module, MaskGenerator):
                self._hooks.append(module.register_forward_hook(self._generator_hook(name)))
        for name, module in self._attention:
            module.start_recording()
            self._hooks.append(module.register_forward_hook(self._attention_hook(name)))

    def stop(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for _, module in self._attention:
            module.stop_recording()

    def _generator_hook(self, name: str):
        def hook(module, args, output):
            self._last_generator = name

        return hook

    def _attention_hook(self, name: str):
        def hook(module: RecordsAttention, args, output):
            rec = module.recorded
            if rec is None or rec.get("mask") is None:
                return
            stats = layer_statistics(
                rec["mask"],
                rec["attn"],
                rec["attn_unmasked"],
                rec["key_padding_mask"],
                self_attention=not module.cross,
            )
            for key, value in stats.items():
                self.sums[name][key] += value
            self.counts[name] += 1
            if self._last_generator is not None:
                self.generator_of[name] = self._last_generator

        return hook

    def summary(self, grad_norms: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
        """Per-layer means over the recorded passes, in the model's module order."""
        out = {}
        for name, _ in self._attention:
            if not self.counts.get(name):
                continue
            row = {k: self.sums[name][k] / self.counts[name] for k in STAT_NAMES[:-1]}
            generator = self.generator_of.get(name)
            row["grad_norm_first"] = (grad_norms or {}).get(generator) if generator else None
            out[name] = row
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
