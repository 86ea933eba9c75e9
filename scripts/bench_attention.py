"""Benchmark STAMP attention against plain SDPA: the paper's shapes, the depth-32 generator with
checkpointing, and a scaling curve in N.

1. Shapes. One attention module (projections + attention + output projection; STAMP adds its
   mask generator of the task's depth) per backend, forward+backward (forward only where a
   backend has no backward on this device). Reported against plain SDPA measured in the same
   run, with the repeats interleaved (one step of every variant per round, median over rounds),
   so that load on a shared machine hits all variants alike:
   * time/FLOP = time ratio / FLOP ratio (1.0: STAMP costs exactly its extra arithmetic). FLOPs
     from torch.utils.flop_counter (SDPA under the MATH backend); flex and fused are counted as
     the eager path, which does the same arithmetic (fused recomputes QKᵀ in its backward: one
     extra matmul, not counted, as flash attention's recomputation is not counted for SDPA);
   * attention memory: bytes autograd saves for backward, each storage once, without what the
     generator saves for itself (M, saved by the attention, counts);
   * peak: the step's peak memory above the memory before it (CPU: VmHWM of the process, read
     with glibc's mmap threshold lowered so freed tensors leave the resident set; timing runs
     with glibc's steady-state threshold; CUDA: the allocator's peak).
2. Depth-32 generator (QVHighlights self-attention shape): total training peak memory and time
   of the best STAMP backend with and without ``mask.checkpoint``.
3. Generators (``mask.generator`` / ``mask.per_head``): at the paper's shapes, the MLP generator
   (paper), the low-rank one (rank 16 and 64) and each one per head, on every backend (eager mul,
   fused mul, sdpa add, flex mul; flex forward only on CPU), measured in one run against plain
   SDPA and against the MLP generator on the same backend: time, FLOPs, attention memory, peak,
   generator parameters.
4. Parameters: every generator form's closed-form parameter count at N = 64 ... 16384, checked
   against the module built on the meta device (the MLP's grows with N, the low-rank's does not).
5. Scaling: the attention function alone (B=1, H=4, d=64, M (1, N, N) learnable, mul), N = 64 ...
   4096: STAMP fused vs STAMP eager vs plain SDPA, time and peak memory, plus STAMP fused with M
   from a depth-2 MLP / low-rank (r=16) generator of tokens X (1, N, 256); table and plot.

    python scripts/bench_attention.py --out bench_results     # everything (~20 min, 1 thread)
    python scripts/bench_attention.py --sections shapes --shapes qvh_self,vit --repeats 5
    python scripts/bench_attention.py --sections generators,params --generator-shapes ad,vit

This file measures; ``bench_report.py`` renders the tables and the plot from the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_report import plot_scaling, to_markdown  # noqa: E402  (scripts/: the tables)

from stamp import (  # noqa: E402
    AttendSpec,
    AttentionConfig,
    LowRankMaskGenerator,
    MaskConfig,
    MaskGenerator,
    StampAttention,
    eager_attention,
)
from stamp.attention import ATTENTION_BACKENDS  # noqa: E402
from stamp.fused import blocks, compiled_fused_attention, fuse_scores, fused_attention  # noqa: E402

SCALING_N = (64, 128, 256, 512, 1024, 2048, 4096)
PARAM_N = (64, 256, 1024, 4096, 16384)


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    nq: int
    nk: int  # == nq for self-attention
    dim: int
    heads: int
    depth: int  # the task's STAMP generator depth
    cross: bool = False


# the paper's shapes (batch sizes chosen to fit a 2-core CPU run)
SHAPES = {
    "ad": Shape("ad (MAD AV encoder, N=50)", 16, 50, 50, 768, 16, 2),
    "qvh_self": Shape("qvh_self (QD-DETR encoder, N=76)", 32, 76, 76, 256, 8, 32),
    "qvh_cross": Shape("qvh_cross (QD-DETR T2V, 75x32)", 32, 75, 32, 256, 8, 32, cross=True),
    "vit": Shape("vit (ViT-B/16, N=197)", 8, 197, 197, 768, 12, 1),
    "swinbert": Shape("swinbert (N=834)", 2, 834, 834, 768, 12, 16),
}


@dataclass(frozen=True)
class GenForm:
    """A generator form: ``mask.generator``, ``mask.rank`` (lowrank) and ``mask.per_head``."""

    label: str
    generator: str = "mlp"
    rank: int = 16
    per_head: bool = False

    def mask_config(self, depth: int, checkpoint: bool = False) -> MaskConfig:
        return MaskConfig(
            depth=depth,
            generator=self.generator,
            rank=self.rank,
            per_head=self.per_head,
            checkpoint=checkpoint,
        )


MLP = GenForm("mlp")
GEN_FORMS = {  # --generator-forms keys
    "mlp": MLP,
    "mlp_head": GenForm("mlp per-head", per_head=True),
    "lowrank16": GenForm("lowrank r16", "lowrank", 16),
    "lowrank16_head": GenForm("lowrank r16 per-head", "lowrank", 16, per_head=True),
    "lowrank64": GenForm("lowrank r64", "lowrank", 64),
}
# backend + fusion of the generators section: each backend once, with a fusion it runs
GEN_BACKENDS = (("eager", "mul"), ("fused", "mul"), ("sdpa", "add"), ("flex", "mul"))
GEN_SHAPES = ("ad", "qvh_self", "qvh_cross", "vit")
# scaling lines with a generator (--scaling-backends names): STAMP fused, M = generator(X)
GEN_SCALING = {"gen_mlp": MLP, "gen_lowrank": GEN_FORMS["lowrank16"]}

# (label, backend, fusion or None for plain attention, generator form or None for the MLP)
Variant = tuple[str, str, str | None, GenForm | None]
VARIANTS: list[Variant] = [
    ("plain sdpa", "sdpa", None, None),
    ("plain eager", "eager", None, None),
    ("stamp eager mul", "eager", "mul", None),
    ("stamp eager add", "eager", "add", None),
    ("stamp sdpa add", "sdpa", "add", None),
    ("stamp fused mul", "fused", "mul", None),
    ("stamp fused add", "fused", "add", None),
    ("stamp flex mul", "flex", "mul", None),
    ("stamp flex add", "flex", "add", None),
]


def generator_variants(forms: list[GenForm], pairs=GEN_BACKENDS) -> list[Variant]:
    """Plain SDPA, then every generator form on every (backend, fusion)."""
    out: list[Variant] = [("plain sdpa", "sdpa", None, None)]
    for form in forms:
        out += [(f"{form.label} / {b} {f}", b, f, form) for b, f in pairs]
    return out


class Block(nn.Module):
    """One attention module with (optionally) its STAMP generator, as a layer runs it."""

    def __init__(
        self,
        shape: Shape,
        backend: str,
        fusion: str | None,
        checkpoint: bool = False,
        form: GenForm | None = None,
    ) -> None:
        super().__init__()
        self.attn = StampAttention(
            shape.dim,
            shape.heads,
            cross=shape.cross,
            fusion=fusion or "mul",
            attention=AttentionConfig(backend=backend),
        )
        self.generator = None
        if fusion is not None:
            self.generator = MaskGenerator.from_config(
                (form or MLP).mask_config(shape.depth, checkpoint),
                shape.dim,
                shape.nk,
                num_heads=shape.heads,
                context_dim=shape.dim if shape.cross else None,
            )

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        mask = None
        if self.generator is not None:
            mask = self.generator(x, n_keys=self.nk(x, ctx), context=ctx)
        return self.attn(x, ctx, mask=mask)

    def generator_parameters(self) -> int:
        return 0 if self.generator is None else sum(p.numel() for p in self.generator.parameters())

    @staticmethod
    def nk(x: torch.Tensor, ctx: torch.Tensor | None) -> int:
        return (x if ctx is None else ctx).shape[1]


def inputs(shape: Shape, device: torch.device, grad: bool, dtype=torch.float32):
    kw = {"device": device, "dtype": dtype, "requires_grad": grad}
    x = torch.randn(shape.batch, shape.nq, shape.dim, **kw)
    ctx = torch.randn(shape.batch, shape.nk, shape.dim, **kw) if shape.cross else None
    return x, ctx


def has_backward(backend: str, device: torch.device) -> bool:
    return not (backend == "flex" and device.type == "cpu")


def count_flops(fn: Callable[[], None]) -> int:
    if _measuring_peaks():
        return 1  # the peaks-only process counts nothing
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def block_step(block: nn.Module, shape: Shape, device: torch.device, backward: bool, dtype):
    x, ctx = inputs(shape, device, backward, dtype)

    def step() -> None:
        if backward:
            block(x, ctx).sum().backward()
        else:
            with torch.no_grad():
                block(x, ctx)

    return step


def saved_bytes(block: Block, shape: Shape, device: torch.device, dtype) -> int:
    """Bytes autograd saves for backward, each storage once: every storage that something
    outside the generator saves (the inputs, which the projections save, and M, which the
    attention saves, count even where the generator saves them too); a storage that only the
    generator's own forward saves (its activations) does not."""
    outside: dict[int, int] = {}
    in_generator = False

    def pack(t: torch.Tensor):
        if not in_generator:
            storage = t.untyped_storage()
            outside[storage.data_ptr()] = storage.nbytes()
        return t

    def enter(*_):
        nonlocal in_generator
        in_generator = True

    def leave(*_):
        nonlocal in_generator
        in_generator = False

    handles = []
    if block.generator is not None:
        handles = [
            block.generator.register_forward_pre_hook(enter),
            block.generator.register_forward_hook(leave),
        ]
    x, ctx = inputs(shape, device, True, dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, ctx)
    for h in handles:
        h.remove()
    return sum(outside.values())


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# CPU peaks are read in a second process started with glibc's mmap threshold fixed at 64 KiB
# (MALLOC_MMAP_THRESHOLD_): every tensor then comes from mmap and leaves the resident set when
# freed, so VmHWM - VmRSS is the step's peak. Timing runs in this process with glibc's default
# (dynamic threshold: freed tensors are reused, not page-faulted again), as a user runs.
PEAKS_ENV = "MALLOC_MMAP_THRESHOLD_"
_peaks_from_child: dict[str, int | None] | None = None
_peaks_measured: dict[str, int | None] = {}


