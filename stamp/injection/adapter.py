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

from stamp.attention import SDPA_MUL_ERROR, RecordsAttention
from stamp.config import AttentionConfig, Backend, Fusion, MaskConfig, as_attention_config
from stamp.mask import LowRankMaskGenerator, MaskGenerator

# the model's own attention implementation -> the STAMP backend used when ``attention=None``
# (see docs/own_model.md): eager stays eager; SDPA stays SDPA where it can fuse M (``add``),
# otherwise the fused STAMP kernel (no B·H·N² tensor kept, like SDPA's memory-light kernels)
SOURCE_IMPLEMENTATIONS = ("eager", "sdpa")


def unsupported_source(source: str) -> str:
    return (
        f"stamp.inject: the model's attention implementation {source!r} is not supported; "
        "load the model with attn_implementation='eager' or 'sdpa' (or call "
        "model.set_attn_implementation('sdpa')) before injecting"
    )


def auto_backend(source: str, mask: MaskConfig) -> Backend:
    """The STAMP backend that honours the model's own implementation ``source``."""
    if source == "eager":
        return Backend.eager
    if source == "sdpa":
        return Backend.sdpa if mask.fusion is Fusion.add else Backend.fused
    raise ValueError(unsupported_source(source))


class InjectedStamp(RecordsAttention, nn.Module):
    """STAMP attached to an existing attention module (``<attention module>.stamp``).

    ``forward(q, k, v, hidden=X, attn_bias=...)`` computes M = F(X) and the masked attention
    ``softmax((QKᵀ/√d) ◇ M + bias) V`` on the chosen backend. q is (B, H, Nq, d); k, v are
    (B, H, Nk, d) with Nk >= Nq under a KV cache (the new tokens are the last Nq keys).
    ``attention`` None follows the model's implementation (``source``), see ``auto_backend``.
    ``context_dim``: the key tokens' width of a cross-attention (``InjectedCrossStamp``).
    ``shared`` (``mask=global``): the first targeted layer's ``InjectedStamp``, whose generator
    (held and saved there only) gives this layer its M: the first layer's M, or with
    ``mask.global_input=layer`` the shared generator applied to this layer's own input.
    """

    cross = False  # self-attention only

    def __init__(
        self,
        mask: MaskConfig,
        *,
        dim: int,
        num_heads: int,
        n_max: int | None,
        source: str,
        attention: AttentionConfig | None = None,
        context_dim: int | None = None,
        shared: InjectedStamp | None = None,
    ) -> None:
        super().__init__()
        self.mask_cfg = mask
        self.attention_cfg = attention
        self.source = source
        self.dim, self.num_heads = dim, num_heads
        self.__dict__["owner"] = shared  # not a sub-module: its generator is saved there only
        self.generator = None
        if shared is None:
            self.generator = MaskGenerator.from_config(
                mask, dim, n_max, num_heads=num_heads, context_dim=context_dim
            )
        else:
            shared.keeps_mask = True  # its M is handed on to this layer
        self.keeps_mask = False
        self.n_max = self.mask_generator.n_max
        self.lowrank = isinstance(self.mask_generator, LowRankMaskGenerator)
        self.backend = attention.backend if attention is not None else auto_backend(source, mask)
        if self.backend is Backend.sdpa and mask.fusion is Fusion.mul:
            raise ValueError(SDPA_MUL_ERROR)
        self.init_core(mask.fusion, mask.fusion_order, attention or AttentionConfig(self.backend))
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

    @property
    def mask_generator(self) -> MaskGenerator:
        """This layer's generator, or the shared one of ``mask=global``."""
        return self.generator if self.owner is None else self.owner.generator

    # ----------------------------------------------------------------------------- the mask
    def capture(self, hidden: Tensor, *, cache: object | None = None, n_past: int = 0) -> None:
        """Called before the attention module runs: X and, under a KV cache, the past length."""
        self._transient["hidden"] = hidden
        self._transient["cache"] = cache
        self._transient["n_past"] = n_past

    def mask_for(self, hidden: Tensor, keys: Tensor) -> Tensor:
        """M for the queries ``hidden`` (B, Nq, D) over the keys ``keys`` (B, Nk, d) of one head;
        under a KV cache the first ``n_past`` keys are past tokens, then come these tokens."""
        nq, n_keys = hidden.shape[1], keys.shape[1]
        n_past = self._transient.get("n_past", 0)
        if n_keys < n_past + nq:
            raise NotImplementedError(
                f"stamp.inject: the KV cache returned {n_keys} keys for {n_past} past + {nq} new "
                "tokens: a sliding-window (or otherwise truncated) cache is not supported, the "
                "mask needs every past key (use a DynamicCache / StaticCache)"
            )
        if not self.lowrank:
            # MLP: the row of a query depends on that token only and its columns are absolute
            # key positions, so cached decoding just asks for n_keys columns
            return self.mask_generator(hidden, n_keys=n_keys)
        # low-rank: M[i, j] = c + f(x_i).g(x_j) needs the key factors of past tokens. The first
        # call of a cache keeps its tokens; later calls turn them into factors once and append.
        # The keys they belong to are kept too: they tell which stored row each batch row
        # continues after beam search reorders / selects / repeats the cache's rows
        cache = self._transient.get("cache")
        if n_past == 0 and n_keys == nq:
            if cache is not None:
                self._transient["past"] = ("hidden", hidden, keys[:, :nq].detach())
            return self.mask_generator(hidden, n_keys=n_keys)
        gen: LowRankMaskGenerator = self.mask_generator  # type: ignore[assignment]
        g = gen.key_factor(hidden)
        if n_past > 0:
            g = torch.cat([self._past_factors(keys[:, :n_past]), g], dim=2)
        if cache is not None:
            self._transient["past"] = ("factors", g, keys[:, : n_past + nq].detach())
        if g.shape[2] < n_keys:  # a static cache's empty slots (masked by the model anyway)
            g = F.pad(g, (0, 0, 0, n_keys - g.shape[2]))
        return gen.combine(gen.query_factor(hidden), g[:, :, :n_keys])

    def _past_factors(self, past_keys: Tensor) -> Tensor:
        """Key factors (B, H', n_past, r) of the past tokens whose keys are ``past_keys``."""
        kind, stored, seen = self._transient.get("past") or (None, None, None)
        n_past = past_keys.shape[1]
        if stored is None or seen.shape[1] < n_past:
            raise RuntimeError(
                "stamp.inject (mask.generator=lowrank): this call attends to "
                f"{n_past} cached keys whose tokens were not seen here; cached decoding must "
                "start from an empty cache in this process"
            )
        rows = source_rows(past_keys, seen[:, :n_past])
        if rows is not None:  # beam search moved rows around: follow them
            stored = stored.index_select(0, rows)
        if kind == "hidden":
            return self.mask_generator.key_factor(stored[:, :n_past])
        return stored[:, :, :n_past]

    # ------------------------------------------------------------------------- the attention
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        hidden: Tensor | None = None,
        attn_bias: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        return_attn: bool = False,
        extra_keys: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """``extra_keys``: the last keys come from no token (``nn.MultiheadAttention``'s
        ``bias_k`` / zero attention): M covers the others, these keep the identity."""
        if hidden is None:
            hidden = self._transient.get("hidden")
        if hidden is None:
            raise RuntimeError(
                "stamp.inject: the STAMP attention was called without the tokens of its module "
                "(the forward pre-hook did not run); call the attention module itself"
            )
        self._transient["hidden"] = None  # do not keep activations alive between calls
        if self.owner is not None and not self.mask_cfg.global_per_layer:
            mask = self.owner._transient.get("mask")  # the first targeted layer's M
            if mask is None:
                raise RuntimeError(
                    "stamp.inject (mask=global): this layer runs before the first targeted "
                    "layer, whose M it shares; call the model, not one of its layers"
                )
        else:
            mask = self.mask_for(hidden, k[:, 0, : k.shape[2] - extra_keys])
        if self.keeps_mask:
            self._transient["mask"] = mask
        mask = mask.to(q.dtype)
        if extra_keys:  # keys from no token: M keeps the identity there
            mask = F.pad(mask, (0, extra_keys), value=1.0 if self.fusion is Fusion.mul else 0.0)
        return self.masked_attention(
            q,
            k,
            v,
            mask=mask,
            attn_bias=attn_bias,
            key_padding_mask=key_padding_mask,
            dropout_p=dropout_p,
            return_attn=return_attn,
        )


