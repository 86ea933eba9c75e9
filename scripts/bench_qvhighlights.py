"""Speed of the QVHighlights task on this machine.

1. Training steps per second of the default QD-DETR (hidden 256, real feature sizes, 75 clips,
   batch 32) with mask=none vs mask=multilayer (depth 32), forward + loss + backward + AdamW.
2. Time to evaluate the 1,550 val queries: the vectorised ``tasks.qvhighlights.metrics`` vs the
   official-style per-query loop (``tests/qvhighlights/qvh_official_reference.py``), with a check
   that both give identical metrics.

    python scripts/bench_qvhighlights.py --steps 10 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stamp import MaskConfig  # noqa: E402
from tasks.qvhighlights.losses import QDDETRLoss  # noqa: E402
from tasks.qvhighlights.metrics import eval_submission, load_jsonl  # noqa: E402
from tasks.qvhighlights.model import QDDETR  # noqa: E402

DEFAULT_GT = ROOT / "data" / "qvhighlights" / "highlight_val_release.jsonl"


def synthetic_batch(batch_size: int, n_clips: int = 75, n_tokens: int = 24) -> dict:
    """A batch with the real feature sizes (SlowFast + CLIP + tef, CLIP text) and labels."""
    g = torch.Generator().manual_seed(0)
    vid_mask = torch.ones(batch_size, n_clips)
    txt_mask = torch.ones(batch_size, n_tokens)
    for i in range(batch_size):  # varied lengths, as in a real batch
        vid_mask[i, n_clips - (i % 5) * 3 :] = 0
        txt_mask[i, n_tokens - (i % 7) * 2 :] = 0
    labels = torch.zeros(batch_size, n_clips)
    labels[:, 10:30] = torch.randint(1, 13, (batch_size, 20), generator=g).float()
    return {
        "src_vid": torch.randn(batch_size, n_clips, 2818, generator=g),
        "src_vid_mask": vid_mask,
        "src_txt": torch.randn(batch_size, n_tokens, 512, generator=g),
        "src_txt_mask": txt_mask,
        "span_labels": [
            torch.tensor([[0.3, 0.2], [0.7, 0.1]])[: 1 + i % 2] for i in range(batch_size)
        ],
        "saliency_pos_labels": torch.tensor([[12, 20]] * batch_size),
        "saliency_neg_labels": torch.tensor([[40, 50]] * batch_size),
        "saliency_all_labels": labels,
    }


def train_steps_per_second(mask: str, depth: int, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = QDDETR(2816, 512, mask=MaskConfig(type=mask, depth=depth))
    criterion = QDDETRLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(batch_size)
    inputs = {k: batch[k] for k in ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")}

    def step() -> None:
        loss = criterion(model(**inputs), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return {
        "mask": mask,
        "depth": depth if mask != "none" else None,
        "batch_size": batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "median_step_s": round(median, 4),
        "steps_per_s": round(1 / median, 3),
        "min_step_s": round(times[0], 4),
    }


def eval_times(gt_path: Path, repeats: int) -> dict:
    from tests.qvhighlights import qvh_official_reference as reference

    gt_all = load_jsonl(gt_path)
    sub = [d for d in reference.fake_predictions(gt_all, 0) if d["pred_relevant_windows"]]
    qids = {d["qid"] for d in sub}
    gt = [d for d in gt_all if d["qid"] in qids]  # the official R1 cannot take empty predictions
    fast = []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = eval_submission(sub, gt)
        fast.append(time.perf_counter() - start)
    start = time.perf_counter()
    ref = reference.eval_submission(sub, gt)
    slow = time.perf_counter() - start
    return {
        "queries": len(gt),
        "vectorised_s": round(min(fast), 3),
        "official_style_loop_s": round(slow, 3),
        "speedup": round(slow / min(fast), 1),
        "identical": ours == ref,
        "brief": ours["brief"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--gt", type=Path, default=DEFAULT_GT)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if not args.skip_train:
        report["train"] = [
            train_steps_per_second(m, args.depth, args.batch_size, args.steps)
            for m in ("none", "multilayer")
        ]
    if args.gt.is_file():
        report["eval"] = eval_times(args.gt, args.eval_repeats)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
