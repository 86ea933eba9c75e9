"""Fused STAMP attention for training on any device: ``attention=fused``.

``softmax((QKᵀ/√d) ◇ M + bias + padding) V`` computed one block of query rows at a time. Each
block's logits (B, H, rows, Nk) come from one batched matmul, are fused with M, the bias and the
key padding, normalised (every key of a row is in its block, so the row softmax is exact, no
online rescaling is needed) and multiplied with V. Autograd keeps only the inputs and the row
log-sum-exp (B, H, Nq); the backward recomputes each block's logits, flash-attention style, so
no B·H·Nq·Nk tensor is ever kept, and the B·H·N² arithmetic stays in large matmuls. Under bf16
/ fp16 inputs each block's fusion, softmax and softmax backward run in float32.

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

from stamp.config import AttendSpec

PLAIN = AttendSpec()  # no mask, no bias, no padding, no dropout

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


def _forward_block(
    qs: Tensor,
    k: Tensor,
    v: Tensor,
    m: Tensor | None,
    bias: Tensor | None,
    pad: Tensor | None,
    keep: Tensor | None,
    mul: bool,
    bias_first: bool,
    dropout_p: float,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """One block of the forward: (output rows, their log-sum-exp). The fusion runs in ``acc``
    (float32 for bf16 / fp16 inputs), so a float32 M's small deviations reach the softmax."""
    s = fuse_scores((qs @ k.transpose(-2, -1)).to(acc), m, bias, pad, mul, bias_first)[0]
    mx = s.amax(dim=-1)
    p = torch.softmax(s, dim=-1)
    # p at the row maximum is 1 / sum(exp(s - max)): lse = max + log(sum)
    lse = mx - p.amax(dim=-1).log()
    if keep is not None:
        p = p.masked_fill_(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
    return p.to(v.dtype) @ v, lse


def _backward_block(
    qs: Tensor,
    k: Tensor,
    v: Tensor,
    do: Tensor,
    lse: Tensor,
    m: Tensor | None,
    bias: Tensor | None,
    pad: Tensor | None,
    keep: Tensor | None,
    mul: bool,
    bias_first: bool,
    dropout_p: float,
    scale: float,
    need_m: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """One block of the backward: dQ of its rows, its parts of dK and dV, and its dM and dbias
    summed to M's / the bias's broadcast shape (None where not needed)."""
    acc = lse.dtype
    s, x = fuse_scores((qs @ k.transpose(-2, -1)).to(acc), m, bias, pad, mul, bias_first)
    p = s.sub_(lse[..., None]).exp_()
    dp = (do @ v.transpose(-2, -1)).to(acc)
    kept = p
    if keep is not None:
        kept = p.masked_fill(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
        dp.masked_fill_(~keep, 0.0).mul_(1.0 / (1.0 - dropout_p))
    dv = kept.to(v.dtype).transpose(-2, -1) @ do
    # rowsum(P ∘ dP) from the block's own rows (each block holds every key of its rows), not
    # flash attention's rowsum(dO ∘ O): O is stored in the inputs' dtype, and under bf16 its
    # rounding made dQ, dK 2-3x less accurate than eager's (tests/pipeline/test_gpu_ready.py)
    delta = (p * dp).sum(dim=-1, keepdim=True)
    ds = p.mul_(dp.sub_(delta))  # dL/d(fused logits), before padding
    if pad is not None:
        ds.masked_fill_(pad, 0.0)
    # fused = x ◇ M (+ bias), x = logits (+ bias for bias_first)
    dx = ds * m if (mul and m is not None) else ds
    dm = db = None
    if need_m:
        dm = _sum_to(x.mul_(ds) if mul else ds, m.shape)
    if need_b:
        db = _sum_to(dx if bias_first else ds, bias.shape)
    dx = dx.to(qs.dtype)
    return (dx @ k) * scale, dx.transpose(-2, -1) @ qs, dv, dm, db


# the block bodies under torch.compile (attention=compiled_fused): inductor fuses each block's
# element-wise passes (fusion, softmax, exp recomputation, dS, dM) around the matmuls. Compiled
# on first use, once per combination of the Python flags and (after a second block shape)
# with dynamic shapes.
_compiled_blocks: tuple | None = None


def _block_fns(compiled: bool) -> tuple:
    global _compiled_blocks
    if not compiled:
        return _forward_block, _backward_block
    if _compiled_blocks is None:
        _compiled_blocks = (torch.compile(_forward_block), torch.compile(_backward_block))
    return _compiled_blocks


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
        compiled: bool,
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
        forward_block = _block_fns(compiled)[0]
        nk = k.shape[2]
        for n, (bs, hs, rs) in enumerate(blocks(B, H, nq, nk, block_elems)):
            qb = qs[bs, hs, rs]
            keep = None
            if dropout_p > 0:
                keep = _dropout_keep((*qb.shape[:-1], nk), dropout_p, seed, n, q.device)
            out[bs, hs, rs], lse[bs, hs, rs] = forward_block(
                qb,
                k[bs, hs],
                v[bs, hs],
                _take(m4, bs, hs, rs),
                _take(b4, bs, hs, rs),
                None if pad4 is None else pad4[bs],
                keep,
                mul,
                bias_first,
                dropout_p,
                acc,
            )
        ctx.save_for_backward(q, k, v, lse, m, bias, pad)
        ctx.cfg = (mul, bias_first, dropout_p, block_elems, seed, compiled)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):  # type: ignore[override]
        q, k, v, lse, m, bias, pad = ctx.saved_tensors
        mul, bias_first, dropout_p, block_elems, seed, compiled = ctx.cfg
        need_q, need_k, need_v, need_m, need_b = ctx.needs_input_grad[:5]
        B, H, nq, d = q.shape
        nk = k.shape[2]
        scale = d**-0.5
        qs = q * scale
        m4, b4 = _as4d(m, mask=True), _as4d(bias)
        pad4 = None if pad is None else pad[:, None, None, :]
        dq = torch.empty_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dv = torch.zeros_like(v) if need_v else None
        dm = torch.zeros_like(m4) if need_m else None
        db = torch.zeros_like(b4) if need_b else None
        backward_block = _block_fns(compiled)[1]
        for n, (bs, hs, rs) in enumerate(blocks(B, H, nq, nk, block_elems)):
            qb = qs[bs, hs, rs]
            keep = None
            if dropout_p > 0:
                keep = _dropout_keep((*qb.shape[:-1], nk), dropout_p, seed, n, q.device)
            dqb, dkb, dvb, dmb, dbb = backward_block(
                qb,
                k[bs, hs],
                v[bs, hs],
                dout[bs, hs, rs],
                lse[bs, hs, rs],
                _take(m4, bs, hs, rs),
                _take(b4, bs, hs, rs),
                None if pad4 is None else pad4[bs],
                keep,
                mul,
                bias_first,
                dropout_p,
                scale,
                need_m,
                need_b,
            )
            if need_q:
                dq[bs, hs, rs] = dqb
            if need_k:
                dk[bs, hs] += dkb
            if need_v:
                dv[bs, hs] += dvb
            if need_m:
                _take(dm, bs, hs, rs).add_(dmb)
            if need_b:
                _take(db, bs, hs, rs).add_(dbb)
        if dm is not None:
            dm = dm.reshape(m.shape)
        if db is not None:
            db = db.reshape(bias.shape)
        return dq, dk, dv, dm, db, None, None, None, None, None, None


def fusion_input(t: Tensor | None, q: Tensor) -> Tensor | None:
    """M or a bias as the fused paths (fused, compiled_fused, flex) read it: in its own dtype
    when that is the queries' or float32, else in float32 (the softmax precision). A float32 M
    from a generator under bf16 autocast is never rounded to bf16, where 1 + 1e-4 is 1."""
    if t is None:
        return None
    acc = torch.promote_types(q.dtype, torch.float32)
    return t if t.dtype in (q.dtype, acc) else t.to(acc)


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
    spec: AttendSpec = PLAIN,
    *,
    block_elems: int | None = None,
    compiled: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The eager path's function (same signature, same semantics) in query-row blocks, with a
    backward that recomputes the blocks instead of keeping B·H·Nq·Nk tensors.

    Under reduced precision (bf16 / fp16 q, k, v) each block's fusion and softmax run in
    float32 and M and the bias keep their own dtype when it is the inputs' or float32 (a
    float32 M from a generator under autocast is not rounded: its small deviations from the
    identity stay visible). ``compiled``: the block bodies under ``torch.compile``
    (``attention=compiled_fused``, see ``compiled_fused_attention``).
    """
    if spec.return_attn:
        raise ValueError(
            "attention=fused cannot return attention probabilities; use attention=eager"
        )
    if block_elems is None and q.device.type != "cpu":
        block_elems = GPU_BLOCK_ELEMS
    out = _FusedStampAttention.apply(
        q,
        k,
        v,
        fusion_input(spec.mask, q),
        fusion_input(spec.attn_bias, q),
        spec.key_padding_mask,
        spec.mul,
        spec.bias_first,
        spec.dropout_p,
        block_elems,
        compiled,
    )
    return out, None


def compiled_fused_attention(
    q: Tensor, k: Tensor, v: Tensor, spec: AttendSpec = PLAIN, *, block_elems: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """``attention=compiled_fused``: ``fused_attention`` with each block's forward and backward
    body compiled by ``torch.compile`` (the same loop, blocks and saved tensors: no
    B·H·Nq·Nk tensor is kept). The first call of each flag combination compiles (seconds)."""
    return fused_attention(q, k, v, spec, block_elems=block_elems, compiled=True)
