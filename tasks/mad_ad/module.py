"""LightningModule of the MAD audio description task: the two-stage protocol and AD metrics.

Stage 1 (alignment, the first ``stage1_epochs`` epochs) trains ``stage1_groups`` (AV encoder,
V2 query adapter and prompts, gates); stage 2 trains ``stage2_groups`` (biases, norms, LoRA, gates,
AV encoder); the LLM's own weights stay frozen throughout (paper appendix A.4, after LLaMA-Adapter
V2's pretrain / finetune phases). ``batch_plan`` states the effective batch (paper: 256) and how
it is reached; ``effective_batch`` (a dict, written to results.json) is checked against the
trainer at the start of fitting. Every parameter of either stage has ``requires_grad`` from the
start (so DDP registers and all-reduces the same set in both stages) and sits in one AdamW; after
each backward the gradients of the parameters the current stage does not train are dropped, so
AdamW leaves them (and their weight decay) alone: exactly the stage's groups change.

Validation / test: greedy captions for every AD, then CIDEr and ROUGE-L (STAMP's protocol:
lowercase, no punctuation, HF-evaluate ROUGE-L) and AutoAD-II's R@5/16 from BERTScore, per movie
in temporal order. Checkpoints omit the frozen LLM weights (they come from ``model.llm_path``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from tasks.common.runtime.caption_metrics import CaptionMetrics, RecallWithinNeighbours
from tasks.common.runtime.module import TaskModule
from tasks.mad_ad.model import LlamaAdapterAV

log = logging.getLogger(__name__)


class MadADModule(TaskModule):
    def __init__(
        self,
        net: LlamaAdapterAV,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "step",
        stage1_epochs: int = 2,
        stage1_groups: Sequence[str] = ("av", "adapter", "gate"),
        stage2_groups: Sequence[str] = ("bias", "norm", "lora", "gate", "av"),
        batch_plan: dict | None = None,
        max_new_tokens: int = 32,
        caption_metrics: Sequence[str] = ("CIDEr", "ROUGE_L"),
        bertscore_model: str | None = None,
        bertscore_layers: int = 17,
        recall_topk: Sequence[int] = (5,),
        recall_window: int = 16,
        save_predictions: bool = True,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.stage1_epochs = stage1_epochs
        self.stage_groups = {1: list(stage1_groups), 2: list(stage2_groups)}
        self.stage = 1 if stage1_epochs > 0 else 2
        net.set_trainable(self.stage_groups[1] + self.stage_groups[2])
        self._active = {id(p) for p in net.group_parameters(self.stage_groups[self.stage])}
        self.max_new_tokens = max_new_tokens
        self.captions = CaptionMetrics(caption_metrics, tokenize="simple", rouge="hf")
        self.recall_cfg = dict(
            model_path=bertscore_model,
            num_layers=bertscore_layers,
            topk=tuple(recall_topk),
            window=recall_window,
        )
        self._recall: RecallWithinNeighbours | None = None
        self.save_predictions = save_predictions
        self._outputs: list[dict] = []
        self._flops_warned = False
        self.strict_loading = False  # checkpoints carry no frozen LLM weights
        self.effective_batch: dict | None = dict(batch_plan) if batch_plan else None

    def check_effective_batch(self) -> None:
        """The trainer must run the planned batch: per-device x world size x accumulation."""
        plan = self.effective_batch
        if not plan or self._trainer is None:
            return
        world = self.trainer.world_size
        accumulation = self.trainer.accumulate_grad_batches
        actual = int(plan["per_device"]) * world * accumulation
        plan.update(world_size=world, accumulate_grad_batches=accumulation, actual=actual)
        target = plan.get("effective_batch")
        if target is not None and actual != target:
            raise ValueError(
                f"effective batch {actual} (per-device {plan['per_device']} x {world} processes "
                f"x accumulation {accumulation}) differs from module.batch_plan.effective_batch="
                f"{target}; leave trainer.accumulate_grad_batches to its interpolation and set "
                "trainer.devices / trainer.num_nodes to the processes you run"
            )
        log.info("MAD AD: effective batch %s", plan)

    # ------------------------------------------------------------------ stages
    def set_stage(self, stage: int) -> None:
        if stage != self.stage:
            log.info(
                "MAD AD: stage %d -> %d, training %s", self.stage, stage, self.stage_groups[stage]
            )
        self.stage = stage
        self._active = {id(p) for p in self.net.group_parameters(self.stage_groups[stage])}

    def on_after_backward(self) -> None:
        """Drop the gradients of the parameters the current stage does not train."""
        for p in self.net.parameters():
            if p.grad is not None and id(p) not in self._active:
                p.grad = None

    def on_train_epoch_start(self) -> None:
        self.set_stage(1 if self.current_epoch < self.stage1_epochs else 2)
        self.log("train/stage", float(self.stage), on_epoch=True, on_step=False, batch_size=1)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.check_effective_batch()
        counts = {
            f"params/trainable_stage{stage}": float(
                sum(p.numel() for p in self.net.group_parameters(groups))
            )
            for stage, groups in self.stage_groups.items()
        }
        for logger in self.loggers:
            logger.log_metrics(counts, step=0)

    def param_groups(self) -> list[dict]:
        """Every parameter of either stage; no weight decay on biases, norms, scales and gates."""
        params = self.net.group_parameters(self.stage_groups[1] + self.stage_groups[2])
        no_decay = [p for p in params if p.ndim <= 1 or p.shape[-1] == 1]
        skip = {id(p) for p in no_decay}
        decay = [p for p in params if id(p) not in skip]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ steps
    def _loss(self, batch: dict) -> Tensor:
        out = self.net(
            batch["visual"],
            batch["audio"],
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            padding_mask=batch["padding_mask"],
        )
        return out.loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        aux = self.aux_loss()
        total = loss if aux is None else loss + aux.to(loss.device)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return total

    def _eval_step(self, batch: dict, split: str, batch_idx: int) -> None:
        size = len(batch["text"])
        flops = self._count_flops(batch) if batch_idx == 0 else None
        if flops is not None:  # Table 7's compute column: one teacher-forced forward
            self.log(f"{split}/gflops_per_ad", flops / size / 1e9, batch_size=size)
        loss = self._loss(batch)
        self.log(f"{split}/loss", loss, batch_size=size, sync_dist=True)
        start = time.perf_counter()
        texts = self.net.generate(
            batch["visual"], batch["audio"], batch["padding_mask"], self.max_new_tokens
        )
        elapsed_ms = 1000 * (time.perf_counter() - start) / size
        self.log(f"{split}/generation_ms_per_ad", elapsed_ms, batch_size=size)
        for i, text in enumerate(texts):
            self._outputs.append(
                {
                    "index": batch["index"][i],
                    "movie": batch["movie"][i],
                    "start": batch["start"][i],
                    "reference": batch["text"][i],
                    "prediction": text,
                }
            )

    def _count_flops(self, batch: dict) -> float | None:
        """FLOPs of the loss forward (torch's counter); None where it cannot trace the kernel."""
        from torch.utils.flop_counter import FlopCounterMode

        try:
            with FlopCounterMode(display=False) as counter:
                self._loss(batch)
        except (TypeError, RuntimeError, NotImplementedError) as error:
            if not self._flops_warned:
                log.warning("FLOPs not counted (%s: %s)", type(error).__name__, error)
                self._flops_warned = True
            return None
        return float(counter.get_total_flops())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    # ------------------------------------------------------------------ metrics
    def _gathered(self) -> list[dict]:
        outputs, self._outputs = self._outputs, []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, outputs)
            outputs = [o for part in parts for o in part]
        unique = {o["index"]: o for o in outputs}  # a distributed sampler may repeat samples
        return sorted(unique.values(), key=lambda o: (o["movie"], o["start"], o["index"]))

    def _finish_eval(self, split: str) -> None:
        outputs = self._gathered()
        if not outputs or self.trainer.sanity_checking:
            return
        scores = ad_metrics(outputs, self.captions, self.recall_metric())
        for name, value in scores.items():
            self.log(f"{split}/{name}", value, rank_zero_only=True)
        if self.save_predictions and self.trainer.is_global_zero:
            out_dir = Path(self.trainer.default_root_dir) / "predictions"
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{split}_epoch{self.weights_epoch:03d}.jsonl"
            path.write_text("".join(json.dumps(o) + "\n" for o in outputs))

    def recall_metric(self) -> RecallWithinNeighbours:
        if self._recall is None:  # the BERTScore model loads once, at the first evaluation
            self._recall = RecallWithinNeighbours(**self.recall_cfg, device=str(self.device))
        return self._recall

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = {f"net.{name}" for name in self.net.llm_frozen_names}
        state = checkpoint["state_dict"]
        for key in [k for k in state if k in frozen]:
            del state[key]


def ad_metrics(
    outputs: Sequence[dict], captions: CaptionMetrics, recall: RecallWithinNeighbours
) -> dict[str, float]:
    """CIDEr / ROUGE-L over all ADs and R@k/N per movie (ADs in temporal order), x100."""
    predictions = {o["index"]: o["prediction"] for o in outputs}
    references = {o["index"]: [o["reference"]] for o in outputs}
    scores = captions.compute(predictions, references)
    movies: dict[str, tuple[list[str], list[str]]] = {}
    for o in sorted(outputs, key=lambda o: (o["movie"], o["start"], o["index"])):
        generated, truth = movies.setdefault(o["movie"], ([], []))
        generated.append(o["prediction"])
        truth.append(o["reference"])
    scores.update(recall.compute(movies))
    return scores