def source_rows(keys: Tensor, seen: Tensor) -> Tensor | None:
    """For each row of ``keys`` (B, N, d), the row of ``seen`` (B', N, d) holding the same
    keys: None when the rows are unchanged, an index (B,) after beam search reordered, selected
    or repeated them. Raises when a row has no match (the stored state is not this cache's)."""
    if keys.shape == seen.shape and torch.equal(keys, seen):
        return None
    # match a random projection of each row, then check the chosen rows exactly
    w = torch.randn(
        keys[0].numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    w = w.to(keys.device)
    proj_keys, proj_seen = keys.flatten(1).double() @ w, seen.flatten(1).double() @ w
    rows = (proj_keys[:, None] - proj_seen[None, :]).abs().argmin(dim=1)
    if not torch.equal(seen.index_select(0, rows), keys):
        raise RuntimeError(
            "stamp.inject (mask.generator=lowrank): the KV cache holds keys that the stored key "
            "factors do not belong to (a cache from another run, cropped past its start, or "
            "edited); cached decoding must start from an empty cache in this process"
        )
    return rows


def as_backend_config(attention: object | None) -> AttentionConfig | None:
    """None (follow the model), a backend name, a mapping or an ``AttentionConfig``."""
    if attention is None:
        return None
    if isinstance(attention, (str, Backend)):
        return AttentionConfig(backend=attention)
    return as_attention_config(attention)
