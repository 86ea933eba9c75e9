"""STAMP in an injected cross-attention (a decoder attending to its encoder's tokens).

The mask is built as in the paper's QD-DETR layers (``stamp.layers.StampCrossAttentionLayer``):
M = F(X_q) from the query-side tokens, one column per key position (the MLP generator's
``n_max`` is the longest key sequence, e.g. the encoder's), and the low-rank generator
M = c + f(X_q) g(X_k)ᵀ/√r also reads the key-side tokens X_k (the encoder output the module
projects its keys from). The keys of a cross-attention do not grow while a decoder generates
(its KV cache holds the encoder's keys once), so cached decoding needs nothing stored: each call
reads the query tokens of that step and, for the low-rank generator, the key tokens the model
passes again at every step. Where the model reads the cross-attention's keys back from its
KV cache instead of projecting the encoder output again, the low-rank key factors g(X_k) are
read back too (``InjectedCrossStamp._key_factors``): as exact as the model's own cache.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from stamp.injection.adapter import InjectedStamp, source_rows
from stamp.mask import LowRankMaskGenerator


class InjectedCrossStamp(InjectedStamp):
    """``InjectedStamp`` of a cross-attention module: ``capture`` also takes the key-side
    tokens (``context``, B x Nk x D_ctx) and ``mask_for`` builds M (B, [H,] Nq, Nk) from them.

    Build it like ``InjectedStamp``, with ``context_dim`` the key tokens' width when it is not the
    query tokens' (the low-rank generator maps them with one Linear).
    """

    cross = True

    def capture(
        self,
        hidden: Tensor,
        *,
        context: Tensor | None = None,
        cache: object | None = None,
        n_past: int = 0,
        keys_cached: bool = False,
    ) -> None:
        """Called before the attention module runs: the query tokens X_q, the key tokens X_k,
        the model's KV cache and whether the model reads this call's keys back from it
        (``keys_cached``: the cache already holds them, as after a decoder's first step)."""
        self._transient.update(hidden=hidden, context=context, cache=cache)
        self._transient["keys_cached"] = keys_cached

    def mask_for(self, hidden: Tensor, keys: Tensor) -> Tensor:
        """M for the queries ``hidden`` (B, Nq, D) over the keys ``keys`` (B, Nk, d) of one head
        (Nk: the key tokens, fresh or read back from the KV cache)."""
        context = self._transient.pop("context", None)
        cache = self._transient.pop("cache", None)
        keys_cached = self._transient.pop("keys_cached", False)
        if not self.lowrank:  # one column per key position: the query tokens suffice
            return self.mask_generator(hidden, n_keys=keys.shape[1])
        if context is None:
            raise RuntimeError(
                "stamp.inject (mask.generator=lowrank, cross-attention): the module was called "
                "without its key-side tokens (key_value_states); the low-rank mask reads them"
            )
        if context.shape[1] < keys.shape[1]:
            raise ValueError(
                f"stamp.inject (mask.generator=lowrank, cross-attention): {keys.shape[1]} keys "
                f"but {context.shape[1]} key-side tokens; the keys must come from these tokens"
            )
        gen: LowRankMaskGenerator = self.mask_generator  # type: ignore[assignment]
        g = self._key_factors(context[:, : keys.shape[1]], keys, cache, keys_cached)
        return gen.combine(gen.query_factor(hidden), g)

    def _key_factors(
        self, context: Tensor, keys: Tensor, cache: object | None, keys_cached: bool
    ) -> Tensor:
        """g(X_k) (B, H', Nk, r). Where the model reads the keys back from its KV cache (it does
        not project the key tokens again), the factors kept from that cache's first call are
        read back too, their rows following the cached keys (beam search): a decoding step then
        costs the query side only. Kept only without gradient, for the cache they came from."""
        gen: LowRankMaskGenerator = self.mask_generator  # type: ignore[assignment]
        if torch.is_grad_enabled() or cache is None:
            self._transient.pop("key_factors", None)
            return gen.key_factor(context)
        kept = self._transient.get("key_factors")
        if keys_cached and kept is not None and kept[0]() is cache:
            rows = source_rows(keys, kept[1])
            if rows is None:
                return kept[2]
            g = kept[2].index_select(0, rows)
        else:
            g = gen.key_factor(context)
        self._transient["key_factors"] = (weakref.ref(cache), keys.detach().clone(), g)
        return g
