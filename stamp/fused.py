"""Fused STAMP attention for training on any device: ``attention=fused``.

``softmax((QKᵀ/√d) ◇ M + bias + padding) V`` computed one block of query rows at a time. Each
block's logits (B, H, rows, Nk) come from one batched matmul, are fused with M, the bias and the
key padding, normalised (every key of a row is in its block, so the row softmax is exact, no
online rescaling is needed) and multiplied with V. Autograd keeps only the inputs, the output
and the row log-sum-exp (B, H, Nq); the backward recomputes each block's logits, flash-attention
style, so no B·H·Nq·Nk tensor is ever kept, and the B·H·N² arithmetic stays in large matmuls.

Gradients reach Q, K, V, M (shared by the heads, (B, Nq, Nk), or per head) and the bias when it
requires one; broadcast dimensions are summed back. Attention-probability dropout is applied
with a mask regenerated from a per-call seed in the backward (the same keep-probability as the
eager path, a different random stream). The semantics, NaN rows included, are the eager path's
(``stamp.attention.eager_attention``): a query whose keys are all padded gives NaN outputs
there, as eager's softmax over -inf does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stamp.config import Fusion, FusionOrder

# Elements of one block of logits (B·H·rows·Nk). Chosen on a 2-core x86 CPU (see
# BENCHMARKS.md): big enough that the matmuls stay efficient, small enough that a block's few
# temporaries stay in cache.
BLOCK_ELEMS = 1 << 18
# Query rows of a block when one head's logits exceed the budget (N=4096: 256 rows, 1.2 s
# against 1.4 s with 64 rows for B=1, H=4 fwd+bwd on one thread).
MIN_ROWS = 256
# On a GPU the per-block launches dominate small blocks: far larger ones (not tuned; no GPU here).
GPU_BLOCK_ELEMS = 1 << 24


def _as4d(t: Tensor | None, mask: bool = False) -> Tensor | None:
    """A bias broadcast as torch does (leading dims); a 3-d mask (B, Nq, Nk) gets a head dim."""
    if t is None:
        return None
    if mask and t.dim() == 3:
        return t.unsqueeze(1)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _take(t: Tensor | None, bs: slice, hs: slice, rs: slice) -> Tensor | None:
    """Block (batch, heads, query rows) of a 4-d tensor whose dims may be broadcast (size 1)."""
    if t is None:
        return None
    full = slice(None)
    return t[
        full if t.shape[0] == 1 else bs,
        full if t.shape[1] == 1 else hs,
        full if t.shape[2] == 1 else rs,
    ]


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``grad`` over the dimensions that were broadcast to reach it from ``shape``."""
    dims = [d for d, n in enumerate(shape) if n == 1 and grad.shape[d] != 1]
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def blocks(
    B: int, H: int, nq: int, nk: int, block_elems: int | None = None
) -> list[tuple[slice, slice, slice]]:
    """(batch, heads, query rows) slices whose logits hold about ``block_elems`` values: whole
    samples when they fit, else groups of heads, else groups of query rows of one head. Rows are
    split only when one head's Nq x Nk exceeds the budget, so the matmuls stay large."""
    elems = BLOCK_ELEMS if block_elems is None else block_elems
    per_head = nq * nk
    out = []
    if H * per_head <= elems:
        step = max(1, elems // (H * per_head))
        for b in range(0, B, step):
            out.append((slice(b, min(B, b + step)), slice(None), slice(None)))
    elif per_head <= elems:
        step = max(1, elems // per_head)
        for b in range(B):
            for h in range(0, H, step):
                out.append((slice(b, b + 1), slice(h, min(H, h + step)), slice(None)))
    else:  # default budget: at least MIN_ROWS rows (thinner blocks make small matmuls and
        # re-add dK, dV often); an explicit budget is taken as given
        floor = MIN_ROWS if block_elems is None else 1
        rows = max(min(nq, floor), elems // nk)
        for b in range(B):
            for h in range(H):
                for i in range(0, nq, rows):
                    out.append((slice(b, b + 1), slice(h, h + 1), slice(i, min(nq, i + rows))))
    return out


def _dropout_keep(
    shape: tuple[int, ...], p: float, seed: int, block: int, device: torch.device
) -> Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 1_000_003 * block)
    return torch.rand(shape, generator=gen, device=device) >= p


class _FusedStampAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        m: Tensor | None,
        bias: Tensor | None,
        pad: Tensor | None,
        mul: bool,
        bias_first: bool,
        dropout_p: float,
        block_elems: int | None,
    ) -> Tensor:
        B, H, nq, d = q.shape
        qs = q * d**-0.5
        m4, b4 = _as4d(m, mask=True), _as4d(bias)
        pad4 = None if pad is None else pad[:, None, None, :]
        # (B, Nq, H, dv) memory seen as (B, H, Nq, dv): the caller's merge of the heads,
        # out.transpose(1, 2).reshape(B, Nq, H * dv), is then a view, and the output projection
        # saves the same storage as this function instead of a second copy
        out = torch.empty(B, nq, H, v.shape[-1], dtype=v.dtype, device=q.device).transpose(1, 2)
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax precision (eager: float32)
        lse = torch.empty(B, H, nq, dtype=acc, device=q.device)
        seed = int(torch.randint(0, 2**31 - 1, ())) if dropout_p > 0 else 0
        for n, (bs, hs, rs) in enumerate(blocks(B, H, nq, k.shape[2], block_elems)):
            s = fuse_scores(
                qs[bs, hs, rs] @ k[bs, hs].transpose(-2, -1),
                _take(m4, bs, hs, rs),
                _take(b4, bs, hs, rs),
                None if pad4 is None else pad4[bs],
                mul,
                bias_first,
            )[0].to(acc)
            mx = s.amax(dim=-1)
            p = torch.softmax(s, dim=-1)
            # p at the row maximum is 1 / sum(exp(s - max)): lse = max + log(sum)
            lse[bs, hs, rs] = mx - p.amax(dim=-1).log()
            if dropout_p > 0:
                keep = _dropout_keep(p.shape, dropout_p, seed, n, q.device)
                p = p.masked_fill_(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
            out[bs, hs, rs] = p.to(v.dtype) @ v[bs, hs]
        ctx.save_for_backward(q, k, v, out, lse, m, bias, pad)
        ctx.cfg = (mul, bias_first, dropout_p, block_elems, seed)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):  # type: ignore[override]
        q, k, v, out, lse, m, bias, pad = ctx.saved_tensors
        mul, bias_first, dropout_p, block_elems, seed = ctx.cfg
        need_q, need_k, need_v, need_m, need_b = ctx.needs_input_grad[:5]
        B, H, nq, d = q.shape
        scale = d**-0.5
        qs = q * scale
        m4, b4 = _as4d(m, mask=True), _as4d(bias)
        pad4 = None if pad is None else pad[:, None, None, :]
        acc = lse.dtype
        delta = (dout.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # rowsum(dO ∘ O)
        dq = torch.empty_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dv = torch.zeros_like(v) if need_v else None
        dm = torch.zeros_like(m4) if need_m else None
        db = torch.zeros_like(b4) if need_b else None
        for n, (bs, hs, rs) in enumerate(blocks(B, H, nq, k.shape[2], block_elems)):
            mb, bb = _take(m4, bs, hs, rs), _take(b4, bs, hs, rs)
            pb = None if pad4 is None else pad4[bs]
            kb, vb, qb = k[bs, hs], v[bs, hs], qs[bs, hs, rs]
            s, x = fuse_scores(qb @ kb.transpose(-2, -1), mb, bb, pb, mul, bias_first)
            p = s.to(acc).sub_(lse[bs, hs, rs, None]).exp_()
            do = dout[bs, hs, rs]
            dp = (do @ vb.transpose(-2, -1)).to(acc)
            kept = p
            if dropout_p > 0:
                keep = _dropout_keep(p.shape, dropout_p, seed, n, q.device)
                kept = p.masked_fill(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
                dp.masked_fill_(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
            if need_v:
                dv[bs, hs] += kept.to(v.dtype).transpose(-2, -1) @ do
            ds = p.mul_(dp.sub_(delta[bs, hs, rs]))  # dL/d(fused logits), before padding
            if pb is not None:
                ds.masked_fill_(pb, 0.0)
            ds = ds.to(q.dtype)
            # fused = x ◇ M (+ bias), x = logits (+ bias for bias_first)
            dx = ds * mb if (mul and mb is not None) else ds
            if need_m:
                gm = x.mul_(ds) if mul else ds
                _take(dm, bs, hs, rs).add_(_sum_to(gm, mb.shape))
            if need_b:
                _take(db, bs, hs, rs).add_(_sum_to(dx if bias_first else ds, bb.shape))
            if need_q:
                dq[bs, hs, rs] = (dx @ kb) * scale
            if need_k:
                dk[bs, hs] += dx.transpose(-2, -1) @ qb
        if dm is not None:
            dm = dm.reshape(m.shape)
        if db is not None:
            db = db.reshape(bias.shape)
        return dq, dk, dv, dm, db, None, None, None, None, None


def fuse_scores(
    logits: Tensor,
    m: Tensor | None,
    bias: Tensor | None,
    pad4: Tensor | None,
    mul: bool,
    bias_first: bool,
) -> tuple[Tensor, Tensor]:
    """The order of operations of every STAMP path (eager, and fused per block): bias first or
    last around ◇ M (``bias_first``), then padded keys -> -inf. Returns (scores, input of ◇ M).
    ``m`` and ``pad4`` are already broadcastable to the 4-d logits."""
    x = logits
    if bias is not None and bias_first:
        x = x + bias
    s = x
    if m is not None:
        s = s * m if mul else s + m
    if bias is not None and not bias_first:
        s = s + bias
    if pad4 is not None:
        s = s.masked_fill(pad4, float("-inf"))
    return s, x


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    fusion: Fusion | str = Fusion.mul,
    fusion_order: FusionOrder | str = FusionOrder.mask_first,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    dropout_p: float = 0.0,
    return_attn: bool = False,
    block_elems: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The eager path's function (same signature, same semantics) in query-row blocks, with a
    backward that recomputes the blocks instead of keeping B·H·Nq·Nk tensors."""
    if return_attn:
        raise ValueError(
            "attention=fused cannot return attention probabilities; use attention=eager"
        )
    if block_elems is None and q.device.type != "cpu":
        block_elems = GPU_BLOCK_ELEMS
    mul = Fusion(fusion) is Fusion.mul
    bias_first = attn_bias is not None and FusionOrder(fusion_order) is FusionOrder.bias_first
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    if attn_bias is not None and attn_bias.dtype != q.dtype:
        attn_bias = attn_bias.to(q.dtype)
    out = _FusedStampAttention.apply(
        q, k, v, mask, attn_bias, key_padding_mask, mul, bias_first, dropout_p, block_elems
    )
    return out, None
