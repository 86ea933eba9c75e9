"""train(cfg) / evaluate(cfg): config -> datamodule -> model -> LightningModule -> metrics.

Every run writes ``results.json`` into its run directory (status, task, mask, attention, seed,
experiment / table / row tags, parameter counts, final and best metrics, the resolved config);
``scripts/make_tables.py`` and the multirun summary read these files.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from stamp import check_mask_backend
from stamp import mask_memory_estimate as memory_estimate  # (bytes, params, deepest)
from stamp.config import AttentionConfig, Backend, MaskConfig
from tasks.common.runtime.callbacks import (
    EpochSeed,
    ModelConfigInCheckpoint,
    RunDiverged,
    StopOnDivergence,
)
from tasks.common.runtime.checkpoints import (
    SafeCheckpointIO,
    check_checkpoint_config,
    model_config,
    run_config,
    safe_loading,
)
from tasks.common.runtime.mask_stats import MaskDiagnostics
from tasks.common.runtime.module import parameter_counts
from tasks.common.runtime.results import RESULTS_FILE, read_record, write_json
from tasks.common.runtime.run_lock import RunDirLocked, run_dir_lock
from tasks.common.runtime.schemas import check_known_keys

log = logging.getLogger(__name__)


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Hydra's ``instantiate``, with the error of the target's own code printed as its message
    (Hydra shows ``repr(error)``: a multi-line message such as MAD-AD's list of missing paths
    came out on one line with literal ``\\n``)."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if cause is None or isinstance(cause, InstantiationException):
            raise
        head = str(e).split("\n", 1)[0]  # "Error in call to target '...':"
        raise InstantiationException(f"{head}\n{type(cause).__name__}: {cause}") from cause


def core_configs(cfg: DictConfig) -> tuple[MaskConfig, AttentionConfig]:
    """Validate the mask / attention settings (runs the dataclasses' ``__post_init__``; keys
    the schemas do not have, e.g. ``+mask.foo=1``, are refused)."""
    check_known_keys(cfg.mask, MaskConfig, "mask")
    check_known_keys(cfg.attention, AttentionConfig, "attention")
    mask = OmegaConf.to_object(cfg.mask)
    attention = OmegaConf.to_object(cfg.attention)
    if not isinstance(mask, MaskConfig):  # configs built without the schema (plain dicts)
        mask = MaskConfig(**mask)
    if not isinstance(attention, AttentionConfig):
        attention = AttentionConfig(**attention)
    check_mask_backend(mask, attention)
    return mask, attention


def check_visible_devices(cfg: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu|ddp|multinode``) needs the GPUs it asks for. Checked when a
    run starts, not when the config resolves, so ``--cfg job --resolve`` prints a GPU config on
    a machine without GPUs (``trainer.devices=-1`` is then counted as 1 device)."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator not in ("gpu", "cuda"):
        return
    visible = torch.cuda.device_count()
    devices = cfg.trainer.get("devices", "auto")
    if visible == 0:
        raise RuntimeError(
            f"trainer.accelerator={accelerator} (trainer=gpu|ddp|multinode) needs a CUDA GPU; "
            "none is visible here (torch.cuda.device_count() == 0). Train with trainer=cpu, "
            "or run on a GPU machine; --cfg job --resolve prints the config anywhere."
        )
    if str(devices).strip() not in ("-1", "auto"):
        from tasks.common.runtime.schemas import device_count

        if device_count(devices) > visible:
            raise RuntimeError(
                f"trainer.devices={devices} asks for {device_count(devices)} GPUs per node; "
                f"{visible} visible here"
            )


def check_startup(cfg: DictConfig, attention: AttentionConfig, training: bool) -> None:
    """Fail in the first seconds, not after data loading, on combinations that cannot run."""
    check_visible_devices(cfg)
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if (
        training
        and attention.backend is Backend.flex
        and on_cpu
        and attention.flex_cpu_training == "error"
    ):
        from stamp.attention import FLEX_CPU_BACKWARD_ERROR

        raise RuntimeError(FLEX_CPU_BACKWARD_ERROR)
    if training and cfg.trainer.get("max_epochs") == 0:
        raise ValueError(
            "trainer.max_epochs=0 trains nothing: give at least 1 (or train=false / eval.py to "
            "evaluate a checkpoint)"
        )


class RunExistsError(RuntimeError):
    """The run directory holds a finished (or resumable) run that this run would overwrite."""


def _same_config(finished: dict[str, Any], cfg: DictConfig, out_dir: Path) -> bool:
    """The finished run's recorded config equals this one (ckpt_path and paths aside; a run
    directory that was moved counts as the same)."""
    ignore = ("ckpt_path", "paths")
    now = OmegaConf.to_container(cfg, resolve=True)
    text = json.dumps(finished.get("config") or {}, default=str)
    if finished.get("run_dir"):
        text = text.replace(json.dumps(finished["run_dir"])[1:-1], json.dumps(str(out_dir))[1:-1])
    old = json.loads(text)
    now = json.loads(json.dumps(now, default=str))
    return {k: v for k, v in old.items() if k not in ignore} == {
        k: v for k, v in now.items() if k not in ignore
    }


def guard_run_dir(cfg: DictConfig, out_dir: Path, resuming: bool) -> dict[str, Any] | None:
    """Never overwrite a finished run.

    In a multirun (a sweep re-run into its directory, with or without ``ckpt_path=last``) a job
    that finished with the same config is skipped and its record returned. Otherwise a directory
    whose results.json says ``ok`` is refused, ``ckpt_path=last`` included (a finished run has
    nothing to resume; training it further starts a new directory from its checkpoint), before
    anything is written into it. A directory holding an interrupted run's ``last.ckpt`` is not
    restarted from scratch either.
    """
    finished = read_record(out_dir / RESULTS_FILE) if (out_dir / RESULTS_FILE).exists() else None
    done = finished is not None and finished.get("status") == "ok"
    if done and is_multirun() and _same_config(finished, cfg, out_dir):
        log.info("job %s finished before (results.json status ok): skipped", out_dir)
        return finished
    if done:
        raise RunExistsError(
            f"{out_dir} holds a finished run (results.json status ok"
            + ("" if _same_config(finished, cfg, out_dir) else ", with another config")
            + "); it is not overwritten and has nothing to resume. Choose another directory "
            "(hydra.run.dir=... / hydra.sweep.dir=...); to train it further, start a new "
            f"directory from its checkpoint: hydra.run.dir=<new dir> "
            f"ckpt_path={out_dir / 'checkpoints' / 'last.ckpt'}"
        )
    last = out_dir / "checkpoints" / "last.ckpt"
    if not resuming and last.exists():
        raise RunExistsError(
            f"{out_dir} holds an interrupted run ({last}); it is not restarted from scratch. "
            "Resume it with ckpt_path=last, or choose another directory (hydra.run.dir=...)."
        )
    return None


def refuse_finished_eval(out_dir: Path) -> None:
    """eval.py never writes over a finished run's (or evaluation's) results.json."""
    finished = read_record(out_dir / RESULTS_FILE) if (out_dir / RESULTS_FILE).exists() else None
    if finished is not None and finished.get("status") == "ok":
        raise RunExistsError(
            f"{out_dir} holds a finished run's results.json; it is not overwritten. Choose "
            "another directory (hydra.run.dir=...)."
        )


def holds_run_dir_lock(fn):
    """Run ``fn(cfg)`` holding the run directory's lock (``tasks.common.runtime.run_lock``): a
    second run into the directory stops at start-up naming this one."""

    @functools.wraps(fn)
    def locked(cfg: DictConfig, *args: Any, **kwargs: Any) -> Any:
        with run_dir_lock(run_dir()):
            return fn(cfg, *args, **kwargs)

    return locked


def check_training_batches(trainer: L.Trainer, datamodule: Any) -> None:
    """Zero training batches is an error: Lightning skips training ("No training batches") and
    the run would end ``ok`` with an untrained model's metrics. Raised before any validation or
    result is written; streams without a length count as infinite and pass."""
    if trainer.num_training_batches == 0:
        raise ValueError(
            f"the training split has no items (0 training batches from "
            f"{type(datamodule).__name__}); check the data paths and sizes (e.g. data.num_train)"
        )


def run_dir() -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed without @hydra.main (tests): use paths.output_dir
        return Path(os.getcwd())


def is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def build(cfg: DictConfig, mask: MaskConfig, attention: AttentionConfig):
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, mask=mask, attention=attention)
    module = instantiate(cfg.module, net=net)
    return datamodule, net, module


def build_loggers(cfg: DictConfig, out_dir: Path) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None or "_target_" not in logger_cfg:
            continue
        kwargs = {}
        if "Wandb" in logger_cfg._target_:
            if logger_cfg.get("offline", True):
                os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            if logger_cfg.get("group") is None and is_multirun():
                kwargs["group"] = Path(HydraConfig.get().sweep.dir).name
        loggers.append(instantiate(logger_cfg, **kwargs))
        log.info("logger %s -> %s", name, logger_cfg._target_)
    return loggers


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(instantiate(cb_cfg))
    return callbacks


def resolve_ckpt_path(ckpt_path: str | None, out_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        if not last.exists() and is_multirun():
            log.info("ckpt_path=last: %s has no last.ckpt; this job starts from scratch", out_dir)
            return None
        if not last.exists():
            raise FileNotFoundError(
                f"ckpt_path=last: no {last}. Resume in the interrupted run's directory: add "
                "hydra.run.dir=<that run's directory> to the same command, or pass "
                "ckpt_path=<path/to/file.ckpt>."
            )
        return str(last)
    if not Path(ckpt_path).exists() and glob.has_magic(ckpt_path):
        # the shell leaves ckpt_path=<run>/checkpoints/best-*.ckpt unexpanded (a word with '=')
        matches = sorted(glob.glob(ckpt_path))
        if len(matches) > 1:
            raise FileNotFoundError(f"ckpt_path={ckpt_path} matches several files: {matches}")
        ckpt_path = matches[0] if matches else ckpt_path
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return ckpt_path


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics as Python floats. Lightning keeps logged values as float32 tensors;
    float32 values are written with the 7 significant digits they hold (13.24, not
    13.239999771118164)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = float(f"{value.item():.7g}") if value.dtype == torch.float32 else value.item()
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def result_record(cfg: DictConfig, out_dir: Path, kind: str = "train") -> dict[str, Any]:
    """The fields of results.json that come from the config; ``kind`` is "train" or "eval"."""
    return {
        "status": "running",
        "kind": kind,
        "task": cfg.get("task_name"),
        "mask": str(cfg.mask.get("type")),
        "fusion": str(cfg.mask.get("fusion")),
        "depth": cfg.mask.get("depth"),
        "init": str(cfg.mask.get("init")),
        "generator": str(cfg.mask.get("generator", "mlp")),
        "rank": cfg.mask.get("rank"),
        "per_head": bool(cfg.mask.get("per_head", False)),
        "attention": str(cfg.attention.get("backend")),
        "compiled": bool(cfg.attention.get("compile", False)),
        "seed": cfg.get("seed"),
        "precision_requested": str(cfg.trainer.get("precision")),
        "experiment": cfg.get("experiment"),
        "table": cfg.get("table"),
        "row": cfg.get("row"),
        "tags": list(cfg.get("tags") or []),
        "run_dir": str(out_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def write_results(record: dict[str, Any], out_dir: Path) -> Path:
    """results.json, written atomically (temporary file + rename)."""
    return write_json(out_dir / RESULTS_FILE, record)


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run of this job (``exit_code`` != 0 marks it failed), so that the next job of
    a multirun starts its own run instead of logging into this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def available_memory(cfg: DictConfig) -> tuple[int, str]:
    """Bytes of memory of the training device (GPU when one is used, else RAM)."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[1], "GPU memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def precheck_mask_memory(cfg: DictConfig, mask: MaskConfig, attention: AttentionConfig) -> None:
    """For depths beyond the paper's (> 64): estimate on a model built on the meta device (no
    memory), so that a generator too large to fit stops before the real build allocates it.
    Models that cannot be built on meta (file loading) are checked after the real build."""
    if mask.depth <= 64:
        return
    try:
        with torch.device("meta"):
            net = instantiate(cfg.model, mask=mask, attention=attention)
    except Exception as err:  # noqa: BLE001 - best effort; check_mask_memory runs after build
        log.debug("no meta-device estimate of the mask generators: %s", err)
        return
    check_mask_memory(cfg, net, warn=False)


