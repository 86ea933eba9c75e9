"""Prediction on one input from a trained checkpoint alone (as moment_detr's ``run_on_video``
and lighthouse's predictors give their users).

The model is rebuilt from the config the checkpoint carries (``with_checkpoint_config``: task,
model, mask, attention, data and evaluation settings), its weights loaded weights-only, and one
input run through the task's own evaluation path (the same preprocessing, forward and
post-processing as ``eval.py``). Tasks covered (``PREDICTORS``):

* ``qvhighlights``: a video's clip features (the official per-video ``.npz`` files, one per
  ``data.v_feat_types``) + a query's token features -> ranked windows [start, end, score] in
  seconds and one saliency score per clip;
* ``imagenet``: an image file -> the top classes with their probabilities;
* ``msrvtt``: a video file -> a caption.

Python::

    from tasks.common.launch.predict import Predictor

    predictor = Predictor.from_checkpoint("outputs/qvhighlights/runs/<run>/checkpoints/best.ckpt")
    out = predictor.predict(video_features=["<dir>/slowfast_features/<vid>.npz",
                                            "<dir>/clip_features/<vid>.npz"],
                            query_features="<dir>/clip_text_features/qid<qid>.npz")
    out["windows"], out["saliency"]
    predictor.mask_picture("mask.png")   # the STAMP mask of that input

Command line: ``python predict.py ckpt_path=<file.ckpt> input.<key>=...`` (``predict.py``).
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tasks.common.runtime.checkpoints import (
    check_checkpoint_config,
    read_checkpoint,
    with_checkpoint_config,
)

log = logging.getLogger(__name__)

# task name -> "module:function" taking (module, datamodule, **inputs) -> TaskPrediction
PREDICTORS = {
    "qvhighlights": "tasks.qvhighlights.predict:predict_moments",
    "imagenet": "tasks.imagenet.predict:predict_class",
    "msrvtt": "tasks.msrvtt.predict:predict_caption",
}
PREDICTION_FILE = "prediction.json"
MASK_FILE = "mask.png"


@dataclass
class TaskPrediction:
    """What a task's predictor returns: the JSON-able ``output`` and ``forward``, a call that
    runs the model on the same input again (to record its attention and STAMP masks)."""

    output: dict[str, Any]
    forward: Callable[[], Any] = field(repr=False)


def load_weights(module: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` as Lightning does (modules
    that keep frozen weights out of their checkpoints set ``strict_loading = False``), read
    weights-only. Returns the checkpoint."""
    checkpoint = read_checkpoint(path)
    module.load_state_dict(checkpoint["state_dict"], strict=getattr(module, "strict_loading", True))
    return checkpoint


