"""The STAMP part of one injected attention module: its generator, the backend it runs on, the
key-factor cache of a low-rank generator, and the recording protocol of ``StampAttention``.

The model-specific code (``stamp.injection.hf``, ``stamp.injection.timm_vit``) projects Q, K, V
with the original weights and hands them to ``InjectedStamp.forward`` together with the tokens
that entered the attention module (the generator's input X) and the model's own additive mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp.attention import (
    ATTENTION_BACKENDS,
    FLEX_CPU_BACKWARD_ERROR,
    SDPA_MUL_ERROR,
    _warn_once,
    eager_attention,
    resolve_backend,
)
from stamp.config import AttentionConfig, Backend, Fusion, MaskConfig, as_attention_config
from stamp.mask import LowRankMaskGenerator, MaskGenerator

# the model's own attention implementation -> the STAMP backend used when ``attention=None``
# (see docs/own_model.md): eager stays eager; SDPA stays SDPA where it can fuse M (``add``),
# otherwise the fused STAMP kernel (no B·H·N² tensor kept, like SDPA's memory-light kernels)
SOURCE_IMPLEMENTATIONS = ("eager", "sdpa")


def auto_backend(source: str, mask: MaskConfig) -> Backend:
    """The STAMP backend that honours the model's own implementation ``source``."""
    if source == "eager":
        return Backend.eager
    if source == "sdpa":
        return Backend.sdpa if mask.fusion is Fusion.add else Backend.fused
    raise ValueError(
        f"stamp.inject: the model's attention implementation {source!r} is not supported; "
        f"load the model with attn_implementation='eager' or 'sdpa' (one of "
        f"{', '.join(SOURCE_IMPLEMENTATIONS)}), or pass attention= explicitly"
    )


