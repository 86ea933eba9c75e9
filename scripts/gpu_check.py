"""``make gpu-check``: verify every GPU path in one command (<= 5 min on one GPU) and write a
report (markdown + JSON).

Checks (``--checks``, in this order):

* ``attention``: flex attention (and the fused kernel) forward and backward against the eager
  path at the paper's shapes (``bench_attention.SHAPES``) in bf16 (M bf16 as under
  bf16-true, and M float32 as under bf16-mixed) and fp32: the output and the
  gradients of Q, K, V, M (or of the factors of a low-rank M) and the bias; both fusions, both
  orders, key padding, shared / per-head / low-rank masks, spread over the shapes (``CASES``).
  Reference: the eager path in float64 on the same inputs; a backend passes when its error is
  within ``ERROR_FACTOR`` x the eager path's own error in the same dtype (or under the dtype's
  floor), the usual test of a fused kernel against a reference in reduced precision.
* ``steps``: one training step (``trainer.fast_dev_run=1``) of every task's tiny experiment
  with ``trainer=gpu`` (bf16-mixed), and MSR-VTT's 16-mixed (its paper setting); the tiny data
  are generated first (the generators of scripts/ and tasks/*/synthetic.py).
* ``resume``: the demo trained 2 epochs in one go and interrupted after epoch 1 then resumed
  (``ckpt_path=last``) with ``trainer.deterministic=true``: the same metrics.
* ``ddp``: the demo over 2 GPUs (``trainer=ddp trainer.devices=2``) where two are visible.
* ``bench``: ``make bench-gpu`` (scripts/bench_gpu.py) in the time that is left.

Without a CUDA GPU (``--device cuda``, the default) it prints one "no GPU" line and exits 0.
``--device cpu`` runs the same checks on the CPU (flex forward only: torch has no CPU backward
for it; steps under ``trainer=cpu`` with CPU autocast), which is how the tests exercise them.

    python scripts/gpu_check.py --out bench_results/gpu_check
    python scripts/gpu_check.py --device cpu --checks steps --tasks demo --out /tmp/check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_attention import SHAPES, Shape  # noqa: E402

from stamp import AttendSpec, eager_attention  # noqa: E402
from stamp.attention import ATTENTION_BACKENDS  # noqa: E402

NO_GPU = (
    "gpu_check: no GPU here (torch.cuda.is_available() is False); nothing checked. "
    "Run it on a machine with a CUDA GPU, or with --device cpu for the CPU variant."
)
CHECKS = ("attention", "steps", "resume", "ddp", "bench")
TASKS = ("demo", "imagenet", "msrvtt", "mad_ad", "qvhighlights")
ERROR_FACTOR = 2.0  # backend error <= this x the eager path's error in the same dtype ...
ERROR_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # ... or this


@dataclass(frozen=True)
class Case:
    """One attention comparison: a paper shape and the STAMP settings checked on it."""

    shape: str  # key of bench_attention.SHAPES
    fusion: str
    order: str
    mask: str  # shared (B, Nq, Nk), per_head (B, H, Nq, Nk) or lowrank (f gᵀ, r = 8)
    padding: bool


# every setting appears at least once; the bias is present everywhere, so the order matters
CASES = (
    Case("ad", "mul", "mask_first", "shared", True),
    Case("qvh_self", "mul", "bias_first", "per_head", True),
    Case("qvh_cross", "add", "mask_first", "lowrank", True),
    Case("vit", "add", "bias_first", "shared", False),
    Case("swinbert", "mul", "bias_first", "lowrank", True),
    Case("swinbert", "add", "mask_first", "per_head", True),
)


@dataclass
class Result:
    """One check's outcome: ``ok``, ``failed`` or ``skipped`` (with why), and its numbers."""

    name: str
    status: str
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


# (label, dtype of q / k / v, dtype of M and the bias): "bf16, M fp32" is bf16-mixed training,
# where the generators give a float32 M (and the bias stays float32)
DTYPES = (
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("bf16, M fp32", torch.bfloat16, torch.float32),
    ("fp32", torch.float32, torch.float32),
)