class Predictor:
    """A trained checkpoint, rebuilt from the config it carries, that predicts single inputs.

    Args:
        cfg: the composed ``predict`` (or ``eval``) config with ``ckpt_path``; build it with
            ``from_checkpoint`` to restore the checkpoint's settings.
        device: where the model runs (``cpu``, ``cuda``).
    """

    def __init__(self, cfg: DictConfig, device: str | torch.device = "cpu") -> None:
        from tasks.common.runtime.pipeline import build, core_configs

        self.cfg = cfg
        self.task = str(cfg.task_name)
        if self.task not in PREDICTORS:
            raise ValueError(
                f"no single-input prediction for task {self.task!r}; predict.py covers "
                f"{', '.join(sorted(PREDICTORS))}"
            )
        self.ckpt_path = str(cfg.ckpt_path)
        mask, attention = core_configs(cfg)
        # the checkpoint's model and the requested one agree (or the mismatch is allowed)
        self.checkpoint_config = check_checkpoint_config(
            self.ckpt_path,
            cfg,
            evaluation=True,
            allow_mismatch=bool(cfg.get("allow_config_mismatch", False)),
        )
        self.datamodule, self.net, self.module = build(cfg, mask, attention)
        load_weights(self.module, self.ckpt_path)
        self.device = torch.device(device)
        self.module.to(self.device).eval()
        module_name, fn = PREDICTORS[self.task].split(":")
        self._predict = getattr(importlib.import_module(module_name), fn)
        self._last: TaskPrediction | None = None

    @classmethod
    def from_checkpoint(
        cls, ckpt_path: str | Path, overrides: Iterable[str] = (), device: str = "cpu"
    ) -> Predictor:
        """The checkpoint's model with its own settings; ``overrides`` (Hydra syntax, e.g.
        ``data.feature_dir=...``) win, as on eval.py's command line."""
        from tasks.common.runtime.compose import compose_config, without_hydra

        argv = with_checkpoint_config([f"ckpt_path={ckpt_path}", *overrides], "predict")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = without_hydra(compose_config(argv, tmp, "predict"))
        return cls(cfg, device)

    @torch.no_grad()
    def predict(self, **inputs: Any) -> dict[str, Any]:
        """Predict one input (the task's keys: see ``PREDICTORS``' functions); returns the
        JSON-able prediction with the task, checkpoint and inputs recorded."""
        result = self._predict(self.module, self.datamodule, **inputs)
        self._last = result
        return {
            "task": self.task,
            "checkpoint": self.ckpt_path,
            "mask": str(self.cfg.mask.type),
            **result.output,
        }

    @torch.no_grad()
    def mask_picture(self, path: str | Path, layer: int = 0) -> Path | None:
        """The STAMP mask of the last predicted input at its ``layer``-th masked attention call
        as a PNG (None when the model has no mask: ``mask=none``)."""
        from stamp import record_attention
        from tasks.common.reporting.plots import first_calls, modality_boundaries, plot_run_mask

        if self._last is None:
            raise RuntimeError("predict() an input first: the picture shows its mask")
        with record_attention(self.module) as records:
            self._last.forward()
        return plot_run_mask(
            first_calls(records),
            path,
            sample=0,
            layer=layer,
            boundaries=modality_boundaries(self.net),
            label=f"{self.task} {self.cfg.mask.type}",
        )


def predict(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """predict.py's job: the checkpoint's prediction for ``cfg.input`` written to
    ``out_dir/prediction.json`` (and the STAMP mask to ``out_dir/mask.png`` unless
    ``plot=false``). A directory that holds a finished prediction is refused."""
    from tasks.common.runtime.pipeline import (
        RunExistsError,
        refuse_finished_eval,
        resolve_ckpt_path,
    )

    start = time.time()
    if (out_dir / PREDICTION_FILE).exists():
        raise RunExistsError(
            f"{out_dir} holds a finished prediction ({PREDICTION_FILE}); it is not "
            "overwritten. Choose another directory (hydra.run.dir=...)."
        )
    refuse_finished_eval(out_dir)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir)
    if ckpt is None:
        raise ValueError("predict.py needs ckpt_path=<path/to/file.ckpt>")
    cfg = cfg.copy()
    cfg.ckpt_path = ckpt
    predictor = Predictor(cfg, device=str(cfg.get("device", "cpu")))
    inputs = {
        k: v for k, v in OmegaConf.to_container(cfg.input, resolve=True).items() if v is not None
    }
    output = predictor.predict(**inputs)
    if cfg.get("plot", True):
        path = predictor.mask_picture(out_dir / MASK_FILE, layer=int(cfg.get("mask_layer", 0)))
        output["mask_picture"] = None if path is None else str(path)
    output["checkpoint_config"] = predictor.checkpoint_config
    output["wall_time_s"] = round(time.time() - start, 2)
    from tasks.common.runtime.results import write_json

    write_json(out_dir / PREDICTION_FILE, output)
    log.info("prediction -> %s", out_dir / PREDICTION_FILE)
    print(json.dumps({k: output[k] for k in output if k in SUMMARY_KEYS}, indent=1))
    return output


SUMMARY_KEYS = ("task", "query", "windows", "classes", "caption", "mask_picture")