def _measuring_peaks() -> bool:
    return os.environ.get(PEAKS_ENV) == "65536"


def peak_bytes(step: Callable[[], None], device: torch.device, key: str) -> int | None:
    """Peak memory of one call of ``step`` above the memory in use before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if not _measuring_peaks():
        return None if _peaks_from_child is None else _peaks_from_child.get(key)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = _proc_status("VmRSS")
        step()
        peak = max(0, _proc_status("VmHWM") - before)
    except OSError:
        peak = None
    _peaks_measured[key] = peak
    return peak


def measure_cpu_peaks(argv: list[str]) -> dict[str, int | None] | None:
    """Run this script again with the fixed mmap threshold, peaks only; returns them by key."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peaks.json"
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *argv, "--peaks-only", str(out)],
            env={**os.environ, PEAKS_ENV: "65536"},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            print(f"CPU peak measurement failed:\n{proc.stderr[-2000:]}", flush=True)
            return None
        return json.loads(out.read_text())


def interleaved_times(
    steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds per step; each round runs every step once (shared-machine load is
    spread over all variants)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if _measuring_peaks() and device.type == "cpu":  # the peaks-only process: warm-up only
        warmup, repeats = min(warmup, 1), 0
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) if v else float("nan") for k, v in times.items()}


