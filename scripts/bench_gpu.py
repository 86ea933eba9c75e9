"""The GPU benchmark in one go (``make bench-gpu``): bf16, CUDA, every backend with its backward
(flex for both fusions, fused, eager, SDPA), the five paper shapes, the depth-32 generator with
checkpointing and the scaling curve N = 64 ... 4096 (flex included), within a time budget
(default 280 s of benchmarking; what does not fit is listed as skipped). Tables, JSON and the
scaling plot go to one folder. Without a CUDA GPU it prints why and exits 0.

    python scripts/bench_gpu.py --out bench_results/gpu [--budget-s 280]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

NO_GPU = "bench_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); skipped."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu"))
    parser.add_argument("--budget-s", type=float, default=280.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU, flush=True)
        return 0
    import bench_attention

    start = time.perf_counter()
    bench_attention.main(
        [
            "--device",
            "cuda",
            "--dtype",
            args.dtype,
            "--backends",
            "eager,sdpa,fused,flex",
            "--scaling-backends",
            "sdpa,eager,fused,flex",
            "--checkpoint-backend",
            "flex",
            "--warmup",
            "2",
            "--repeats",
            str(args.repeats),
            "--budget-s",
            str(args.budget_s),
            "--out",
            str(args.out),
            "--plot",
            str(args.out / "bench_scaling_gpu.png"),
        ]
    )
    print(f"bench_gpu: {time.perf_counter() - start:.0f} s; tables in {args.out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