def check_mask_memory(cfg: DictConfig, net: torch.nn.Module, warn: bool = True) -> None:
    """Stop before training when the mask generators alone would not fit in memory; warn for
    depths beyond the paper's range."""
    batch = int((cfg.get("data") or {}).get("batch_size") or 1)
    need, params, deepest = memory_estimate(net, batch)
    have, what = available_memory(cfg)
    gib = 2**30
    if need > 0.9 * have:
        raise MemoryError(
            f"mask.depth={cfg.mask.get('depth')}: the mask generators need about "
            f"{need / gib:.1f} GiB to train ({params:,} parameters x 16 bytes for weights, "
            f"gradients and AdamW state, plus activations at batch size {batch}), more than the "
            f"{have / gib:.1f} GiB of {what}. Use a smaller mask.depth (the paper's are 1-64)."
        )
    if warn and deepest > 64:
        log.warning(
            "mask.depth=%s is beyond the paper's depths (1-64): the generators have %s "
            "parameters and need about %.2f GiB to train",
            deepest,
            f"{params:,}",
            need / gib,
        )


def unavailable_metrics(module: L.LightningModule) -> dict[str, str]:
    """Metrics a task could not compute here, with the reason (e.g. SPICE without CoreNLP)."""
    return dict(getattr(module, "unavailable_metrics", None) or {})