def _zero_grads(block: nn.Module) -> None:
    block.zero_grad(set_to_none=True)


def bench_shape(
    shape: Shape,
    backends: set[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    dtype=torch.float32,
    variants: list[Variant] | None = None,
    section: str = "",
) -> list[dict]:
    """Every variant's step at ``shape``, with its ratios to plain SDPA measured in the same
    run (``section`` keeps the peak keys of different sections apart)."""
    blocks_: dict[str, Block] = {}
    meta: dict[str, tuple[str, str | None, bool]] = {}
    forms: dict[str, GenForm | None] = {}
    for label, backend, fusion, form in VARIANTS if variants is None else variants:
        if backend not in backends and label != "plain sdpa":
            continue
        torch.manual_seed(0)
        blocks_[label] = Block(shape, backend, fusion, form=form).to(device, dtype)
        meta[label] = (backend, fusion, has_backward(backend, device))
        forms[label] = None if fusion is None else (form or MLP)
    steps = {
        label: block_step(blocks_[label], shape, device, meta[label][2], dtype) for label in meta
    }
    # forward-only baseline for forward-only rows (flex on CPU)
    if any(not bwd for _, _, bwd in meta.values()):
        steps["plain sdpa (fwd)"] = block_step(blocks_["plain sdpa"], shape, device, False, dtype)
    seconds = interleaved_times(steps, device, warmup, repeats)
    flops: dict[tuple, int] = {}
    rows = []
    for label, (backend, fusion, backward) in meta.items():
        # flex / fused are counted as the eager path: the same arithmetic
        form = forms[label]
        key = (backend if backend in ("sdpa", "eager") else "eager", fusion, backward, form)
        if key not in flops:
            torch.manual_seed(0)
            counted = Block(shape, key[0], fusion, form=form).to(device, dtype)
            flops[key] = count_flops(block_step(counted, shape, device, backward, dtype))
        n_flops = flops[key]
        _zero_grads(blocks_[label])
        rows.append(
            {
                "variant": label,
                "backend": backend,
                "fusion": fusion,
                "generator": None if form is None else form.label,
                "generator_params": blocks_[label].generator_parameters(),
                "pass": "fwd+bwd" if backward else "fwd",
                "time_ms": seconds[label] * 1e3,
                "flops": n_flops,
                "attn_memory_bytes": saved_bytes(blocks_[label], shape, device, dtype)
                if backward
                else None,
                "peak_bytes": peak_bytes(steps[label], device, f"{section}{shape.name}|{label}"),
            }
        )
        print(
            f"  {label:<28} {rows[-1]['pass']:<7} {seconds[label] * 1e3:9.2f} ms  "
            f"{n_flops / 1e9:8.3f} GFLOP",
            flush=True,
        )
    base = {r["pass"]: r for r in rows if r["variant"] == "plain sdpa"}
    if "plain sdpa (fwd)" in seconds:
        base["fwd"] = {
            "time_ms": seconds["plain sdpa (fwd)"] * 1e3,
            "flops": count_flops(steps["plain sdpa (fwd)"]),
            "attn_memory_bytes": None,
            "peak_bytes": peak_bytes(
                steps["plain sdpa (fwd)"], device, f"{section}{shape.name}|plain sdpa (fwd)"
            ),
        }
    for r in rows:
        b = base[r["pass"]]
        r["time_ratio"] = r["time_ms"] / b["time_ms"]
        r["flop_ratio"] = r["flops"] / b["flops"]
        r["overhead"] = r["time_ratio"] / r["flop_ratio"]  # 1.0 = no cost beyond arithmetic
        for k in ("attn_memory", "peak"):
            mine, ref = r[f"{k}_bytes"], b.get(f"{k}_bytes")
            r[f"{k}_ratio"] = mine / ref if mine and ref else None
    return rows


def add_mlp_ratios(rows: list[dict]) -> list[dict]:
    """Each generator row's time, FLOPs, attention memory, peak and generator parameters
    against the MLP generator's row on the same backend, fusion and pass (same run)."""
    mlp = {(r["backend"], r["fusion"], r["pass"]): r for r in rows if r["generator"] == MLP.label}
    for r in rows:
        ref = mlp.get((r["backend"], r["fusion"], r["pass"])) if r["generator"] else None
        for k, field in (
            ("time", "time_ms"),
            ("flop", "flops"),
            ("attn_memory", "attn_memory_bytes"),
            ("peak", "peak_bytes"),
            ("params", "generator_params"),
        ):
            mine, theirs = r[field], None if ref is None else ref[field]
            r[f"{k}_vs_mlp"] = mine / theirs if mine and theirs else None
    return rows


def generator_parameters(form: GenForm, dim: int, depth: int, heads: int, n: int) -> int:
    """Closed-form parameter count of a self-attention generator of ``form`` at N = ``n``."""
    h = heads if form.per_head else 1
    if form.generator == "lowrank":
        return LowRankMaskGenerator.lowrank_parameters(dim, depth, form.rank, heads=h)
    return MaskGenerator.num_parameters(dim, n, depth, heads=h)


def param_counts(
    configs: dict[str, tuple[int, int, int]], ns: tuple[int, ...], forms: list[GenForm]
) -> list[dict]:
    """Every form's parameter count at each N for each (D, depth, H): the closed form, checked
    against the module itself (built on the meta device: no memory, any N)."""
    rows = []
    for name, (dim, depth, heads) in configs.items():
        for form in forms:
            counts = []
            for n in ns:
                closed = generator_parameters(form, dim, depth, heads, n)
                with torch.device("meta"):
                    gen = MaskGenerator.from_config(
                        form.mask_config(depth), dim, n, num_heads=heads
                    )
                counted = sum(p.numel() for p in gen.parameters())
                if counted != closed:
                    raise AssertionError(f"{form.label} at N={n}: {counted} != {closed}")
                counts.append(counted)
            rows.append(
                {
                    "config": name,
                    "dim": dim,
                    "depth": depth,
                    "heads": heads,
                    "generator": form.label,
                    "n": list(ns),
                    "params": counts,
                }
            )
    return rows


def bench_checkpoint(
    shape: Shape, backend: str, device: torch.device, warmup: int, repeats: int, dtype
) -> dict:
    """Depth-``shape.depth`` generator: plain attention vs STAMP with / without checkpointing."""
    variants = {
        "plain sdpa": Block(shape, "sdpa", None),
        f"stamp {backend} mul": Block(shape, backend, "mul"),
        f"stamp {backend} mul, mask.checkpoint": Block(shape, backend, "mul", checkpoint=True),
    }
    torch.manual_seed(0)
    steps = {}
    for k, block in variants.items():
        block.to(device, dtype)
        steps[k] = block_step(block, shape, device, True, dtype)
    seconds = interleaved_times(steps, device, warmup, repeats)
    rows = []
    for k, block in variants.items():
        _zero_grads(block)
        rows.append(
            {
                "variant": k,
                "time_ms": seconds[k] * 1e3,
                "peak_bytes": peak_bytes(steps[k], device, f"checkpoint|{k}"),
            }
        )
    plain, full, ckpt = rows
    return {
        "shape": asdict(shape),
        "rows": rows,
        "memory_ratio_ckpt": ckpt["peak_bytes"] / plain["peak_bytes"]
        if plain["peak_bytes"]
        else None,
        "memory_ratio_no_ckpt": full["peak_bytes"] / plain["peak_bytes"]
        if plain["peak_bytes"]
        else None,
        "time_ratio_ckpt_vs_no_ckpt": ckpt["time_ms"] / full["time_ms"],
    }


def bench_scaling(
    ns: tuple[int, ...],
    device: torch.device,
    warmup: int,
    repeats: int,
    dtype,
    heads: int = 4,
    head_dim: int = 64,
    backends: tuple[str, ...] = ("sdpa", "eager", "fused"),
    deadline: float = float("inf"),
) -> list[dict]:
    """Attention alone, B=1: plain SDPA vs STAMP (mul, M learnable) eager / fused, and STAMP
    fused with M from a depth-2 generator (``GEN_SCALING``) of tokens X (1, N, H·d)."""
    rows = []
    for n in ns:
        if time.perf_counter() > deadline:
            print(f"  N={n}: skipped (time budget spent)", flush=True)
            continue
        steps = _scaling_steps(n, device, dtype, heads, head_dim, backends)
        reps = repeats if n <= 1024 else max(1, min(repeats, 3))
        seconds = interleaved_times(steps, device, min(warmup, 1), reps)
        row = {"n": n}
        for name, step in steps.items():
            row[f"{name}_ms"] = seconds[name] * 1e3
            row[f"{name}_peak_bytes"] = peak_bytes(step, device, f"scaling|{n}|{name}")
        rows.append(row)
        print(
            f"  N={n:5d}  "
            + "  ".join(
                f"{b}: {row[f'{b}_ms']:8.1f} ms {(row[f'{b}_peak_bytes'] or 0) / 2**20:7.1f} MiB"
                for b in backends
            ),
            flush=True,
        )
    return rows


def _scaling_steps(
    n: int, device: torch.device, dtype, heads: int, head_dim: int, backends: tuple[str, ...]
) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    kw = {"device": device, "dtype": dtype, "requires_grad": True}
    q, k, v = (torch.randn(1, heads, n, head_dim, **kw) for _ in range(3))
    m = torch.randn(1, n, n, **kw)
    grad = torch.randn(1, heads, n, head_dim, device=device, dtype=dtype)
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "eager": lambda: eager_attention(q, k, v, AttendSpec(mask=m))[0],
        "fused": lambda: fused_attention(q, k, v, AttendSpec(mask=m))[0],
        "compiled_fused": lambda: compiled_fused_attention(q, k, v, AttendSpec(mask=m))[0],
    }
    for name in ("eager", "fused", "compiled_fused"):  # additive M
        fns[f"{name}_add"] = _add_fn(ATTENTION_BACKENDS[name], q, k, v, m)
    leaves = [q, k, v, m]
    if "flex" in backends:
        fns["flex"] = _flex_fn(q, k, v, m)
    for name, form in GEN_SCALING.items():
        if name in backends:
            x = torch.randn(1, n, heads * head_dim, **kw)
            gen = MaskGenerator.from_config(form.mask_config(2), heads * head_dim, n)
            gen.to(device, dtype)
            fns[name] = _generated_fn(q, k, v, x, gen)
            leaves += [x, *gen.parameters()]

    def make(fn: Callable) -> Callable[[], None]:
        def step() -> None:
            fn().backward(grad)
            for t in leaves:
                t.grad = None

        return step

    steps = {name: make(fns[name]) for name in backends if name != "matmuls"}
    if "matmuls" in backends:
        steps["matmuls"] = lambda: block_matmuls(q, k, v, grad)
    return steps


