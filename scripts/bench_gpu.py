"""The GPU benchmark in one go (``make bench-gpu``): bf16, CUDA, every backend with its backward
(flex for both fusions, fused, eager, SDPA), the five paper shapes, the depth-32 generator with
checkpointing, the generator forms (``mask.generator=mlp / lowrank``, rank 16 and 64,
``mask.per_head``) on every backend against plain SDPA and against the MLP generator, their
parameter counts against N, the scaling curve N = 64 ... 4096 (flex, the compiled fused core
and the MLP / low-rank generator lines included) and the reduced-precision comparison (M bf16 /
float32 / bf16 offset under autocast), within a time budget (default 240 s of benchmarking;
what does not fit is listed as skipped). Tables, JSON and the scaling plot go to one folder.
Without a CUDA GPU it prints why and exits 0.

    python scripts/bench_gpu.py --out bench_results/gpu [--budget-s 240]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

NO_GPU = "bench_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); skipped."


def gpu_args(out: Path, dtype: str, repeats: int, budget_s: float) -> list[str]:
    """The ``bench_attention.py`` command line of the GPU run."""
    return [
        "--device",
        "cuda",
        "--dtype",
        dtype,
        "--sections",
        "shapes,checkpoint,generators,params,scaling,precision",
        "--backends",
        "eager,sdpa,fused,flex",
        "--generator-shapes",
        "ad,qvh_self,qvh_cross,vit,swinbert",
        "--generator-forms",
        "mlp,mlp_head,lowrank16,lowrank16_head,lowrank64",
        "--scaling-backends",
        "sdpa,eager,fused,compiled_fused,flex,gen_mlp,gen_lowrank",
        "--checkpoint-backend",
        "flex",
        "--warmup",
        "2",
        "--repeats",
        str(repeats),
        "--budget-s",
        str(budget_s),
        "--out",
        str(out),
        "--plot",
        str(out / "bench_scaling_gpu.png"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu"))
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU, flush=True)
        return 0
    import bench_attention

    start = time.perf_counter()
    bench_attention.main(gpu_args(args.out, args.dtype, args.repeats, args.budget_s))
    print(f"bench_gpu: {time.perf_counter() - start:.0f} s; tables in {args.out}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
