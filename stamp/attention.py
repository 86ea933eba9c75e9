"""Attention with a soft mask fused into the logits, under three interchangeable backends.

All backends share one signature, ``attend(q, k, v, spec: AttendSpec) -> (out, probs | None)``
with ``q`` (B, H, Nq, d), ``k``, ``v`` (B, H, Nk, d) and ``spec`` holding M, the fusion, the
bias, the key padding and the dropout. The order of operations is the paper's:

    logits = Q K^T / sqrt(d);  logits = logits ◇ M;  logits += attn_bias;  padded keys -> -inf

(``fusion_order="bias_first"``, the authors' rebuttal code: ``(logits + attn_bias) ◇ M``; the two
differ only for a finite bias under ``fusion=mul``.) Key padding comes *after* fusion: ``-inf * M``
would be NaN (M = 0) or +inf (M < 0).
``mask`` is (B, Nq, Nk), one M shared by all heads (paper), or (B, H, Nq, Nk) per head.
``attn_bias`` is any additive bias broadcastable to (B, H, Nq, Nk) (causal masks, SwinBERT's
sparse mask). ``key_padding_mask`` is (B, Nk) bool, True at padded keys.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp.config import AttendSpec, AttentionConfig, Backend, Fusion, FusionOrder
from stamp.fused import PLAIN, compiled_fused_attention, fuse_scores, fused_attention, fusion_input

log = logging.getLogger(__name__)

AttendFn = Callable[[Tensor, Tensor, Tensor, AttendSpec], tuple[Tensor, Tensor | None]]


def eager_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: AttendSpec = PLAIN
) -> tuple[Tensor, Tensor | None]:
    """Reference path: explicit logits, fusion, softmax. Can return the probabilities."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    pad = spec.key_padding_mask
    pad4 = None if pad is None else pad[:, None, None, :]
    logits, _ = fuse_scores(logits, spec.mask4d, spec.attn_bias, pad4, spec.mul, spec.bias_first)
    probs = logits.float().softmax(dim=-1).to(q.dtype)
    dropped = F.dropout(probs, spec.dropout_p) if spec.dropout_p > 0 else probs
    return dropped @ v, (probs if spec.return_attn else None)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: AttendSpec = PLAIN
) -> tuple[Tensor, Tensor | None]:
    """PyTorch SDPA. An additive M maps onto a float ``attn_mask``; a multiplicative one cannot."""
    if spec.return_attn:
        raise ValueError(
            "attention=sdpa cannot return attention probabilities; use attention=eager"
        )
    if spec.mask is not None and spec.mul:
        raise ValueError(SDPA_MUL_ERROR)
    attn_mask, bias = spec.mask4d, spec.attn_bias
    if bias is not None:
        attn_mask = bias if attn_mask is None else attn_mask + bias
    if spec.key_padding_mask is not None:
        pad = spec.key_padding_mask[:, None, None, :]
        if attn_mask is None:
            attn_mask = torch.zeros(pad.shape, dtype=q.dtype, device=q.device)
        attn_mask = attn_mask.masked_fill(pad, float("-inf"))
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=spec.dropout_p)
    return out, None


SDPA_MUL_ERROR = (
    "attention=sdpa cannot fuse a multiplicative mask (SDPA only adds a float attn_mask to the "
    "logits). Use attention=flex (fused, the mask enters through a score_mod) or "
    "attention=eager, or set mask.fusion=add."
)

# flex attention is compiled once per process; shapes are padded to a multiple of FLEX_PAD so
# that batches of slightly different lengths reuse the same compiled kernel.
FLEX_PAD = 16
_compiled_flex: Callable | None = None


def _flex_kernel() -> Callable:
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _pad_to(x: Tensor, dim: int, length: int, value: float = 0.0) -> Tensor:
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - dim - 1 if dim >= 0 else -dim - 1) + [0, extra]
    return F.pad(x, pad, value=value)


