"""Benchmark STAMP attention against plain SDPA at the paper's shapes.

For every shape, one attention module (projections + attention + output projection; STAMP adds
its mask generator of the task's depth) is timed forward+backward (forward only where a backend
has no backward on this device), its FLOPs counted (torch.utils.flop_counter, SDPA under the
MATH backend; flex is not traced by the counter, so its FLOPs are the eager path's: the same
arithmetic), and its activation memory measured (bytes saved for backward; the CUDA peak on GPU).
Everything is reported as a ratio to plain SDPA measured in the same run, so a time ratio can be
read against its FLOP ratio on a noisy machine.

    python scripts/bench_attention.py --out bench_results            # all shapes and backends
    python scripts/bench_attention.py --shapes qvh_self,vit --backends eager,sdpa --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp import AttentionConfig, MaskGenerator, StampAttention  # noqa: E402


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

VARIANTS = [  # (label, backend, fusion or None for plain attention)
    ("plain sdpa", "sdpa", None),
    ("plain eager", "eager", None),
    ("stamp eager mul", "eager", "mul"),
    ("stamp eager add", "eager", "add"),
    ("stamp sdpa add", "sdpa", "add"),
    ("stamp flex mul", "flex", "mul"),
    ("stamp flex add", "flex", "add"),
]


class Block(nn.Module):
    """One attention module with (optionally) its STAMP generator, as a layer runs it."""

    def __init__(self, shape: Shape, backend: str, fusion: str | None) -> None:
        super().__init__()
        self.attn = StampAttention(
            shape.dim,
            shape.heads,
            cross=shape.cross,
            fusion=fusion or "mul",
            attention=AttentionConfig(backend=backend),
        )
        self.generator = (
            MaskGenerator(shape.dim, shape.nk, shape.depth) if fusion is not None else None
        )

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        mask = None if self.generator is None else self.generator(x, n_keys=self.nk(x, ctx))
        return self.attn(x, ctx, mask=mask)

    @staticmethod
    def nk(x: torch.Tensor, ctx: torch.Tensor | None) -> int:
        return (x if ctx is None else ctx).shape[1]


def inputs(shape: Shape, device: torch.device, grad: bool):
    x = torch.randn(shape.batch, shape.nq, shape.dim, device=device, requires_grad=grad)
    ctx = None
    if shape.cross:
        ctx = torch.randn(shape.batch, shape.nk, shape.dim, device=device, requires_grad=grad)
    return x, ctx


def has_backward(backend: str, device: torch.device) -> bool:
    return not (backend == "flex" and device.type == "cpu")


def count_flops(block: Block, shape: Shape, device: torch.device, backward: bool) -> int:
    x, ctx = inputs(shape, device, grad=backward)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = block(x, ctx)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def saved_bytes(block: Block, shape: Shape, device: torch.device) -> int:
    """Bytes of tensors autograd saves for backward (training activation memory)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x, ctx = inputs(shape, device, grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, ctx)
    return total


def time_it(
    block: Block, shape: Shape, device: torch.device, backward: bool, warmup: int, repeats: int
) -> float:
    x, ctx = inputs(shape, device, grad=backward)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        if backward:
            out = block(x, ctx)
            out.sum().backward()
        else:
            with torch.no_grad():
                block(x, ctx)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(
    shape: Shape, backends: set[str], device: torch.device, warmup: int, repeats: int
) -> list[dict]:
    rows = []
    eager_flops: dict[tuple[str | None, bool], int] = {}
    for label, backend, fusion in VARIANTS:
        if backend not in backends and label != "plain sdpa":
            continue
        torch.manual_seed(0)
        block = Block(shape, backend, fusion).to(device)
        backward = has_backward(backend, device)
        if backend == "flex":  # not traced by the flop counter: same arithmetic as eager
            flops = eager_flops.get((fusion, backward))
            if flops is None:
                flops = count_flops(
                    Block(shape, "eager", fusion).to(device), shape, device, backward
                )
        else:
            flops = count_flops(block, shape, device, backward)
            if backend == "eager":
                eager_flops[(fusion, backward)] = flops
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = time_it(block, shape, device, backward, warmup, repeats)
        memory = (
            torch.cuda.max_memory_allocated()
            if device.type == "cuda"
            else saved_bytes(block, shape, device)
            if backward
            else None
        )
        rows.append(
            {
                "variant": label,
                "backend": backend,
                "fusion": fusion,
                "pass": "fwd+bwd" if backward else "fwd",
                "time_ms": seconds * 1e3,
                "flops": flops,
                "memory_bytes": memory,
            }
        )
        print(
            f"  {label:<16} {rows[-1]['pass']:<7} {seconds * 1e3:9.2f} ms  "
            f"{flops / 1e9:8.3f} GFLOP",
            flush=True,
        )
    add_ratios(rows, shape, device, warmup, repeats, backends)
    return rows


