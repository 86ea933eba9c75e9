"""Compute profile of a task's model (paper Tables 4 / 7): parameters, FLOPs, MACs, latency.

The model is built through the same config path as ``train.py`` (``pipeline.build``) and run on
one batch of its datamodule. The profiled forward is the task's training objective
(``module.training_step``: one teacher-forced forward, loss included) in eval mode without
gradients, so it works for every task without a task-specific hook; a module may define
``profile_forward(batch)`` to profile something else.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products
(linear, bmm, conv, fused attention kernels), not element-wise work (softmax, the fusion
``logits ◇ M``, norms). SDPA is counted under its MATH backend (the fused CPU kernel has no
FLOP formula). flex_attention is not counted: under the counter's dispatch mode the compiled
flex kernel cannot run (torch 2.14 raises), so a flex record has no FLOPs and says so in
``flops_note``; its FLOPs equal the eager row's up to the element-wise work the counter ignores
anyway. MACs = FLOPs / 2 (every counted op is a multiply-accumulate).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger(__name__)


def split_overrides(overrides: Iterable[str]) -> list[list[str]]:
    """Expand sweep-style overrides (``mask=none,multilayer attention=eager,sdpa``) into the
    list of single-run override lists (their cartesian product, in order)."""
    fixed, swept = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        if "," in value and not value.strip().startswith(("[", "{", "'", '"')):
            swept.append([f"{key}={v}" for v in value.split(",")])
        else:
            fixed.append(override)
    return [fixed + list(combo) for combo in itertools.product(*swept)] if swept else [fixed]


def first_batch(datamodule: Any, split: str = "train") -> Any:
    """One batch of ``split`` (train: the batch the training objective is defined on)."""
    datamodule.setup("fit")
    loader = getattr(datamodule, f"{split}_dataloader")()
    return next(iter(loader))


def batch_size_of(batch: Any) -> int | None:
    """Leading dimension of the first tensor found in a batch (dataclass, dict or sequence)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if hasattr(batch, "__dataclass_fields__"):
        batch = [getattr(batch, f) for f in batch.__dataclass_fields__]
    values = batch.values() if isinstance(batch, dict) else batch
    if isinstance(values, (list, tuple)) or isinstance(batch, dict):
        for value in values:
            size = batch_size_of(value)
            if size is not None:
                return size
    return None


def forward_fn(module: nn.Module, batch: Any) -> Callable[[], Any]:
    """A closure running the module's profiled forward on ``batch`` (no gradients)."""
    step = getattr(module, "profile_forward", None)

    def run() -> Any:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached
            warnings.filterwarnings("ignore", message=".*not attached to a `Trainer`.*")
            return step(batch) if step is not None else module.training_step(batch, 0)

    return run


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` and the count per operator (SDPA under its MATH backend)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


FLEX_NOT_COUNTED = (
    "attention=flex: FLOPs not counted (FlopCounterMode cannot trace the compiled flex_attention "
    "kernel); the matrix products equal the eager row's"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[[], Any], device: torch.device, warmup: int = 3, repeats: int = 10
) -> dict[str, float]:
    """Median / min / max wall time of ``fn()`` in ms after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def profile_config(
    cfg: DictConfig,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    split: str = "train",
) -> dict[str, Any]:
    """Build the task's model from ``cfg``, take one batch and measure it; a profile record
    (results.json-like: task, mask, attention, table/row tags, ``metrics`` under compute/)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from tasks.common.runtime.module import parameter_counts
    from tasks.common.runtime.pipeline import build, core_configs

    device = torch.device(device)
    mask, attention = core_configs(cfg)
    torch.manual_seed(int(cfg.get("seed") or 0))
    datamodule, net, module = build(cfg, mask, attention)
    batch = first_batch(datamodule, split)
    module = module.to(device).eval()
    batch = move_data_to_device(batch, device)
    run = forward_fn(module, batch)
    note = ""
    try:
        flops, per_op = count_flops(run)
    except (TypeError, RuntimeError, NotImplementedError) as error:
        flops, per_op = None, {}
        note = f"FLOPs not counted ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        if str(attention.backend) == "flex":
            note = FLEX_NOT_COUNTED
        log.warning(note)
    latency = measure_latency(run, device, warmup, repeats)
    counts = parameter_counts(net)
    return {
        "kind": "profile",
        "status": "ok",
        "task": cfg.get("task_name"),
        "mask": str(mask.type),
        "fusion": str(mask.fusion),
        "depth": mask.depth,
        "attention": str(attention.backend),
        "compiled": bool(attention.compile),
        "seed": None,
        "batch_size": batch_size_of(batch),
        "split": split,
        "device": device_name(device),
        "params": counts,
        "metrics": {
            "compute/flops": None if flops is None else float(flops),
            "compute/macs": None if flops is None else float(flops) / 2,
            "compute/params": float(counts["params/total"]),
            "compute/latency_ms": latency["median"],
            "compute/latency_min_ms": latency["min"],
            "compute/latency_max_ms": latency["max"],
        },
        "flops_by_op": per_op,
        "flops_note": note,
        "warmup": warmup,
        "repeats": repeats,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
