"""LightningModule of QVHighlights: QD-DETR losses in training, official-format predictions and
the official metrics in validation (model selection on ``val/MR-full-mAP``), a submission file
for the test split."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tasks.common.module import TaskModule
from tasks.qvhighlights.losses import QDDETRLoss
from tasks.qvhighlights.metrics import eval_submission, save_jsonl
from tasks.qvhighlights.submission import submission_rows

log = logging.getLogger(__name__)

MODEL_INPUTS = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")


class QVHighlightsModule(TaskModule):
    """Trains QD-DETR; validation writes ``predictions/hl_val_submission_e{epoch}.jsonl``."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        criterion: QDDETRLoss | None = None,
        clip_length: float = 2.0,
        max_ts: float = 150.0,
        save_predictions: bool = True,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.criterion = criterion or QDDETRLoss()
        self.clip_length, self.max_ts = clip_length, max_ts
        self.save_predictions = save_predictions
        self._rows: list[dict] = []

    def forward(self, batch: dict[str, Any], with_negative: bool = True) -> dict[str, Any]:
        return self.net(**{k: batch[k] for k in MODEL_INPUTS}, with_negative=with_negative)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.criterion(self(batch), batch)
        loss = losses["loss"]
        aux = self.aux_loss()
        if aux is not None:
            loss = loss + aux.to(loss.device)
        bs = len(batch["meta"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            if k != "loss" and not k[-1].isdigit():
                self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def _predict(self, batch: dict[str, Any]) -> None:
        out = self(batch, with_negative=False)
        self._rows.extend(
            submission_rows(
                batch["meta"],
                out["pred_logits"],
                out["pred_spans"],
                out["saliency_scores"],
                batch["src_vid_mask"],
                self.clip_length,
                self.max_ts,
            )
        )

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def _gathered_rows(self) -> list[dict]:
        rows = self._rows
        if self.trainer.world_size > 1:
            parts: list[list[dict]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        unique = {r["qid"]: r for r in rows}  # a distributed sampler repeats a few items
        return list(unique.values())

    def _prediction_dir(self) -> Path | None:
        if not self.save_predictions or self.trainer.sanity_checking:
            return None
        root = Path(self.trainer.default_root_dir) / "predictions"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def on_validation_epoch_end(self) -> None:
        rows = self._gathered_rows()
        gt = self.trainer.datamodule.split("val").rows
        complete = len(rows) == len(gt)
        if not complete and not self.trainer.sanity_checking:
            log.warning(
                "validation saw %d of %d queries: metrics on that subset", len(rows), len(gt)
            )
        metrics = eval_submission(rows, gt, match_number=complete)
        for key, value in metrics["brief"].items():
            self.log(f"val/{key}", float(value))  # same on every rank (rows are gathered)
        out_dir = self._prediction_dir()
        if out_dir is not None and self.trainer.is_global_zero:
            name = f"hl_val_submission_e{self.current_epoch:03d}"
            save_jsonl(rows, out_dir / f"{name}.jsonl")
            (out_dir / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2))
        self._rows = []

    def on_test_epoch_end(self) -> None:
        rows = self._gathered_rows()
        out_dir = self._prediction_dir()
        if out_dir is not None and self.trainer.is_global_zero:
            save_jsonl(rows, out_dir / "hl_test_submission.jsonl")
            log.info(
                "test submission (official format) -> %s", out_dir / "hl_test_submission.jsonl"
            )
        self.log("test/num_queries", float(len(rows)))
        self._rows = []
