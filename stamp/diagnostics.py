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

Where the mask puts its weight, for tasks that know which keys matter: a batch may carry
``key_relevance`` (category codes per key, ``KeyCategories`` says what they mean). Per category
and for the ``relevant`` / ``irrelevant`` groups of categories, each self-attention STAMP layer
then gets (``relevance_statistics``):

* ``M_<group>``           mean M over the valid query rows and the keys of the group;
* ``attn_<group>``        mean attention probability on those (query, key) entries, with M;
* ``attn_<group>_noM``    the same logits without M (bias and padding kept);
* ``share_<group>``       share of a query's attention on the group's keys (sums to 1 over
                          the categories), mean over heads and valid query rows;
* ``share_<group>_noM``   the same without M.

``MaskStatistics`` records these over a few forward passes (routing the recorded modules through
the eager path, as ``record_attention`` does); pure PyTorch, used by the Lightning callback
``tasks.common.runtime.mask_stats.MaskDiagnostics`` and by ``scripts/plot_mask_stats.py``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp.attention import RecordsAttention
from stamp.mask import MaskGenerator

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- key relevance
KEY_RELEVANCE = "key_relevance"  # the name of the per-key category codes in a batch
GROUPS = ("relevant", "irrelevant")
RELEVANCE_QUANTITIES = ("M", "attn", "attn_noM", "share", "share_noM")


@dataclass(frozen=True)
class KeyCategories:
    """What the codes of a batch's ``key_relevance`` mean: code i is category ``names[i]``.

    ``relevant`` / ``irrelevant`` name the categories of the two groups compared; a category
    in neither (a [CLS] token, padding) is reported on its own only.
    """

    names: tuple[str, ...]
    relevant: tuple[str, ...]
    irrelevant: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if len(set(names)) != len(names) or set(names) & set(GROUPS):
            raise ValueError(
                f"key categories must be distinct and not called {GROUPS}, got {names}"
            )
        for group in GROUPS:
            members = tuple(getattr(self, group))
            unknown = set(members) - set(names)
            if not members or unknown:
                raise ValueError(
                    f"KeyCategories.{group} must name categories of {names}, got {members}"
                )
        if set(self.relevant) & set(self.irrelevant):
            raise ValueError(
                f"a category cannot be relevant and irrelevant: "
                f"{sorted(set(self.relevant) & set(self.irrelevant))}"
            )

    def groups(self) -> dict[str, list[int]]:
        """Report name -> category codes: every category, then ``relevant``, ``irrelevant``."""
        out = {name: [i] for i, name in enumerate(self.names)}
        for group in GROUPS:
            out[group] = [self.names.index(n) for n in getattr(self, group)]
        return out


def relevance_key(quantity: str, group: str) -> str:
    """``M_relevant``, ``attn_relevant``, ``attn_relevant_noM``, ``share_decoy_noM``, ..."""
    base, _, suffix = quantity.partition("_")
    return f"{base}_{group}" + (f"_{suffix}" if suffix else "")


def align_key_relevance(codes: Tensor, batch: int, n_keys: int) -> Tensor | None:
    """A batch's codes (*lead, K) as the (batch, n_keys) labels of one layer's keys, or None
    where they do not describe that layer.

    The leading dimensions flatten to the layer's batch: a model that runs each segment of a
    video as its own sequence (AVE's ViT: B x T sequences) gets (B, T, K) codes. K is the
    layer's key count, or 1 when every key of a sequence has its sequence's category.
    """
    if codes.dim() < 2:
        raise ValueError(f"{KEY_RELEVANCE} must be (batch, ..., keys), got {tuple(codes.shape)}")
    if math.prod(codes.shape[:-1]) != batch or codes.shape[-1] not in (n_keys, 1):
        return None
    return codes.reshape(batch, codes.shape[-1]).expand(batch, n_keys)


