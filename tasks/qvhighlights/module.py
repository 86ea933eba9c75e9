"""LightningModule of QVHighlights: QD-DETR losses in training, official-format predictions and
the official metrics in validation (model selection on ``val/MR-full-mAP``), and the files of the
official test server (CodaLab) for the test split."""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from tasks.common.runtime.module import TaskModule
from tasks.qvhighlights.data import collate
from tasks.qvhighlights.losses import QDDETRLoss
from tasks.qvhighlights.metrics import eval_submission, save_jsonl
from tasks.qvhighlights.submission import submission_rows

log = logging.getLogger(__name__)

MODEL_INPUTS = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")
# the official test server takes one zip, no enclosing folder, with these two files
# (jayleicn/moment_detr standalone_eval/README.md, "Codalab Submission")
SUBMISSION_FILES = ("hl_val_submission.jsonl", "hl_test_submission.jsonl")
SUBMISSION_ZIP = "hl_submission.zip"


class QVHighlightsModule(TaskModule):
    """Trains QD-DETR; validation writes ``predictions/hl_val_submission_e{epoch}.jsonl``; the
    test split writes the server submission (``write_submission``) into the run directory."""

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

    def _batch_rows(self, batch: dict[str, Any]) -> list[dict]:
        out = self(batch, with_negative=False)
        return submission_rows(
            batch["meta"],
            out["pred_logits"],
            out["pred_spans"],
            out["saliency_scores"],
            batch["src_vid_mask"],
            self.clip_length,
            self.max_ts,
        )

    def _predict(self, batch: dict[str, Any]) -> None:
        self._rows.extend(self._batch_rows(batch))

    def predict_split(self, name: str) -> list[dict]:
        """Submission rows for a whole split, outside Lightning's loops (the val half of a test
        server submission): each rank predicts every world_size-th query, rows are gathered."""
        dm = self.trainer.datamodule
        dataset = dm.split(name)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        loader = DataLoader(
            Subset(dataset, range(rank, len(dataset), world)),
            batch_size=dm.eval_batch_size,
            collate_fn=collate,
        )
        was_training = self.training
        self.eval()
        rows: list[dict] = []
        with torch.no_grad():
            for batch in loader:
                rows.extend(self._batch_rows(self.transfer_batch_to_device(batch, self.device, 0)))
        self.train(was_training)
        return self._gathered_rows(rows)

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._predict(batch)

    def _gathered_rows(self, rows: list[dict] | None = None) -> list[dict]:
        rows = self._rows if rows is None else rows
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
            name = f"hl_val_submission_e{self.weights_epoch:03d}"
            save_jsonl(rows, out_dir / f"{name}.jsonl")
            (out_dir / f"{name}_metrics.json").write_text(json.dumps(metrics, indent=2))
        self._rows = []

    def on_test_epoch_end(self) -> None:
        test_rows = self._gathered_rows()
        self._rows = []
        val_rows = self.predict_split("val")
        gt = self.trainer.datamodule.split("val").rows
        metrics = eval_submission(val_rows, gt, match_number=len(val_rows) == len(gt))
        for key, value in metrics["brief"].items():
            self.log(f"val/{key}", float(value))  # the val half of the submission, measured here
        self.log("test/num_queries", float(len(test_rows)))
        if self.trainer.is_global_zero:
            path = write_submission(val_rows, test_rows, Path(self.trainer.default_root_dir))
            log.info(
                "test-server submission (val %d + test %d queries) -> %s",
                len(val_rows),
                len(test_rows),
                path,
            )
            if self.trainer.datamodule.data_ratio < 1.0:
                log.warning("data.data_ratio < 1: the server expects every val and test query")


def write_submission(val_rows: list[dict], test_rows: list[dict], out_dir: Path) -> Path:
    """``hl_val_submission.jsonl``, ``hl_test_submission.jsonl`` and ``hl_submission.zip`` (the
    two files at the zip's root, as the QVHighlights CodaLab server expects) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    val_name, test_name = SUBMISSION_FILES
    save_jsonl(val_rows, out_dir / val_name)
    save_jsonl(test_rows, out_dir / test_name)
    path = out_dir / SUBMISSION_ZIP
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in SUBMISSION_FILES:
            zf.write(out_dir / name, arcname=name)
    return path