def _add_fn(attend: Callable, q, k, v, m):
    return lambda: attend(q, k, v, AttendSpec(mask=m, fusion="add"))[0]


def block_matmuls(q, k, v, dout, block_elems: int | None = None) -> None:
    """The seven matmuls of the fused kernel's forward + backward on its blocks, and nothing
    else: the floor of any blocked kernel built on torch matmuls (``matmuls`` line)."""
    B, H, nq, _ = q.shape
    with torch.no_grad():
        for bs, hs, rs in blocks(B, H, nq, k.shape[2], block_elems):
            qb, kb, vb, do = q[bs, hs, rs], k[bs, hs], v[bs, hs], dout[bs, hs, rs]
            s = qb @ kb.transpose(-2, -1)  # forward
            s @ vb
            s = qb @ kb.transpose(-2, -1)  # backward: recomputed logits, dP, dV, dQ, dK
            do @ vb.transpose(-2, -1)
            s.transpose(-2, -1) @ do
            s @ kb
            s.transpose(-2, -1) @ qb


# --precision: how M meets the logits under bf16 autocast (issue 28). "float32" is the chosen
# form (the generators' M and the fusion in float32); "offset" carries M as a bf16 deviation D
# from the identity, fused as x + x·D in float32 (eager only: the alternative not taken).
PRECISION_VARIANTS = {
    "eager, M bf16": ("eager", "bf16"),
    "eager, M float32 (chosen)": ("eager", "float32"),
    "eager, M = 1 + D, D bf16 (offset)": ("eager", "offset"),
    "fused, M bf16": ("fused", "bf16"),
    "fused, M float32 (chosen)": ("fused", "float32"),
}
DEVIATION_STD = 1e-4  # an identity-start mask after its first steps