def add_ratios(
    rows: list[dict],
    shape: Shape,
    device: torch.device,
    warmup: int,
    repeats: int,
    backends: set[str],
) -> None:
    """Ratios to plain SDPA with the same pass (forward-only rows get a forward-only baseline)."""
    base = {r["pass"]: r for r in rows if r["variant"] == "plain sdpa"}
    if any(r["pass"] == "fwd" for r in rows):
        block = Block(shape, "sdpa", None).to(device)
        base["fwd"] = {
            "time_ms": time_it(block, shape, device, False, warmup, repeats) * 1e3,
            "flops": count_flops(block, shape, device, False),
            "memory_bytes": None,
        }
    for r in rows:
        b = base[r["pass"]]
        r["time_ratio"] = r["time_ms"] / b["time_ms"]
        r["flop_ratio"] = r["flops"] / b["flops"]
        r["overhead"] = r["time_ratio"] / r["flop_ratio"]  # 1.0 = no cost beyond arithmetic
        r["memory_ratio"] = (
            r["memory_bytes"] / b["memory_bytes"]
            if r["memory_bytes"] and b.get("memory_bytes")
            else None
        )


def to_markdown(results: dict) -> str:
    lines = [
        f"Device: {results['device']}; torch {results['torch']}; "
        f"median of {results['repeats']} runs after {results['warmup']} warm-up.",
        "",
    ]
    for entry in results["shapes"].values():
        s = entry["shape"]
        lines += [
            f"### {s['name']}: B={s['batch']}, Nq={s['nq']}, Nk={s['nk']}, D={s['dim']}, "
            f"H={s['heads']}, generator depth {s['depth']}",
            "",
            "| variant | pass | time (ms) | time ratio | FLOP ratio | time/FLOP ratio "
            "| memory ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            mem = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] else "-"
            lines.append(
                f"| {r['variant']} | {r['pass']} | {r['time_ms']:.2f} | "
                f"{r['time_ratio']:.2f} | {r['flop_ratio']:.2f} | {r['overhead']:.2f} | "
                f"{mem} |"
            )
        best = entry.get("best")
        if best:
            verdict = "meets" if best["overhead"] <= 1.1 else "misses"
            lines += [
                "",
                f"Best STAMP (fwd+bwd): {best['variant']} at {best['overhead']:.2f} x its "
                f"FLOP ratio ({verdict} the 1.1 x target).",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {list(SHAPES)}")
    parser.add_argument("--backends", default="eager,sdpa,flex")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--batch-scale",
        type=float,
        default=1.0,
        help="multiply every shape's batch (e.g. 0.25 for a quick run)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = set(args.backends.split(","))
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
    results = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "shapes": {},
    }
    for key in args.shapes.split(","):
        shape = SHAPES[key]
        if args.batch_scale != 1.0:
            shape = Shape(
                **{**asdict(shape), "batch": max(1, round(shape.batch * args.batch_scale))}
            )
        print(f"{shape.name}", flush=True)
        rows = bench_shape(shape, backends, device, args.warmup, args.repeats)
        stamp_rows = [r for r in rows if r["fusion"] and r["pass"] == "fwd+bwd"]
        best = min(stamp_rows, key=lambda r: r["time_ratio"], default=None)
        results["shapes"][key] = {"shape": asdict(shape), "rows": rows, "best": best}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_attention.json").write_text(json.dumps(results, indent=2))
    markdown = to_markdown(results)
    (args.out / "bench_attention.md").write_text(markdown)
    print("\n" + markdown)
    return results


if __name__ == "__main__":
    main()