class InjectedStamp(nn.Module):
    """STAMP attached to an existing attention module (``<attention module>.stamp``).

    ``forward(q, k, v, hidden=X, attn_bias=...)`` computes M = F(X) and the masked attention
    ``softmax((QKᵀ/√d) ◇ M + bias) V`` on the chosen backend. q is (B, H, Nq, d); k, v are
    (B, H, Nk, d) with Nk >= Nq under a KV cache (the new tokens are the last Nq keys).
    ``attention`` None follows the model's implementation (``source``), see ``auto_backend``.
    """

    cross = False  # self-attention only (MaskStatistics reads this)

    def __init__(
        self,
        mask: MaskConfig,
        *,
        dim: int,
        num_heads: int,
        n_max: int | None,
        source: str,
        attention: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        self.mask_cfg = mask
        self.attention_cfg = attention
        self.source = source
        self.dim, self.num_heads = dim, num_heads
        self.generator = MaskGenerator.from_config(mask, dim, n_max, num_heads=num_heads)
        self.n_max = self.generator.n_max
        self.lowrank = isinstance(self.generator, LowRankMaskGenerator)
        self.backend = attention.backend if attention is not None else auto_backend(source, mask)
        if self.backend is Backend.sdpa and mask.fusion is Fusion.mul:
            raise ValueError(SDPA_MUL_ERROR)
        self._attend = (
            resolve_backend(attention)
            if attention is not None
            else ATTENTION_BACKENDS[self.backend]
        )
        # > 0 while a recorder listens (stamp.record_attention, stamp.diagnostics)
        self.record = 0
        self.recorded: dict[str, Tensor | None] | None = None
        # per-call state set by the model-specific hook: the module's input tokens, the past
        # length of a KV cache; and the key factors of a low-rank generator for cached decoding
        self._transient: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # deepcopy / pickle: drop the per-call state
        state = dict(self.__dict__)
        state["_transient"] = {}
        state["recorded"] = None
        return state

    def extra_repr(self) -> str:
        return f"backend={self.backend.value}, source={self.source}, fusion={self.mask_cfg.fusion}"

    def start_recording(self) -> None:
        self.record += 1

    def stop_recording(self) -> None:
        self.record = max(0, self.record - 1)
        if not self.record:
            self.recorded = None

    # ----------------------------------------------------------------------------- the mask
    def capture(self, hidden: Tensor, *, cache: object | None = None, n_past: int = 0) -> None:
        """Called before the attention module runs: X and, under a KV cache, the past length."""
        self._transient["hidden"] = hidden
        self._transient["cache"] = cache
        self._transient["n_past"] = n_past

    def mask_for(self, hidden: Tensor, n_keys: int) -> Tensor:
        """M for the queries ``hidden`` (B, Nq, D) over ``n_keys`` keys, the last Nq of which are
        these tokens (KV cache: the first ``n_keys - Nq`` are past tokens)."""
        nq = hidden.shape[1]
        if not self.lowrank:
            # MLP: the row of a query depends on that token only and its columns are absolute
            # key positions, so cached decoding just asks for n_keys columns
            return self.generator(hidden, n_keys=n_keys)
        # low-rank: M[i, j] = f(x_i) . g(x_j) needs the key factors of past tokens. The first
        # call of a cache keeps its tokens; later calls turn them into factors once and append
        cache = self._transient.get("cache")
        n_past = self._transient.get("n_past", 0)
        if n_past == 0 and n_keys == nq:
            if cache is not None:
                self._transient["past"] = ("hidden", hidden, cache)
            return self.generator(hidden, n_keys=n_keys)
        gen: LowRankMaskGenerator = self.generator  # type: ignore[assignment]
        past = None
        if n_past > 0:
            kind, stored, owner = self._transient.get("past") or (None, None, None)
            if stored is None or owner is not cache:
                raise RuntimeError(
                    "stamp.inject (mask.generator=lowrank): this call attends to "
                    f"{n_past} cached keys whose tokens were not seen here; cached decoding "
                    "must start from an empty cache (beam search reordering and cache "
                    "cropping are not supported with lowrank)"
                )
            past = gen.key_factor(stored) if kind == "hidden" else stored
            if past.shape[0] != hidden.shape[0] or past.shape[2] != n_past:
                raise RuntimeError(
                    "stamp.inject (mask.generator=lowrank): the stored key factors "
                    f"(batch {past.shape[0]}, {past.shape[2]} tokens) do not match the KV "
                    f"cache (batch {hidden.shape[0]}, {n_past} past tokens); beam search "
                    "reordering and cache cropping are not supported with lowrank"
                )
        g = gen.key_factor(hidden)
        if past is not None:
            g = torch.cat([past, g], dim=2)
        if cache is not None:
            self._transient["past"] = ("factors", g, cache)
        if g.shape[2] < n_keys:  # a static cache's empty slots (masked by the model anyway)
            g = F.pad(g, (0, 0, 0, n_keys - g.shape[2]))
        return gen.combine(gen.query_factor(hidden), g[:, :, :n_keys])

    # ------------------------------------------------------------------------- the attention
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        hidden: Tensor | None = None,
        attn_bias: Tensor | None = None,
        dropout_p: float = 0.0,
        return_attn: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if hidden is None:
            hidden = self._transient.get("hidden")
        if hidden is None:
            raise RuntimeError(
                "stamp.inject: the STAMP attention was called without the tokens of its module "
                "(the forward pre-hook did not run); call the attention module itself"
            )
        self._transient["hidden"] = None  # do not keep activations alive between calls
        mask = self.mask_for(hidden, k.shape[2]).to(q.dtype)
        attend = self._attend
        want_probs = bool(return_attn or self.record)
        if want_probs:
            attend = eager_attention
        elif self.backend is Backend.flex and q.device.type == "cpu":
            if torch.is_grad_enabled() and (q.requires_grad or mask.requires_grad):
                cfg = self.attention_cfg or AttentionConfig(backend=Backend.flex)
                if cfg.flex_cpu_training == "error":
                    raise RuntimeError(FLEX_CPU_BACKWARD_ERROR)
                _warn_once("flex-cpu", "flex attention has no CPU backward: eager for training")
                attend = eager_attention
        out, probs = attend(
            q,
            k,
            v,
            mask=mask,
            fusion=self.mask_cfg.fusion,
            fusion_order=self.mask_cfg.fusion_order,
            attn_bias=attn_bias,
            dropout_p=dropout_p,
            return_attn=want_probs,
        )
        if self.record:
            with torch.no_grad():
                _, unmasked = eager_attention(q, k, v, attn_bias=attn_bias, return_attn=True)
            self.recorded = {
                "attn": probs.detach(),
                "attn_unmasked": unmasked,
                "mask": mask.detach(),
                "key_padding_mask": None,
            }
        return out, probs


def as_backend_config(attention: object | None) -> AttentionConfig | None:
    """None (follow the model), a backend name, a mapping or an ``AttentionConfig``."""
    if attention is None:
        return None
    if isinstance(attention, (str, Backend)):
        return AttentionConfig(backend=attention)
    return as_attention_config(attention)
