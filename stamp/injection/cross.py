"""STAMP in an injected cross-attention (a decoder attending to its encoder's tokens).

The mask is built as in the paper's QD-DETR layers (``stamp.layers.StampCrossAttentionLayer``):
M = F(X_q) from the query-side tokens, one column per key position (the MLP generator's
``n_max`` is the longest key sequence, e.g. the encoder's), and the low-rank generator
M = c + f(X_q) g(X_k)ᵀ/√r also reads the key-side tokens X_k (the encoder output the module
projects its keys from). The keys of a cross-attention do not grow while a decoder generates
(its KV cache holds the encoder's keys once), so cached decoding needs nothing stored: each call
reads the query tokens of that step and, for the low-rank generator, the key tokens the model
passes again at every step.
"""

from __future__ import annotations

from torch import Tensor

from stamp.injection.adapter import InjectedStamp


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
    ) -> None:
        """Called before the attention module runs: the query tokens X_q and the key tokens X_k
        (the cache and past length of the decoder do not concern a cross-attention's keys)."""
        self._transient["hidden"] = hidden
        self._transient["context"] = context

    def mask_for(self, hidden: Tensor, keys: Tensor) -> Tensor:
        """M for the queries ``hidden`` (B, Nq, D) over the keys ``keys`` (B, Nk, d) of one head
        (Nk: the key tokens, fresh or read back from the KV cache)."""
        context = self._transient.pop("context", None)
        if not self.lowrank:  # one column per key position: the query tokens suffice
            return self.generator(hidden, n_keys=keys.shape[1])
        if context is None:
            raise RuntimeError(
                "stamp.inject (mask.generator=lowrank, cross-attention): the module was called "
                "without its key-side tokens (key_value_states); the low-rank mask reads them"
            )
        return self.generator(hidden, n_keys=keys.shape[1], context=context)