def data_report(datamodule: Any) -> dict[str, Any]:
    """What a datamodule's readers changed in the files as distributed (e.g. MAD-v2 rows clamped
    or dropped as AutoAD-II reads them), for results.json; empty when it reports nothing."""
    return dict(getattr(datamodule, "data_report", None) or {})


def _log_config(loggers: list, cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)


@holds_run_dir_lock
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then validate (and optionally test) the best checkpoint; return the results record."""
    start = time.time()
    out_dir = run_dir()
    record = result_record(cfg, out_dir)
    mask, attention = core_configs(cfg)
    training = cfg.get("train", True)
    check_startup(cfg, attention, training=training)
    resuming = cfg.get("ckpt_path") not in (None, "", "null")
    finished = guard_run_dir(cfg, out_dir, resuming)
    if finished is not None:
        return {**finished, "skipped": True}
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir)
    if ckpt_path is not None:
        record["checkpoint_config"] = check_checkpoint_config(
            ckpt_path, cfg, evaluation=False, allow_mismatch=cfg.get("allow_config_mismatch", False)
        )
        record["resumed_from"] = ckpt_path
    L.seed_everything(cfg.seed, workers=True)
    if training:
        precheck_mask_memory(cfg, mask, attention)

    datamodule, net, module = build(cfg, mask, attention)
    record["params"] = parameter_counts(net)
    record["data_report"] = data_report(datamodule)
    log.info("parameters: %s", record["params"])
    if training:
        check_mask_memory(cfg, net)
    loggers = build_loggers(cfg, out_dir)
    callbacks = build_callbacks(cfg)
    callbacks.append(ModelConfigInCheckpoint(model_config(cfg), run_config(cfg)))
    if not any(isinstance(cb, EpochSeed) for cb in callbacks):  # exact resume needs it
        callbacks.append(EpochSeed(cfg.seed))
    callbacks.append(StopOnDivergence(cfg.monitor.metric))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[SafeCheckpointIO()]
    )
    record["precision"] = str(trainer.precision)  # e.g. 16-mixed on CPU runs as bf16-mixed
    _log_config(loggers, cfg)
    if training:
        # every split's files are read and checked before the first training step (a bad
        # validation file must not cost an epoch)
        datamodule.prepare_data()
        datamodule.setup("fit")
        with safe_loading():
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        check_training_batches(trainer, datamodule)
    metrics = _clean(trainer.callback_metrics)

    # the best checkpoint on the monitored metric (none under fast_dev_run: current weights)
    best_cb = trainer.checkpoint_callback
    best_path = None if trainer.fast_dev_run else getattr(best_cb, "best_model_path", "") or None
    best_score = getattr(best_cb, "best_model_score", None)
    if training and not trainer.fast_dev_run:
        with safe_loading():
            trainer.validate(
                module, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=True
            )
        metrics.update(_clean(trainer.callback_metrics))
    if cfg.get("test", False):
        with safe_loading():
            trainer.test(
                module, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=True
            )
        metrics.update(_clean(trainer.callback_metrics))

    record.update(
        status="ok",
        metrics=metrics,
        best={
            "metric": cfg.monitor.metric,
            "mode": cfg.monitor.mode,
            "value": None if best_score is None else float(best_score),
            "ckpt": best_path,
        },
        epochs=trainer.current_epoch,
        wall_time_s=round(time.time() - start, 2),
        unavailable=unavailable_metrics(module),
        mask_stats=getattr(module, "mask_stats", None) or {},
        effective_batch=effective_batch(cfg, trainer, module),
    )
    if trainer.is_global_zero:
        path = write_results(record, out_dir)
        log.info("results -> %s", path)
        print_metrics(record)
    finish_wandb(0)  # close the run so the next multirun job starts its own
    return record


@holds_run_dir_lock
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate or test a checkpoint with the model the config describes."""
    start = time.time()
    out_dir = run_dir()
    record = result_record(cfg, out_dir, kind="eval")
    mask, attention = core_configs(cfg)
    check_visible_devices(cfg)
    split = cfg.get("split", "val")
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}; choose val or test")
    ckpt = resolve_ckpt_path(cfg.ckpt_path, out_dir)
    if ckpt is None:
        raise ValueError("eval.py needs ckpt_path=<path/to/file.ckpt>")
    allow = bool(cfg.get("allow_config_mismatch", False))
    record["checkpoint_config"] = check_checkpoint_config(
        ckpt, cfg, evaluation=True, allow_mismatch=allow
    )
    record["allow_config_mismatch"] = allow
    refuse_finished_eval(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, net, module = build(cfg, mask, attention)
    record["params"] = parameter_counts(net)
    record["data_report"] = data_report(datamodule)
    loggers = build_loggers(cfg, out_dir)
    # mask statistics of the evaluated checkpoint (validation split) -> results.json mask_stats
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[MaskDiagnostics()],
        logger=loggers or False,
        plugins=[SafeCheckpointIO()],
    )
    record["precision"] = str(trainer.precision)
    run = trainer.validate if split == "val" else trainer.test
    with safe_loading():
        run(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
    record.update(
        status="ok",
        metrics=_clean(trainer.callback_metrics),
        checkpoint=ckpt,
        split=split,
        wall_time_s=round(time.time() - start, 2),
        unavailable=unavailable_metrics(module),
        mask_stats=getattr(module, "mask_stats", None) or {},
    )
    if trainer.is_global_zero:
        write_results(record, out_dir)
        print_metrics(record)
    finish_wandb(0)
    return record


def effective_batch(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule) -> dict:
    """Samples per optimizer step: per-device batch x processes x accumulation (a task's own
    plan, e.g. MAD-AD's ``batch_plan``, when it has one)."""
    plan = getattr(module, "effective_batch", None)
    if plan:
        return dict(plan)
    per_device = cfg.get("data", {}).get("batch_size")
    world, accumulation = trainer.world_size, trainer.accumulate_grad_batches
    return {
        "per_device": per_device,
        "world_size": world,
        "accumulate_grad_batches": accumulation,
        "effective_batch": None if per_device is None else per_device * world * accumulation,
    }


def print_metrics(record: dict[str, Any]) -> None:
    metrics = record.get("metrics", {})
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    log.info("final metrics (%s, mask=%s):\n%s", record["task"], record["mask"], "\n".join(lines))


def run_job(cfg: DictConfig, fn=train) -> float | None:
    """Run one job; on failure write results.json with the traceback.

    A single run re-raises (non-zero exit). Inside a multirun the error is logged and the sweep
    goes on; the multirun summary lists the failed jobs and the sweep exits non-zero at the end.
    The W&B run of the job is finished either way (failed: exit code 1). A failure never
    replaces a finished run's results.json: it goes to ``results.failed.json`` beside it. A run
    refused at start-up (directory locked by another run, or holding a finished run) writes
    nothing. A run whose loss or monitored metric became NaN / inf is recorded as
    ``status: diverged`` with the step and the last finite values.
    """
    out_dir = run_dir()
    try:
        with run_dir_lock(out_dir):
            return _run_locked(cfg, fn, out_dir)
    except (RunDirLocked, RunExistsError) as refused:
        if not is_multirun():
            raise
        log.error("job refused (%s): %s", out_dir, refused)
        return None


def _run_locked(cfg: DictConfig, fn, out_dir: Path) -> float | None:
    try:
        record = fn(cfg)
    except (RunDirLocked, RunExistsError):
        raise  # refused before anything ran: nothing to record, nothing written
    except Exception as error:  # noqa: BLE001 - recorded, then re-raised or reported
        finish_wandb(1)
        kind = "eval" if fn is evaluate else "train"
        record = result_record(cfg, out_dir, kind) if _config_ok(cfg) else {"run_dir": str(out_dir)}
        record.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
        )
        if isinstance(error, RunDiverged):
            record.update(
                status="diverged",
                diverged={
                    "step": error.step,
                    "quantity": error.name,
                    "value": str(error.value),
                    "last_finite": error.last_finite,
                },
            )
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            write_failure_record(record, out_dir)
        if not is_multirun():
            raise
        log.error("job %s (%s): %s", record["status"], out_dir, record["error"])
        return None
    value = record.get("metrics", {}).get(cfg.monitor.metric)
    return None if value is None or math.isnan(value) else value


