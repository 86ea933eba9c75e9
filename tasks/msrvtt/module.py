"""LightningModule of the MSR-VTT captioning task (SwinBERT recipe).

Training: masked-token cross-entropy on the masked caption positions, plus the mask's auxiliary
loss (SwinBERT's sparsity loss for ``mask=sparse``). Optimiser groups as in SwinBERT's
``mixed_precision_init``: the Video Swin backbone at ``backbone_lr_scale`` x lr, no weight decay
on biases and LayerNorm weights. Validation / test: decode a caption per video (greedy or beam)
and score BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE with ``tasks.common.runtime.caption_metrics``; the
predictions, scores and the reasons for any unavailable metric go to
``<run dir>/captions/<split>_epoch<NNN>.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.common.runtime.caption_metrics import CaptionMetrics
from tasks.common.runtime.module import TaskModule
from tasks.common.runtime.results import atomic_write_text

log = logging.getLogger(__name__)

# Table 6 reports these five; BLEU_4 / METEOR / ROUGE_L / CIDEr / SPICE are coco-caption's names
TABLE6_METRICS = ("BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


class MSRVTTModule(TaskModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "step",
        backbone_lr_scale: float = 0.05,
        metrics: dict | None = None,
        save_predictions: bool = True,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.backbone_lr_scale = backbone_lr_scale
        self.metrics_kwargs = {"metrics": TABLE6_METRICS, **(metrics or {})}
        self.save_predictions = save_predictions
        self._scorer: CaptionMetrics | None = None
        self._outputs: dict[str, list[tuple[str, str, list[str]]]] = {"val": [], "test": []}
        # "<split>/<metric>" -> why it could not be computed (e.g. SPICE without CoreNLP jars)
        self.unavailable_metrics: dict[str, str] = {}

    # ---------------------------------------------------------------- optimisation

    def param_groups(self) -> list[dict]:
        """SwinBERT's four groups: {backbone, rest} x {decay, no decay (bias, LayerNorm)}."""
        base_lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            key = (name.startswith("backbone."), p.ndim <= 1)
            groups.setdefault(key, []).append(p)
        out = []
        for (is_backbone, no_decay), params in sorted(groups.items()):
            group: dict = {"params": params}
            if no_decay:
                group["weight_decay"] = 0.0
            if is_backbone:
                if base_lr is None:
                    raise ValueError("module.optimizer needs an explicit lr for backbone_lr_scale")
                group["lr"] = base_lr * self.backbone_lr_scale
            out.append(group)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.net(
            batch["frames"], batch["input_ids"], batch["text_len"], batch["masked_pos"]
        )
        targets = batch["masked_ids"][batch["masked_ids"] != -1]
        loss = F.cross_entropy(logits.float(), targets)
        self.log("train/mlm_loss", loss, prog_bar=True, batch_size=len(batch["video_id"]))
        acc = (logits.argmax(-1) == targets).float().mean()
        self.log("train/acc", acc, batch_size=len(batch["video_id"]))
        aux = self.aux_loss()
        if aux is not None:
            self.log("train/aux_loss", aux, batch_size=len(batch["video_id"]))
            loss = loss + aux
        self.log("train/loss", loss, batch_size=len(batch["video_id"]))
        return loss

    # ---------------------------------------------------------------- evaluation

    def _decode_step(self, batch: dict, split: str) -> None:
        texts = self.net.decode_text(self.net.generate(batch["frames"]))
        self._outputs[split].extend(zip(batch["video_id"], texts, batch["references"], strict=True))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._decode_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._decode_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    @property
    def scorer(self) -> CaptionMetrics:
        if self._scorer is None:
            self._scorer = CaptionMetrics(**self.metrics_kwargs)
        return self._scorer

    def _gather(self, items: list) -> list:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, items)
            return [x for part in parts for x in part]
        return items

    def _score(self, split: str) -> None:
        items = self._gather(self._outputs[split])
        self._outputs[split] = []
        if not items or self.trainer.sanity_checking:
            return
        predictions = {vid: text for vid, text, _ in items}
        references = {vid: refs for vid, _, refs in items}
        scores = self.scorer.compute(predictions, references) if self.trainer.is_global_zero else {}
        scores = self._gather_scores(scores)
        for name, value in scores.items():
            self.log(f"{split}/{name}", value, sync_dist=False, rank_zero_only=False)
        if self.trainer.is_global_zero:
            for name, reason in self.scorer.unavailable.items():
                self.unavailable_metrics[f"{split}/{name}"] = reason
                log.warning("%s/%s unavailable: %s", split, name, reason)
            if self.save_predictions:
                self._write(split, predictions, scores)

    def _gather_scores(self, scores: dict[str, float]) -> dict[str, float]:
        """Broadcast rank 0's scores so that every rank logs the same values."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            box = [scores]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return scores

    def _write(self, split: str, predictions: dict[str, str], scores: dict[str, float]) -> None:
        out_dir = Path(self.trainer.default_root_dir) / "captions"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{split}_epoch{self.weights_epoch:03d}.json"
        record = {
            "split": split,
            "epoch": self.weights_epoch,
            "metrics": scores,
            "unavailable": dict(self.scorer.unavailable),
            "predictions": predictions,
        }
        atomic_write_text(path, json.dumps(record, indent=1))