def relevance_sums(
    mask: Tensor,
    probs: Tensor,
    probs_unmasked: Tensor,
    codes: Tensor,
    num_categories: int,
    query_valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-category sums and counts of one layer call (float64), to be pooled over batches.

    Args:
        mask: M (B, Nq, Nk), or (B, H, Nq, Nk) per head.
        probs, probs_unmasked: attention with and without M (B, H, Nq, Nk).
        codes: (B, Nk) long category code of every key (``align_key_relevance``).
        num_categories: the number of categories (codes lie in [0, num_categories)).
        query_valid: (B, Nq) bool, the queries that count (None: all).

    Returns:
        ``M``, ``attn``, ``attn_noM``, ``share``, ``share_noM``: sums per category (C,);
        ``M_count``, ``attn_count``: the number of (query, key) entries summed, (C,);
        ``rows``: the number of (head, query) rows summed, (1,).
    """
    codes = codes.to(probs.device).long()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_categories):
        raise ValueError(
            f"{KEY_RELEVANCE} codes must lie in [0, {num_categories}) (the categories), got "
            f"[{int(codes.min())}, {int(codes.max())}]"
        )
    B, H, nq, _ = probs.shape
    q = (
        torch.ones(B, nq, dtype=torch.float64, device=probs.device)
        if query_valid is None
        else query_valid.to(probs.device, torch.float64)
    )
    onehot = F.one_hot(codes, num_categories).double()  # (B, Nk, C)
    m = mask.double() if mask.dim() == 4 else mask.double()[:, None]  # (B, Hm, Nq, Nk)
    keys_per_row = torch.einsum("bq,bkc->c", q, onehot)  # valid (query, key) pairs per head
    out = {
        "M": torch.einsum("bhqk,bq,bkc->c", m, q, onehot),
        "M_count": m.shape[1] * keys_per_row,
        "attn_count": H * keys_per_row,
        "rows": (H * q.sum()).reshape(1),
    }
    for suffix, p in (("", probs), ("_noM", probs_unmasked)):
        # one sum, two normalisers: per (query, key) entry (attn) and per query row (share)
        total = torch.einsum("bhqk,bq,bkc->c", p.double(), q, onehot)
        out[f"attn{suffix}"] = out[f"share{suffix}"] = total
    return out


def relevance_statistics(
    sums: dict[str, Tensor], categories: KeyCategories
) -> dict[str, float | None]:
    """Means from pooled ``relevance_sums``: ``<quantity>_<group>`` for every category and for
    the ``relevant`` / ``irrelevant`` groups (None where the group has no key)."""
    out: dict[str, float | None] = {}
    rows = float(sums["rows"].sum())
    for group, codes in categories.groups().items():
        idx = torch.tensor(codes, device=sums["M"].device)
        for quantity in RELEVANCE_QUANTITIES:
            total = float(sums[quantity][idx].sum())
            if quantity.startswith("share"):
                count = rows
            else:
                count = float(sums[f"{quantity.split('_')[0]}_count"][idx].sum())
            out[relevance_key(quantity, group)] = total / count if count > 0 else None
    return out


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

    With ``stats.set_key_relevance(batch.key_relevance, categories)`` before a forward, the
    self-attention layers also get the relevance statistics (``relevance_statistics``), pooled
    over every recorded (query, key) entry of the passes.

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
        self.categories: KeyCategories | None = None
        self._codes: Tensor | None = None
        self.relevance: dict[str, dict[str, Tensor]] = {}
        self._unlabelled: set[str] = set()
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

    def set_key_relevance(self, codes: Tensor | None, categories: KeyCategories | None) -> None:
        """The key categories of the next forward pass (``key_relevance`` of its batch), or None.

        They label the keys of the self-attention layers (the model's token sequence, as
        ``align_key_relevance`` matches them); cross-attention layers, whose keys are another
        stream, and layers the codes do not fit are left out of the relevance statistics.
        """
        if (codes is None) != (categories is None):
            raise ValueError(
                f"a batch's {KEY_RELEVANCE} needs its KeyCategories and the reverse "
                f"(got codes={codes is not None}, categories={categories is not None})"
            )
        self._codes, self.categories = codes, categories

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
            if self._codes is not None and not module.cross:
                self._add_relevance(name, rec)
            if self._last_generator is not None:
                self.generator_of[name] = self._last_generator

        return hook

    def _add_relevance(self, name: str, rec: dict) -> None:
        attn = rec["attn"]
        codes = align_key_relevance(self._codes, attn.shape[0], attn.shape[-1])
        if codes is None:
            if name not in self._unlabelled:
                self._unlabelled.add(name)
                log.warning(
                    "%s: %s %s does not fit its attention (%s): no relevance statistics",
                    name,
                    KEY_RELEVANCE,
                    tuple(self._codes.shape),
                    tuple(attn.shape),
                )
            return
        pad = rec["key_padding_mask"]
        sums = relevance_sums(
            rec["mask"],
            attn,
            rec["attn_unmasked"],
            codes,
            len(self.categories.names),
            None if pad is None else ~pad,  # self-attention: padded queries do not count
        )
        pooled = self.relevance.setdefault(name, {})
        for key, value in sums.items():
            pooled[key] = pooled[key] + value if key in pooled else value

    def summary(self, grad_norms: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
        """Per-layer means over the recorded passes, in the model's module order."""
        out = {}
        for name, _ in self._attention:
            if not self.counts.get(name):
                continue
            row = {k: self.sums[name][k] / self.counts[name] for k in STAT_NAMES[:-1]}
            generator = self.generator_of.get(name)
            row["grad_norm_first"] = (grad_norms or {}).get(generator) if generator else None
            if name in self.relevance and self.categories is not None:
                row.update(relevance_statistics(self.relevance[name], self.categories))
            out[name] = row
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.relevance.clear()