def _leaves(
    case: Case, shape: Shape, device, dtype, mask_dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, d = shape.batch, shape.heads, shape.dim // shape.heads

    def leaf(*size, scale: float = 1.0, mask: bool = True):
        return (torch.randn(*size, generator=g) * scale).to(device, mask_dtype if mask else dtype)

    out = {n: leaf(B, H, shape.nq if n == "q" else shape.nk, d, mask=False) for n in "qkv"}
    out["bias"] = leaf(shape.nq, shape.nk, scale=0.5)
    if case.mask == "shared":
        out["m"] = leaf(B, shape.nq, shape.nk, scale=0.5) + (1.0 if case.fusion == "mul" else 0.0)
    elif case.mask == "per_head":
        out["m"] = leaf(B, H, shape.nq, shape.nk, scale=0.5) + (case.fusion == "mul")
    else:
        out["f"], out["g"] = leaf(B, shape.nq, 8, scale=0.3), leaf(B, shape.nk, 8, scale=0.3)
    return out


def _attend(fn: Callable, case: Case, named: dict, pad, weight, backward: bool) -> dict:
    named = {k: t.detach().clone().requires_grad_(backward) for k, t in named.items()}
    m = named.get("m")
    if m is None:  # low-rank M = 1 (mul) + f gᵀ
        m = named["f"] @ named["g"].transpose(-2, -1) + (case.fusion == "mul")
    spec = AttendSpec(m, case.fusion, case.order, key_padding_mask=pad, attn_bias=named["bias"])
    out, _ = fn(named["q"], named["k"], named["v"], spec)
    result = {"out": out.detach()}
    if backward:
        (out.float() * weight).sum().backward()
        result.update({f"d{k}": t.grad for k, t in named.items()})
    return result


def _error(got: torch.Tensor | None, ref: torch.Tensor) -> float:
    """Relative error in the Frobenius norm (NaN-free inputs); inf for a missing gradient."""
    if got is None:
        return float("inf")
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def check_attention(
    device: torch.device,
    dtypes: tuple[tuple[str, torch.dtype, torch.dtype], ...] = DTYPES,
    cases: tuple[Case, ...] = CASES,
    backends: tuple[str, ...] = ("flex", "fused"),
    shapes: dict[str, Shape] | None = None,
) -> list[Result]:
    """Each backend against the eager path (float64 reference) for every case and dtype."""
    shapes = shapes or SHAPES
    results = []
    for case in cases:
        shape = shapes[case.shape]
        for label, dtype, mask_dtype in dtypes:
            start = time.perf_counter()
            padding = "pad" if case.padding else "no-pad"
            name = f"attention {case.shape} {case.fusion} {case.order} {case.mask} {padding} "
            name += label
            named = _leaves(case, shape, device, dtype, mask_dtype)
            pad = None
            if case.padding:
                pad = torch.zeros(shape.batch, shape.nk, dtype=torch.bool, device=device)
                pad[0, -max(1, shape.nk // 5) :] = True  # no fully padded row: no NaN
            g = torch.Generator(device="cpu").manual_seed(1)
            weight = torch.randn(
                shape.batch, shape.heads, shape.nq, shape.dim // shape.heads, generator=g
            ).to(device)
            ref64 = {k: t.double() for k, t in named.items()}
            ref = _attend(eager_attention, case, ref64, pad, weight.double(), True)
            eager = _attend(eager_attention, case, named, pad, weight, True)
            detail: dict = {"eager": {k: _error(eager[k], ref[k]) for k in ref}}
            failed = []
            floor = ERROR_FLOOR[dtype]
            for backend in backends:
                backward = not (backend == "flex" and device.type == "cpu")
                try:
                    got = _attend(ATTENTION_BACKENDS[backend], case, named, pad, weight, backward)
                except Exception as error:  # noqa: BLE001 - reported as a failure
                    detail[backend] = {"error": f"{type(error).__name__}: {error}"}
                    failed.append(backend)
                    continue
                errors = {k: _error(got[k], ref[k]) for k in got}
                detail[backend] = errors
                if not backward:
                    detail[backend]["backward"] = "skipped: torch has no CPU backward for flex"
                bad = [
                    k
                    for k, e in errors.items()
                    if e > max(ERROR_FACTOR * detail["eager"][k], floor)
                ]
                if bad:
                    failed.append(f"{backend} ({', '.join(bad)})")
            status = "failed" if failed else "ok"
            if failed:
                detail["failed"] = failed
            results.append(Result(name, status, time.perf_counter() - start, detail))
            print(f"  {status:6s} {name}", flush=True)
    return results


# --------------------------------------------------------------------------- tiny training runs
def tiny_run(task: str, data: Path) -> list[str]:
    """The overrides of ``task``'s tiny experiment (the tests' settings), generating its tiny
    data under ``data`` first."""
    data.mkdir(parents=True, exist_ok=True)
    quiet = ["logger=csv", "callbacks.progress_bar=null"]
    if task == "demo":
        return [
            "task=demo",
            "mask=multilayer",
            "data.num_train=64",
            "data.num_val=32",
            "data.num_test=32",
            "data.batch_size=16",
            "model.dim=32",
            "model.ffn_dim=64",
            *quiet,
        ]
    if task == "imagenet":
        from scripts.make_imagenet_folder import make_imagenet_folder

        root = data / "imagenet_tiny"
        if not root.exists():
            make_imagenet_folder(root, num_classes=4, train_per_class=2, val_per_class=1, size=40)
        return ["experiment=imagenet_tiny", "mask=multilayer", f"data.root={root}", *quiet]
    if task == "msrvtt":
        from scripts.make_msrvtt_videos import make_dataset

        root = data / "msrvtt_tiny"
        if not root.exists():
            make_dataset(root)
        return [
            "experiment=msrvtt_tiny",
            "mask=multilayer",
            f"data.root={root}",
            "test=false",
            "+module.metrics.metrics=[BLEU_4,CIDEr]",
            "module.metrics.tokenize=simple",
            *quiet,
        ]
    if task == "mad_ad":
        from tasks.mad_ad.synthetic import build_tiny_llama, write_synthetic_mad

        mad, llama = data / "mad", data / "tiny_llama"
        if not mad.exists():
            write_synthetic_mad(mad, train_movies=1, test_movies=1, ads_per_movie=16, dim=16)
        if not llama.exists():
            build_tiny_llama(llama)
        return [
            "experiment=mad_ad_tiny",
            "mask=multilayer",
            f"data.root={mad}",
            f"model.llm_path={llama}",
            "model.visual_dim=16",
            "model.audio_dim=16",
            "model.dim=32",
            "model.num_queries=4",
            "data.batch_size=8",
            "data.limit_train=8",
            "data.eval_batch_size=32",
            "module.max_new_tokens=2",
            "module.bertscore_model=null",
            *quiet,
        ]
    if task == "qvhighlights":
        from tasks.qvhighlights.synthetic import write_synthetic_features

        root = data / "qvh"
        if not (root / "annotations").exists():
            ann = ROOT / "data" / "qvhighlights"
            files = [ann / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
            dims = {"slowfast_features": 16, "clip_features": 8}
            write_synthetic_features(files, root, dims, text_dim=8, seed=0, limit=16)
        return [
            "task=qvhighlights",
            "mask=multilayer",
            "mask.depth=2",
            f"data.annotation_dir={root / 'annotations'}",
            f"data.feature_dir={root}",
            "data.v_feat_dim=24",
            "data.t_feat_dim=8",
            "data.num_workers=0",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "model.hidden_dim=32",
            "model.num_heads=4",
            "model.ffn_dim=64",
            *quiet,
        ]
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def device_overrides(device: torch.device, precision: str) -> list[str]:
    """``trainer=gpu`` with ``precision`` on CUDA; on the CPU ``trainer=cpu`` with the same
    precision (Lightning runs 16-mixed there as bf16 autocast)."""
    trainer = "trainer=gpu" if device.type == "cuda" else "trainer=cpu"
    return [trainer, f"trainer.precision={precision}"]


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    cwd = os.getcwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def train_once(overrides: list[str], out: Path) -> dict:
    """train(cfg) in this process, in ``out`` (as the tests run it)."""
    from tasks.common.runtime.compose import compose_config, without_hydra
    from tasks.common.runtime.pipeline import train

    cfg = compose_config(overrides, out)
    with _inside(out):
        return train(without_hydra(cfg))


def check_steps(
    device: torch.device,
    work: Path,
    tasks: tuple[str, ...] = TASKS,
    runs: tuple[tuple[str, str], ...] | None = None,
) -> list[Result]:
    """One training step (and one validation batch) of each task's tiny experiment."""
    if runs is None:
        runs = tuple((t, "bf16-mixed") for t in tasks)
        if "msrvtt" in tasks:
            runs += (("msrvtt", "16-mixed"),)
    results = []
    for task, precision in runs:
        start = time.perf_counter()
        name = f"step {task} {precision}"
        try:
            overrides = tiny_run(task, work / "data")
            overrides += [*device_overrides(device, precision), "+trainer.fast_dev_run=1"]
            record = train_once(overrides, work / "runs" / f"{task}_{precision}")
            loss = {k: v for k, v in record.get("metrics", {}).items() if "loss" in k}
            finite = all(v == v and abs(v) != float("inf") for v in loss.values())
            status = "ok" if record.get("status") == "ok" and finite else "failed"
            detail = {"precision": record.get("precision"), "losses": loss}
        except Exception as error:  # noqa: BLE001 - reported
            status, detail = "failed", {"error": f"{type(error).__name__}: {error}"}
            detail["traceback"] = traceback.format_exc(limit=-3)
        results.append(Result(name, status, time.perf_counter() - start, detail))
        print(f"  {status:6s} {name}", flush=True)
    return results


def check_resume(device: torch.device, work: Path, precision: str = "bf16-mixed") -> Result:
    """The demo, 2 epochs in one go vs interrupted after epoch 1 and resumed, with
    ``trainer.deterministic=true``: the same final metrics."""
    from omegaconf import open_dict

    from tasks.common.runtime.compose import compose_config, without_hydra
    from tasks.common.runtime.pipeline import train

    start = time.perf_counter()
    overrides = tiny_run("demo", work / "data") + device_overrides(device, precision)
    overrides += ["trainer.max_epochs=2", "trainer.deterministic=true", "model.dropout=0.2"]
    try:
        full = train_once(overrides, work / "resume_full")
        out = work / "resume_interrupted"
        cfg = compose_config(overrides, out)
        with open_dict(cfg):
            cfg.callbacks.interrupt = {
                "_target_": "tasks.common.runtime.callbacks.InterruptAtEpoch",
                "epoch": 1,
            }
        with _inside(out), contextlib.suppress(RuntimeError):
            train(without_hydra(cfg))
        resumed = train_once([*overrides, "ckpt_path=last"], out)
        keys = ("val/acc", "val/loss", "train/loss_epoch")
        diffs = {k: abs(resumed["metrics"][k] - full["metrics"][k]) for k in keys}
        exact = all(d == 0.0 for d in diffs.values())
        status = "ok" if exact else "failed"
        detail = {"metrics_abs_diff": diffs, "epochs": [full["epochs"], resumed["epochs"]]}
    except Exception as error:  # noqa: BLE001
        status, detail = "failed", {"error": f"{type(error).__name__}: {error}"}
    print(f"  {status:6s} resume", flush=True)
    return Result("resume (deterministic)", status, time.perf_counter() - start, detail)


def check_ddp(work: Path, timeout_s: float = 180) -> Result:
    """The demo over 2 GPUs (train.py in a subprocess, NCCL) where two are visible."""
    if torch.cuda.device_count() < 2:
        return Result("ddp 2 GPUs", "skipped", detail={"why": "fewer than 2 GPUs visible"})
    start = time.perf_counter()
    out = work / "ddp"
    args = tiny_run("demo", work / "data") + ["trainer=ddp", "trainer.devices=2"]
    args += ["trainer.max_epochs=1", f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    record = {}
    if (out / "results.json").exists():
        record = json.loads((out / "results.json").read_text())
    ok = proc.returncode == 0 and record.get("status") == "ok"
    detail = {"returncode": proc.returncode, "effective_batch": record.get("effective_batch")}
    if not ok:
        detail["stderr_tail"] = proc.stderr[-2000:]
    return Result("ddp 2 GPUs", "ok" if ok else "failed", time.perf_counter() - start, detail)


def check_bench(out: Path, budget_s: float) -> Result:
    """``make bench-gpu`` with the time that is left."""
    start = time.perf_counter()
    args = [str(ROOT / "scripts" / "bench_gpu.py"), "--out", str(out), "--budget-s", str(budget_s)]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    detail = {"returncode": proc.returncode, "tables": str(out), "stdout_tail": proc.stdout[-800:]}
    status = "ok" if proc.returncode == 0 else "failed"
    return Result("bench-gpu", status, time.perf_counter() - start, detail)


# --------------------------------------------------------------------------------- report
def write_report(results: list[Result], out: Path, header: dict) -> tuple[Path, Path]:
    """gpu_check.md (a table) and gpu_check.json (every number) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**header, "results": [asdict(r) for r in results]}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    lines = [
        f"# gpu-check ({header['device']}, torch {header['torch']})",
        "",
        f"{sum(r.status == 'ok' for r in results)} ok, "
        f"{sum(r.status == 'failed' for r in results)} failed, "
        f"{sum(r.status == 'skipped' for r in results)} skipped; {header['seconds']:.0f} s",
        "",
        "| check | status | s | worst error / detail |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {_summary(r)} |")
    md_path = out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def _summary(r: Result) -> str:
    if "error" in r.detail:
        return r.detail["error"][:120].replace("|", "/")
    parts = []
    for backend, errors in r.detail.items():
        if (
            isinstance(errors, dict)
            and errors
            and all(isinstance(v, float) for v in errors.values())
        ):
            worst = max(errors, key=errors.get)
            parts.append(f"{backend} {worst} {errors[worst]:.1e}")
    if parts:
        return "; ".join(parts)
    return json.dumps({k: v for k, v in r.detail.items() if k != "traceback"}, default=str)[:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"subset of {CHECKS}")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {TASKS}")
    parser.add_argument("--backends", default="flex,fused", help="attention backends vs eager")
    parser.add_argument("--out", type=Path, default=Path("bench_results/gpu_check"))
    parser.add_argument("--budget-s", type=float, default=300.0, help="the whole check")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, flush=True)
        return 0
    checks = args.checks.split(",")
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {CHECKS}")
    device = torch.device(args.device)
    start = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        if "attention" in checks:
            print("attention: backends vs eager (float64 reference)", flush=True)
            results += check_attention(device, backends=tuple(args.backends.split(",")))
        if "steps" in checks:
            print("steps: one training step of each task's tiny experiment", flush=True)
            results += check_steps(device, work, tuple(args.tasks.split(",")))
        if "resume" in checks:
            results.append(check_resume(device, work))
        if "ddp" in checks:
            results.append(check_ddp(work))
    if "bench" in checks:
        if device.type != "cuda":
            results.append(Result("bench-gpu", "skipped", detail={"why": "CPU variant"}))
        else:
            left = args.budget_s - (time.perf_counter() - start) - 30  # bench set-up, plots
            results.append(check_bench(args.out / "bench", max(30.0, left)))
    header = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "gpus": torch.cuda.device_count(),
    }
    md, js = write_report(results, args.out, header)
    failed = [r.name for r in results if r.status == "failed"]
    print(md.read_text(), flush=True)
    print(f"gpu_check: report {md} and {js}; {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