def flex_attention_backend(
    q: Tensor, k: Tensor, v: Tensor, spec: AttendSpec = PLAIN
) -> tuple[Tensor, Tensor | None]:
    """Fused attention: ``torch.nn.attention.flex_attention`` with a score_mod that applies
    ``score ◇ M[b, q, k]``, the bias and the key padding, so logits are never materialised.

    flex has no attention-probability dropout; ``dropout_p`` is ignored (the module warns once).
    """
    if spec.return_attn:
        raise ValueError(
            "attention=flex cannot return attention probabilities; use attention=eager"
        )
    B, H, nq, d = q.shape
    nk = k.shape[2]
    pq, pk = math.ceil(nq / FLEX_PAD) * FLEX_PAD, math.ceil(nk / FLEX_PAD) * FLEX_PAD
    q, k, v = _pad_to(q, 2, pq), _pad_to(k, 2, pk), _pad_to(v, 2, pk)
    pad = spec.key_padding_mask
    if pad is None:
        pad = torch.zeros(B, nk, dtype=torch.bool, device=q.device)
    pad = _pad_to(pad, 1, pk, value=True)
    mul, bias_first = spec.mul, spec.bias_first
    m = spec.mask4d
    if m is not None:
        m = _pad_to(_pad_to(m, 2, pq, 1.0 if mul else 0.0), 3, pk, 1.0 if mul else 0.0)
        m = fusion_input(m, q)  # a float32 M stays float32 (flex's scores are float32)
    bias = spec.attn_bias
    if bias is not None:
        while bias.dim() < 4:
            bias = bias.unsqueeze(0)
        bias = fusion_input(_pad_to(_pad_to(bias, 2, pq), 3, pk), q)
    m_per_batch = m is not None and m.shape[0] > 1
    m_per_head = m is not None and m.shape[1] > 1
    b_per_batch = bias is not None and bias.shape[0] > 1
    b_per_head = bias is not None and bias.shape[1] > 1

    def score_mod(score, b, h, q_idx, kv_idx):
        if bias is not None and bias_first:
            score = score + bias[b if b_per_batch else 0, h if b_per_head else 0, q_idx, kv_idx]
        if m is not None:
            mv = m[b if m_per_batch else 0, h if m_per_head else 0, q_idx, kv_idx]
            score = score * mv if mul else score + mv
        if bias is not None and not bias_first:
            score = score + bias[b if b_per_batch else 0, h if b_per_head else 0, q_idx, kv_idx]
        return torch.where(pad[b, kv_idx], -float("inf"), score)

    out = _flex_kernel()(q, k, v, score_mod=score_mod)
    return out[:, :, :nq], None


ATTENTION_BACKENDS: dict[Backend, AttendFn] = {
    Backend.eager: eager_attention,
    Backend.sdpa: sdpa_attention,
    Backend.flex: flex_attention_backend,
    Backend.fused: fused_attention,
    Backend.compiled_fused: compiled_fused_attention,
}

_compiled_eager: AttendFn | None = None


def resolve_backend(attention: AttentionConfig) -> AttendFn:
    """The one place a backend name becomes a function."""
    if attention.compile and attention.backend is Backend.eager:
        global _compiled_eager
        if _compiled_eager is None:
            _compiled_eager = torch.compile(eager_attention, dynamic=True)
        return _compiled_eager
    return ATTENTION_BACKENDS[attention.backend]


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