def _eager_offset(q, k, v, d):
    """Eager attention with M carried as its deviation D from 1: softmax(x + x·D) V, the
    fusion in float32 from bf16 x and D."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    s = torch.addcmul(logits.float(), logits, d.unsqueeze(1))
    return s.softmax(dim=-1).to(q.dtype) @ v


def _saved_storage_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for the backward of ``fn()`` (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def bench_precision(
    device: torch.device, warmup: int, repeats: int, B: int = 2, H: int = 8, n: int = 512
) -> dict:
    """Under bf16 autocast, M (B, N, N) = 1 + D with D ~ N(0, 1e-4): each way of carrying M
    through eager / fused, forward+backward: time, saved bytes, peak, and the relative error of
    the deviation x·(M - 1) that the fusion applies (against float64)."""
    torch.manual_seed(0)
    kw = {"device": device, "dtype": torch.bfloat16, "requires_grad": True}
    q, k, v = (torch.randn(B, H, n, 64, **kw) for _ in range(3))
    grad = torch.randn(B, H, n, 64, device=device, dtype=torch.bfloat16)
    dev = torch.randn(B, n, n, device=device) * DEVIATION_STD
    masks = {
        "bf16": (1 + dev).to(torch.bfloat16).requires_grad_(),
        "float32": (1 + dev).requires_grad_(),
        "offset": dev.to(torch.bfloat16).requires_grad_(),
    }
    x = torch.randn(B, 1, n, n, device=device).to(torch.bfloat16)
    exact = x.double() * dev.double().unsqueeze(1)

    def fn_of(backend: str, form: str) -> Callable[[], torch.Tensor]:
        m = masks[form]
        if form == "offset":
            return lambda: _eager_offset(q, k, v, m)
        attend = ATTENTION_BACKENDS[backend]
        return lambda: attend(q, k, v, AttendSpec(mask=m))[0]

    def deviation_error(form: str) -> float:
        m = masks[form].detach()
        if form == "offset":
            deviation = x.float() * m.float().unsqueeze(1)
        else:  # the fusion in float32, as eager (type promotion) and fused (per block) run it
            fused, _ = fuse_scores(x.float(), m.unsqueeze(1), None, None, True, False)
            deviation = fused - x.float()
        return float((deviation.double() - exact).norm() / exact.norm())

    steps, fns = {}, {}
    for name, (backend, form) in PRECISION_VARIANTS.items():
        fns[name] = fn_of(backend, form)

        def step(fn=fns[name]) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = fn()
            out.backward(grad)
            for t in (q, k, v, *masks.values()):
                t.grad = None

        steps[name] = step
    seconds = interleaved_times(steps, device, warmup, repeats)
    rows = []
    for name, (backend, form) in PRECISION_VARIANTS.items():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            saved = _saved_storage_bytes(fns[name])
        rows.append(
            {
                "variant": name,
                "backend": backend,
                "mask": form,
                "time_ms": seconds[name] * 1e3,
                "saved_bytes": saved,
                "peak_bytes": peak_bytes(steps[name], device, f"precision|{name}"),
                "deviation_error": deviation_error(form),
            }
        )
    for r in rows:
        ref = next(x for x in rows if x["backend"] == r["backend"] and x["mask"] == "bf16")
        r["time_vs_bf16"] = r["time_ms"] / ref["time_ms"]
    return {
        "what": f"attention alone under bf16 autocast, B={B}, H={H}, N={n}, d=64, mul, "
        f"M = 1 + D (B, N, N), D ~ N(0, {DEVIATION_STD:g}), fwd+bwd",
        "rows": rows,
    }


def _generated_fn(q, k, v, x, gen: nn.Module):
    return lambda: fused_attention(q, k, v, AttendSpec(mask=gen(x)))[0]


def _flex_fn(q, k, v, m):
    from stamp.attention import flex_attention_backend

    return lambda: flex_attention_backend(q, k, v, AttendSpec(mask=m))[0]


def pick_best(rows: list[dict], shape: Shape) -> tuple[dict | None, dict | None]:
    """Best STAMP training row by time/FLOP, and the STAMP training row with the least
    attention memory (with why it exceeds plain SDPA's, if it does)."""
    stamp_rows = [r for r in rows if r["fusion"] and r["pass"] == "fwd+bwd"]
    best = min(stamp_rows, key=lambda r: r["overhead"], default=None)
    mem_rows = [r for r in stamp_rows if r["attn_memory_ratio"]]
    best_mem = min(mem_rows, key=lambda r: r["attn_memory_ratio"], default=None)
    if best_mem is not None:
        best_mem = dict(best_mem)
        m_bytes = shape.batch * shape.nq * shape.nk * 4
        plain = next(r for r in rows if r["variant"] == "plain sdpa")
        extra = best_mem["attn_memory_bytes"] - plain["attn_memory_bytes"]
        best_mem["reason"] = (
            f"saves {extra / 2**20:.1f} MiB more than plain SDPA "
            f"({extra / plain['attn_memory_bytes']:.2f}x its saved memory), of which M "
            f"(B·Nq·Nk, needed by the backward) is {m_bytes / 2**20:.1f} MiB"
        )
    return best, best_mem


def raise_recompile_limits(limit: int = 256) -> None:
    """flex is compiled per shape (dynamic=False): five shapes x two fusions plus the scaling
    curve exceed dynamo's default recompile limit (8), after which flex runs uncompiled."""
    import torch._dynamo as dynamo

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(limit, getattr(dynamo.config, name)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections", default="shapes,checkpoint,generators,params,scaling,precision"
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {list(SHAPES)}")
    parser.add_argument("--backends", default="eager,sdpa,fused,flex")
    parser.add_argument(
        "--generator-shapes", default=",".join(GEN_SHAPES), help="shapes of the generators section"
    )
    parser.add_argument(
        "--generator-forms", default=",".join(GEN_FORMS), help=f"subset of {list(GEN_FORMS)}"
    )
    parser.add_argument("--param-n", default=",".join(map(str, PARAM_N)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling-n", default=",".join(map(str, SCALING_N)))
    parser.add_argument(
        "--scaling-backends",
        default="sdpa,eager,fused,compiled_fused,gen_mlp,gen_lowrank",
        help="sdpa, eager, fused, compiled_fused, flex (mul; eager_add, fused_add, "
        "compiled_fused_add: additive M); gen_mlp / gen_lowrank: fused with a generator's M; "
        "matmuls: fused's block matmuls alone",
    )
    parser.add_argument("--checkpoint-backend", default="fused")
    parser.add_argument(
        "--batch-scale",
        type=float,
        default=1.0,
        help="multiply every shape's batch (e.g. 0.25 for a quick run)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--plot", type=Path, default=None, help="scaling plot (PNG)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting new shapes / sections / N after this many seconds (listed as skipped)",
    )
    parser.add_argument(
        "--no-cpu-peaks", action="store_true", help="skip the second process that reads CPU peaks"
    )
    parser.add_argument("--peaks-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_recompile_limits()
    global _peaks_from_child
    if args.device == "cpu" and args.peaks_only is None and not args.no_cpu_peaks:
        print("measuring CPU peaks in a second process ...", flush=True)
        _peaks_from_child = measure_cpu_peaks(list(argv if argv is not None else sys.argv[1:]))
    deadline = time.perf_counter() + (float("inf") if args.budget_s is None else args.budget_s)
    skipped: list[str] = []
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sections = set(args.sections.split(","))
    backends = set(args.backends.split(","))
    unknown = [s for s in f"{args.shapes},{args.generator_shapes}".split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
    unknown = [f for f in args.generator_forms.split(",") if f not in GEN_FORMS]
    if unknown:
        parser.error(f"unknown generator forms {unknown}; choose from {list(GEN_FORMS)}")
    forms = [GEN_FORMS[f] for f in args.generator_forms.split(",")]
    if MLP not in forms:  # the reference of the "vs MLP" ratios
        forms.insert(0, MLP)
    results: dict = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }

    def scaled(shape: Shape) -> Shape:
        if args.batch_scale == 1.0:
            return shape
        return Shape(**{**asdict(shape), "batch": max(1, round(shape.batch * args.batch_scale))})

    if "shapes" in sections:
        results["shapes"] = {}
        for key in args.shapes.split(","):
            if time.perf_counter() > deadline:
                skipped.append(f"shape {key}")
                continue
            shape = scaled(SHAPES[key])
            print(f"{shape.name}", flush=True)
            rows = bench_shape(shape, backends, device, args.warmup, args.repeats, dtype)
            best, best_mem = pick_best(rows, shape)
            results["shapes"][key] = {
                "shape": asdict(shape),
                "rows": rows,
                "best": best,
                "best_memory": best_mem,
            }
    if "checkpoint" in sections and time.perf_counter() > deadline:
        skipped.append("checkpoint")
    elif "checkpoint" in sections:
        shape = scaled(SHAPES["qvh_self"])
        print(f"depth-{shape.depth} generator, checkpointing ({shape.name})", flush=True)
        results["checkpoint"] = bench_checkpoint(
            shape, args.checkpoint_backend, device, args.warmup, args.repeats, dtype
        )
    if "generators" in sections:
        results["generators"] = {}
        for key in args.generator_shapes.split(","):
            if time.perf_counter() > deadline:
                skipped.append(f"generators {key}")
                continue
            shape = scaled(SHAPES[key])
            print(f"generators: {shape.name}", flush=True)
            rows = bench_shape(
                shape,
                backends,
                device,
                args.warmup,
                args.repeats,
                dtype,
                variants=generator_variants(forms),
                section="generators|",
            )
            results["generators"][key] = {"shape": asdict(shape), "rows": add_mlp_ratios(rows)}
    if "params" in sections:
        configs: dict[tuple[int, int, int], list[str]] = {}
        for key, shape in SHAPES.items():
            configs.setdefault((shape.dim, shape.depth, shape.heads), []).append(key)
        results["params"] = param_counts(
            {"/".join(keys): cfg for cfg, keys in configs.items()},
            tuple(int(n) for n in args.param_n.split(",")),
            forms,
        )
    if "scaling" in sections:
        ns = tuple(int(n) for n in args.scaling_n.split(","))
        names = tuple(args.scaling_backends.split(","))
        print("scaling (attention alone, B=1, H=4, d=64, mul)", flush=True)
        results["scaling"] = {
            "what": "attention alone (B=1, H=4, d=64; STAMP: mul, M (1, N, N) learnable; "
            "gen_*: fused, M from a depth-2 generator of X (1, N, 256)), fwd+bwd",
            "rows": bench_scaling(
                ns, device, args.warmup, args.repeats, dtype, backends=names, deadline=deadline
            ),
        }
        done = {r["n"] for r in results["scaling"]["rows"]}
        skipped += [f"scaling N={n}" for n in ns if n not in done]
        if args.plot and results["scaling"]["rows"] and args.peaks_only is None:
            plot_scaling(
                results["scaling"]["rows"],
                args.plot,
                f"STAMP attention scaling, {results['device']}",
            )
    if "precision" in sections and time.perf_counter() > deadline:
        skipped.append("precision")
    elif "precision" in sections:
        print("reduced precision: M under bf16 autocast", flush=True)
        results["precision"] = bench_precision(device, args.warmup, args.repeats)
    results["skipped"] = skipped
    if args.peaks_only is not None:
        args.peaks_only.write_text(json.dumps(_peaks_measured))
        return results
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_attention.json").write_text(json.dumps(results, indent=2))
    markdown = to_markdown(results)
    (args.out / "bench_attention.md").write_text(markdown)
    print("\n" + markdown)
    return results


if __name__ == "__main__":
    main()