def write_failure_record(record: dict[str, Any], out_dir: Path) -> Path | None:
    """results.json of a failed (or diverged) run, or ``results.failed.json`` when a finished
    run's results.json is there (never replaced). When even that cannot be written (disk full)
    the failure is logged with what to free, and None returned."""
    previous = out_dir / RESULTS_FILE
    old = read_record(previous) if previous.exists() else None
    keep = old is not None and old.get("status") == "ok"
    target = out_dir / ("results.failed.json" if keep else RESULTS_FILE)
    try:
        path = write_json(target, record)
    except OSError as err:
        full = err.errno == errno.ENOSPC
        log.error(
            "could not write the failure record %s (%s)%s; the run %s: %s",
            target,
            err,
            ": the disk is full, free space on it" if full else "",
            record.get("status"),
            record.get("error"),
        )
        print(
            f"ERROR: run {out_dir} {record.get('status')} ({record.get('error')}) and its "
            f"failure record could not be written: {err}",
            file=sys.stderr,
        )
        return None
    if keep:
        log.error("%s keeps the finished run's results; this failure -> %s", previous, path)
    return path


def _config_ok(cfg: DictConfig) -> bool:
    try:
        OmegaConf.to_container(cfg, resolve=True)
        return True
    except Exception:  # noqa: BLE001
        return False