class RecordsAttention:
    """The masked-attention core of every STAMP attention module (``StampAttention``,
    ``stamp.inject``'s ``InjectedStamp``): ``masked_attention`` runs projection-free attention
    with M fused into the logits on the module's backend, and records it.

    While ``record`` > 0 (a count, so that several recorders can listen to the same forward:
    ``stamp.record_attention``, ``stamp.diagnostics``) the forward runs the eager path and leaves
    its probabilities and mask in ``recorded``. A subclass calls ``init_core`` in ``__init__``.
    """

    record: int = 0
    recorded: dict[str, Tensor | None] | None = None
    cross: bool = False  # a cross-attention (its queries are not its keys)

    def init_core(
        self, fusion: Fusion | str, fusion_order: FusionOrder | str, attention: AttentionConfig
    ) -> None:
        """Set the fusion, the fusion order and the backend ``masked_attention`` runs with."""
        self.fusion = Fusion(fusion)
        self.fusion_order = FusionOrder(fusion_order)
        self.attention = attention
        self._attend = resolve_backend(attention)
        self.record, self.recorded = 0, None

    def start_recording(self) -> None:
        self.record += 1

    def stop_recording(self) -> None:
        self.record = max(0, self.record - 1)
        if not self.record:
            self.recorded = None

    def masked_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        dropout_p: float = 0.0,
        return_attn: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``softmax((QKᵀ/√d) ◇ M + bias, padded keys -> -inf) V`` on the module's backend.

        The eager path runs instead when probabilities are wanted (``return_attn``, recording)
        and, with ``attention.flex_cpu_training=eager``, for a flex training step on CPU (torch
        has no CPU backward for flex).

        Args:
            q: queries (B, H, Nq, d), already projected.
            k, v: keys and values (B, H, Nk, d).
            mask: M (B, Nq, Nk), shared by the heads, or (B, H, Nq, Nk); None: no mask.
            key_padding_mask: (B, Nk) bool, True at padded keys.
            attn_bias: an additive bias broadcastable to (B, H, Nq, Nk).
            dropout_p: attention-probability dropout (0 outside training).
            return_attn: also return the probabilities (B, H, Nq, Nk).

        Returns:
            The output (B, H, Nq, d) and the probabilities (None unless asked or recording).
        """
        attend = self._attend
        want_probs = bool(return_attn or self.record)
        spec = AttendSpec(
            mask, self.fusion, self.fusion_order, key_padding_mask, attn_bias, dropout_p, want_probs
        )
        if want_probs:
            attend = eager_attention
        elif self.attention.backend is Backend.flex and q.device.type == "cpu":
            needs_grad = torch.is_grad_enabled() and (
                q.requires_grad or (mask is not None and mask.requires_grad)
            )
            if needs_grad:
                if self.attention.flex_cpu_training == "error":
                    raise RuntimeError(FLEX_CPU_BACKWARD_ERROR)
                _warn_once(
                    "flex-cpu",
                    "flex attention has no CPU backward: training steps use "
                    "the eager path (attention.flex_cpu_training=eager).",
                )
                attend = eager_attention
        out, probs = attend(q, k, v, spec)
        if self.record:
            unmasked = None
            if mask is not None:  # the same logits without M (diagnostics: entropy change)
                with torch.no_grad():
                    plain = replace(spec, mask=None, dropout_p=0.0)
                    _, unmasked = eager_attention(q, k, v, plain)
            self.recorded = {
                "attn": probs.detach(),
                "attn_unmasked": unmasked,
                "mask": None if mask is None else mask.detach(),
                "key_padding_mask": key_padding_mask,
            }
        return out, probs


class StampAttention(RecordsAttention, nn.Module):
    """Multi-head self- or cross-attention whose logits take a soft mask M before the softmax.

    Self-attention keeps timm's parameter names (``qkv``, ``proj``) so timm ViT weights load
    unchanged; cross-attention uses ``q`` and ``kv``. ``pos`` / ``context_pos`` are added to the
    query / key inputs only (DETR convention), never to the values.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        context_dim: int | None = None,
        cross: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fusion: Fusion | str = Fusion.mul,
        fusion_order: FusionOrder | str = FusionOrder.mask_first,
        attention: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.cross = cross or context_dim is not None
        self.init_core(fusion, fusion_order, attention or AttentionConfig())
        if self.cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if self.attention.backend is Backend.flex and attn_drop > 0:
            _warn_once(
                "flex-dropout",
                f"attention=flex has no attention-probability dropout; attn_drop={attn_drop} "
                "is not applied by flex (eager/sdpa apply it).",
            )

    def _heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def project_qkv(
        self, x: Tensor, context: Tensor | None, pos: Tensor | None, context_pos: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        D = self.dim
        if self.cross:
            ctx = x if context is None else context
            q = self.q(x if pos is None else x + pos)
            w, b = self.kv.weight, self.kv.bias
            k_in = ctx if context_pos is None else ctx + context_pos
            k = F.linear(k_in, w[:D], None if b is None else b[:D])
            v = F.linear(ctx, w[D:], None if b is None else b[D:])
        elif pos is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            qk = F.linear(x + pos, w[: 2 * D], None if b is None else b[: 2 * D])
            q, k = qk.chunk(2, dim=-1)
            v = F.linear(x, w[2 * D :], None if b is None else b[2 * D :])
        return self._heads(q), self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        return_attn: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = self.project_qkv(x, context, pos, context_pos)
        out, probs = self.masked_attention(
            q,
            k,
            v,
            mask=mask,
            key_padding_mask=key_padding_mask,
            attn_bias=attn_bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            return_attn=return_attn,
        )
        B, _, N, _ = out.shape
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, self.dim)))
        return (out, probs) if return_attn else out


FLEX_CPU_BACKWARD_ERROR = (
    f"attention=flex: torch {torch.__version__} implements only the forward of flex attention on "
    "CPU, so it cannot train here. Train with attention=eager (or attention=compiled), evaluate "
    "with attention=flex, set attention.flex_cpu_training=eager to fall back for training steps, "
    "or train on a GPU."
)
