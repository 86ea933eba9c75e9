"""Ready for the first GPU (issue 28): GPU configs resolve without GPUs (dry runs) and the device
check happens when training starts; every task's tiny experiment trains under bf16-true;
``make gpu-check`` says "no GPU" and exits 0 here, and its checks run in their CPU variant."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tasks.common.runtime.compose import without_hydra
from tests.helpers import DEMO_TINY, ROOT, compose_cfg, run_cfg, run_script

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
from bench_attention import Shape  # noqa: E402

PAPER_EXPERIMENTS = sorted(
    p.stem
    for p in (ROOT / "configs" / "experiment").glob("*.yaml")
    if not any(word in p.stem for word in ("tiny", "demo", "proxy", "synthetic"))
)


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as a login node: no visible CUDA device (also on a GPU machine)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("trainer", ["gpu", "ddp", "multinode"])
def test_paper_experiments_resolve_with_gpu_trainers_without_gpus(trainer, tmp_path, no_gpu):
    """Every paper experiment's config resolves with trainer=gpu|ddp|multinode on a machine
    without GPUs (what ``--cfg job --resolve`` prints); ``trainer.devices=-1`` counts as 1."""
    assert "mad_ad_t1a" in PAPER_EXPERIMENTS and "imagenet_t5" in PAPER_EXPERIMENTS
    for name in PAPER_EXPERIMENTS:
        cfg = compose_cfg([f"experiment={name}", f"trainer={trainer}"], tmp_path / name)
        resolved = OmegaConf.to_container(without_hydra(cfg), resolve=True)  # --cfg job
        assert resolved["trainer"]["accelerator"] == "gpu", name
        plan = resolved.get("module", {}).get("batch_plan")
        if plan:  # MAD-AD's effective batch of 256 on the counted device
            assert plan["devices"] == 1 and plan["accumulate_grad_batches"] >= 1


@pytest.mark.slow  # a subprocess start-up: 10-25 s here
def test_dry_run_command_prints_the_config():
    """The issue's command, as a user types it, on this GPU-less machine."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the dry run is the ordinary one")
    cmd = ["train.py", "experiment=mad_ad_t1a", "trainer=ddp", "--cfg", "job", "--resolve"]
    proc = run_script(cmd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accelerator: gpu" in proc.stdout and "strategy: ddp" in proc.stdout
    assert "no visible GPU here, counted as 1" in proc.stderr + proc.stdout


def test_gpu_trainer_stops_at_startup_without_gpus(tmp_path, no_gpu):
    """The device check happens when training starts, before any data or model is built."""
    cfg = compose_cfg([*DEMO_TINY, "task=demo", "trainer=gpu"], tmp_path / "run")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU; none is visible here"):
        run_cfg(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_more_devices_than_visible_stop_at_startup(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = compose_cfg([*DEMO_TINY, "task=demo", "trainer=ddp", "trainer.devices=2"], tmp_path)
    with pytest.raises(RuntimeError, match="asks for 2 GPUs per node; 1 visible"):
        run_cfg(cfg)


@pytest.mark.parametrize("task", gpu_check.TASKS)
def test_every_task_trains_a_step_under_bf16_true(task, tmp_path):
    """trainer.precision=bf16-true (parameters and activations in bf16) trains one step and
    validates one batch of each task's tiny experiment (QVHighlights: the matcher's costs in
    float32; torch.cdist has no bf16 kernel)."""
    [result] = gpu_check.check_steps(torch.device("cpu"), tmp_path, runs=((task, "bf16-true"),))
    assert result.status == "ok", result.detail
    assert result.detail["precision"] == "bf16-true" and result.detail["losses"]


def test_gpu_check_says_no_gpu_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run_script(["scripts/gpu_check.py", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == gpu_check.NO_GPU
    assert not list(tmp_path.iterdir())  # nothing checked, no report


TINY_SHAPES = {
    "self": Shape("self", 2, 12, 12, 16, 2, 1),
    "cross": Shape("cross", 2, 9, 7, 16, 4, 1, cross=True),
}


def test_gpu_check_attention_on_cpu(tmp_path):
    """The attention check in its CPU variant at tiny shapes: the fused kernel against eager
    (every setting; bf16, bf16 with a float32 M, fp32; errors within 2x eager's own); a
    wrong kernel fails it."""
    cases = tuple(
        gpu_check.Case("self" if i % 2 else "cross", c.fusion, c.order, c.mask, c.padding)
        for i, c in enumerate(gpu_check.CASES)
    )
    results = gpu_check.check_attention(
        torch.device("cpu"), cases=cases, backends=("fused",), shapes=TINY_SHAPES
    )
    assert len(results) == len(gpu_check.DTYPES) * len(cases)
    assert all(r.status == "ok" for r in results), [r.detail for r in results]
    grads = set(results[0].detail["fused"])
    assert {"out", "dq", "dk", "dv", "dm", "dbias"} <= grads
    assert {"df", "dg"} <= set(results[6].detail["fused"])  # the low-rank case

    def wrong(q, k, v, spec):  # drops the bias: must be caught
        return gpu_check.eager_attention(q, k, v, dataclasses.replace(spec, attn_bias=None))

    gpu_check.ATTENTION_BACKENDS["wrong"] = wrong
    try:
        [bad] = gpu_check.check_attention(
            torch.device("cpu"), gpu_check.DTYPES[-1:], cases[:1], ("wrong",), TINY_SHAPES
        )
    finally:
        del gpu_check.ATTENTION_BACKENDS["wrong"]
    assert bad.status == "failed" and "dbias" in bad.detail["failed"][0]


def test_gpu_check_cpu_variant_writes_its_report(tmp_path):
    """``--device cpu --checks steps,ddp,bench --tasks demo``: one bf16-mixed step of the demo;
    DDP and the benchmark skipped with the reason; the markdown and JSON report."""
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--checks", "steps,ddp,bench", "--tasks", "demo", "--out", str(out)]
    assert gpu_check.main(argv) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    status = {r["name"]: r["status"] for r in report["results"]}
    assert status == {"step demo bf16-mixed": "ok", "ddp 2 GPUs": "skipped", "bench-gpu": "skipped"}
    assert "| step demo bf16-mixed | ok |" in (out / "gpu_check.md").read_text()


def test_gpu_check_resume_is_exact_on_cpu(tmp_path):
    """The resume check (demo, trainer.deterministic=true) on the CPU: identical metrics."""
    result = gpu_check.check_resume(torch.device("cpu"), tmp_path)
    assert result.status == "ok", result.detail
    assert result.detail["epochs"] == [2, 2]
