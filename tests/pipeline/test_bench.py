"""The benchmarks run on CPU and write their ratios; the target table marks misses; the GPU
benchmark skips cleanly without a GPU."""

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_script

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_attention  # noqa: E402
import bench_report  # noqa: E402

from stamp import LowRankMaskGenerator, MaskGenerator  # noqa: E402


def test_bench_attention_writes_ratios(tmp_path):
    proc = run_script(
        [
            "scripts/bench_attention.py",
            "--sections",
            "shapes,generators,params,scaling",
            "--shapes",
            "qvh_cross",
            "--generator-shapes",
            "qvh_cross",
            "--generator-forms",
            "lowrank16,mlp_head",
            "--param-n",
            "64,1024",
            "--backends",
            "eager,sdpa,fused",
            "--scaling-n",
            "32",
            "--scaling-backends",
            "sdpa,eager,fused,fused_add,matmuls,gen_mlp,gen_lowrank",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-scale",
            "0.125",
            "--out",
            str(tmp_path),
            "--plot",
            str(tmp_path / "scaling.png"),
            "--no-cpu-peaks",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench_attention.json").read_text())
    rows = {r["variant"]: r for r in results["shapes"]["qvh_cross"]["rows"]}
    assert rows["plain sdpa"]["time_ratio"] == 1.0 and rows["plain sdpa"]["flop_ratio"] == 1.0
    # plain eager does the same arithmetic as SDPA's math path
    assert rows["plain eager"]["flop_ratio"] == 1.0
    # STAMP adds the generator: depth 32 at width 256 over 75 queries, plus the fusion
    stamp = rows["stamp eager mul"]
    assert stamp["flop_ratio"] > 1.0 and stamp["attn_memory_ratio"] > 1.0
    assert rows["stamp sdpa add"]["flops"] == rows["stamp eager add"]["flops"]
    # fused is counted as the eager path (same arithmetic) and trains (fwd+bwd)
    assert rows["stamp fused mul"]["flops"] == stamp["flops"]
    assert rows["stamp fused mul"]["pass"] == "fwd+bwd"
    # the generator's own activations are excluded, the inputs it shares with the projections
    # are not: eager mul saves plain eager's tensors plus M (B x 75 x 32 floats) and the
    # logits before the fusion (H x that), nothing of the depth-32 stack
    extra = stamp["attn_memory_bytes"] - rows["plain eager"]["attn_memory_bytes"]
    m_bytes = 4 * 75 * 32 * 4
    assert extra == (1 + 8) * m_bytes
    gen = {r["variant"]: r for r in results["generators"]["qvh_cross"]["rows"]}
    mlp, lowrank = gen["mlp / eager mul"], gen["lowrank r16 / eager mul"]
    per_head = gen["mlp per-head / eager mul"]
    assert mlp["flops"] == stamp["flops"] and mlp["time_vs_mlp"] == 1.0
    # per head: M is (B, H, Nq, Nk), H times the shared one; lowrank's M is the MLP's size
    assert per_head["attn_memory_bytes"] - mlp["attn_memory_bytes"] == (8 - 1) * m_bytes
    assert lowrank["attn_memory_bytes"] == mlp["attn_memory_bytes"]
    assert lowrank["time_vs_mlp"] == pytest.approx(lowrank["time_ms"] / mlp["time_ms"])
    # in cross-attention the low-rank trunk also runs on the 32 key tokens (75 queries)
    assert 1.2 < lowrank["flop_vs_mlp"] < (75 + 32) / 75
    assert lowrank["generator_params"] == LowRankMaskGenerator.lowrank_parameters(256, 32, 16)
    assert per_head["generator_params"] == MaskGenerator.num_parameters(256, 32, 32, heads=8)
    assert gen["lowrank r16 / sdpa add"]["pass"] == "fwd+bwd"
    params = {(r["config"], r["generator"]): r for r in results["params"]}
    counts = {k[1]: r["params"] for k, r in params.items() if k[0] == "vit"}
    assert counts["lowrank r16"] == [24_609, 24_609]  # 2 x (768 x 16 + 16) + 1: no N
    assert counts["mlp"] == [768 * 64 + 64, 768 * 1024 + 1024]  # one output per key
    assert counts["mlp per-head"] == [12 * c for c in counts["mlp"]]
    scaling = results["scaling"]["rows"]
    assert [r["n"] for r in scaling] == [32] and scaling[0]["fused_ms"] > 0
    assert scaling[0]["gen_lowrank_ms"] > 0 and scaling[0]["gen_mlp_ms"] > 0
    assert scaling[0]["fused_add_ms"] > 0 and scaling[0]["matmuls_ms"] > 0
    assert (
        "| N | eager / sdpa | fused / sdpa | fused_add / sdpa |"
        in (tmp_path / "bench_attention.md").read_text()
    )
    assert (tmp_path / "scaling.png").stat().st_size > 0
    markdown = (tmp_path / "bench_attention.md").read_text()
    assert markdown.startswith("Device: cpu") and "## Targets" in markdown
    assert "### Generators at qvh_cross" in markdown and "| lowrank r16 | 24,609 |" in markdown
    # the report renders the same tables again from the JSON alone, without measuring
    again = tmp_path / "again"
    assert (
        bench_report.main(
            [
                str(tmp_path / "bench_attention.json"),
                "--md",
                str(again / "b.md"),
                "--plot",
                str(again / "s.png"),
            ]
        )
        == markdown
    )
    assert (again / "b.md").read_text() == markdown and (again / "s.png").stat().st_size > 0


def test_summary_marks_missed_targets_with_reason():
    row = {"variant": "stamp fused mul", "overhead": 1.5, "time_ratio": 3.0, "flop_ratio": 2.0}
    results = {
        "shapes": {
            "x": {
                "shape": {"name": "x"},
                "rows": [{"variant": "plain eager", "overhead": 1.4}],
                "best": row,
                "best_memory": {"variant": "stamp fused mul", "attn_memory_ratio": 1.1},
            }
        },
        "checkpoint": {
            "shape": {"depth": 32},
            "memory_ratio_ckpt": 1.5,
            "memory_ratio_no_ckpt": 5.0,
            "time_ratio_ckpt_vs_no_ckpt": 1.4,
        },
    }
    status = {r["what"]: r for r in bench_report.summary_rows(results)}
    time_row = next(r for k, r in status.items() if "time/FLOP" in k)
    assert time_row["status"] == "**missed**" and "1.40x" in time_row["reason"]
    assert next(r for k, r in status.items() if "attention memory" in k)["status"] == "met"
    ckpt = [r for k, r in status.items() if "checkpoint" in k or "its time" in k]
    assert [r["status"] for r in ckpt] == ["met", "**missed**"]


def test_bench_gpu_skips_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    proc = run_script(["scripts/bench_gpu.py", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0
    assert "no CUDA GPU" in proc.stdout and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_qvhighlights_side_by_side(tmp_path):
    """The official step and the project's steps run in one process; mask none has the
    official model's weights and nearly its FLOPs (the official layers count ~4% more here)."""
    proc = run_script(
        [
            "scripts/bench_qvhighlights.py",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--depth",
            "2",
            "--skip-eval",
            "--json",
            str(tmp_path / "q.json"),
            "--md",
            str(tmp_path / "q.md"),
            "--plot",
            str(tmp_path / "q.png"),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["model"]: r for r in json.loads((tmp_path / "q.json").read_text())["train"]}
    official = rows["official QD-DETR (nn.MultiheadAttention)"]
    none = rows["project, mask none"]
    assert official["params"] == none["params"]
    assert abs(official["gflop_per_step"] - none["gflop_per_step"]) < 0.1 * none["gflop_per_step"]
    assert len(rows) == 4 and "official speed" in (tmp_path / "q.md").read_text()
    assert (tmp_path / "q.png").stat().st_size > 0


def test_cpu_peak_reads_a_known_allocation(tmp_path):
    """The peaks process (fixed mmap threshold) sees a step that holds 2 x 40 MB at once, not
    the 3 x 40 MB it allocates in all."""
    code = (
        "import sys, torch; sys.path.insert(0, 'scripts'); import bench_attention as b\n"
        "a = torch.ones(10, 1000, 1000)\n"
        "def step():\n"
        "    x = a * 2; y = x + 1; del x; z = y * 2\n"
        "print(b.peak_bytes(step, torch.device('cpu'), 'k'))\n"
    )
    proc = run_script(["-c", code], env={"MALLOC_MMAP_THRESHOLD_": "65536"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert 75e6 < peak < 90e6


def test_bench_gpu_command_line_is_valid(tmp_path):
    """The GPU run's arguments parse (run here on CPU with a zero budget: every part skipped)."""
    import bench_gpu

    args = bench_gpu.gpu_args(tmp_path, "bfloat16", 10, 240.0)
    results = bench_attention.main([*args, "--device", "cpu", "--budget-s", "0", "--no-cpu-peaks"])
    assert results["dtype"] == "bfloat16"
    assert "shape swinbert" in results["skipped"] and "checkpoint" in results["skipped"]
    assert "scaling N=4096" in results["skipped"]
    assert "generators swinbert" in results["skipped"] and len(results["params"]) == 4 * 5


def test_bench_qvhighlights_says_when_the_annotations_are_missing(tmp_path, capsys):
    """A missing --gt stops with what to pass (was: the evaluation benchmark silently left out)."""
    from scripts.bench_qvhighlights import main

    assert main(["--skip-train", "--gt", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "none.jsonl" in err and "--gt" in err and "--skip-eval" in err
    assert main(["--skip-train", "--skip-eval", "--json", str(tmp_path / "r.json")]) == 0
    assert "eval" not in json.loads((tmp_path / "r.json").read_text())


def test_bench_precision_measures_both_forms_of_m():
    """The reduced-precision section (issue 28): under bf16 autocast a bf16 M = 1 + 1e-4·z
    loses its deviation (error 1: every entry rounds to 1), a float32 M (chosen) and a bf16
    offset D keep it; float32 M saves exactly M's 2 extra bytes per entry."""
    import torch

    B, n = 1, 32
    result = bench_attention.bench_precision(torch.device("cpu"), 0, 1, B=B, H=2, n=n)
    rows = {r["variant"]: r for r in result["rows"]}
    assert len(rows) == len(bench_attention.PRECISION_VARIANTS)
    for backend in ("eager", "fused"):
        bf16, fp32 = rows[f"{backend}, M bf16"], rows[f"{backend}, M float32 (chosen)"]
        assert bf16["deviation_error"] > 0.9 and fp32["deviation_error"] < 0.01
        assert fp32["saved_bytes"] - bf16["saved_bytes"] == B * n * n * 2
        assert bf16["time_vs_bf16"] == 1.0
    offset = rows["eager, M = 1 + D, D bf16 (offset)"]
    assert offset["deviation_error"] < 0.01
    assert offset["saved_bytes"] == rows["eager, M bf16"]["saved_bytes"]


def test_block_matmuls_are_the_fused_kernels_matmuls():
    """The ``matmuls`` scaling line runs 7 matmuls per block of the fused kernel's blocks."""
    import torch

    q = torch.randn(1, 2, 16, 8)
    calls = []

    class CountMatmuls(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("__matmul__", "matmul"):
                calls.append(func)
            return func(*args, **(kwargs or {}))

    with CountMatmuls():
        bench_attention.block_matmuls(q, q, q, q, block_elems=8 * 16)
    assert len(calls) == 7 * len(bench_attention.blocks(1, 2, 16, 16, 8 * 16)) == 7 * 4
