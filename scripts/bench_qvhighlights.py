"""Speed of the QVHighlights task on this machine.

1. Training step (forward + loss + backward + AdamW; batch 32, 75 clips, real feature sizes),
   side by side in one process, rounds interleaved (one step of each model per round, median):
   * the official QD-DETR, as its code builds it (``nn.MultiheadAttention`` layers, sequence-first,
     the packed T2V mask): the re-statement of the official formulas in
     ``tests/qvhighlights/qdetr_official_reference.py`` (checked against this project's model
     in ``tests/qvhighlights/test_official_equivalence.py``);
   * this project's QD-DETR, mask none, with the official model's weights
     (``tasks.qvhighlights.convert``): the same function;
   * multi-layer STAMP at depth 32 (default attention=fused), and the same with
     ``mask.checkpoint``.
   FLOPs of one step from ``torch.utils.flop_counter``; "overhead" = time ratio / FLOP ratio
   against the project's mask none.
2. Time to evaluate the 1,550 val queries: the vectorised ``tasks.qvhighlights.metrics`` vs the
   official-style per-query loop (``tests/qvhighlights/qvh_official_reference.py``), with a check
   that both give identical metrics.

    python scripts/bench_qvhighlights.py --steps 5 --threads 1 [--json out.json] [--md out.md]

(``--gt`` the val annotations, default data/qvhighlights/; ``--skip-train`` / ``--skip-eval``.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from stamp import AttentionConfig, MaskConfig  # noqa: E402
from tasks.qvhighlights.convert import from_official_state_dict  # noqa: E402
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


class _OfficialWithMask(torch.nn.Module):
    """The official model plus the ``video_mask`` entry the shared loss reads."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
        out = self.model(src_txt, src_txt_mask, src_vid, src_vid_mask)
        out["video_mask"] = src_vid_mask
        return out


def build_models(depth: int, backend: str) -> dict[str, torch.nn.Module]:
    """Official QD-DETR and this project's variants (all with the official hyper-parameters)."""
    from tests.qvhighlights.qdetr_official_reference import OfficialQDDETR

    torch.manual_seed(0)
    official = OfficialQDDETR(2818, 512)
    ours = QDDETR(2816, 512, mask=MaskConfig(type="none"))
    ours.load_state_dict(from_official_state_dict(official.state_dict()), strict=True)
    models = {"official QD-DETR (nn.MultiheadAttention)": _OfficialWithMask(official)}
    models["project, mask none"] = ours
    attention = AttentionConfig(backend=backend)
    for ckpt in (False, True):
        torch.manual_seed(0)
        label = f"project, multilayer depth {depth}, attention={backend}"
        label += ", mask.checkpoint" if ckpt else ""
        models[label] = QDDETR(
            2816,
            512,
            mask=MaskConfig(type="multilayer", depth=depth, checkpoint=ckpt),
            attention=attention,
        )
    return models


def train_step_fn(model: torch.nn.Module, batch: dict):
    criterion = QDDETRLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    inputs = {k: batch[k] for k in ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")}

    def step() -> None:
        loss = criterion(model(**inputs), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    return step


def train_side_by_side(depth: int, backend: str, batch_size: int, steps: int) -> list[dict]:
    batch = synthetic_batch(batch_size)
    models = build_models(depth, backend)
    fns = {k: train_step_fn(m.train(), batch) for k, m in models.items()}
    flops = {}
    for k, fn in fns.items():
        counter = FlopCounterMode(display=False)
        with counter:
            fn()  # also the warm-up step
        flops[k] = counter.get_total_flops()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    official = next(iter(fns))
    base = "project, mask none"
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k, model in models.items():
        time_ratio, flop_ratio = med[k] / med[base], flops[k] / flops[base]
        rows.append(
            {
                "model": k,
                "params": sum(p.numel() for p in model.parameters()),
                "median_step_s": round(med[k], 4),
                "min_step_s": round(min(times[k]), 4),
                "speed_vs_official": round(med[official] / med[k], 3),
                "gflop_per_step": round(flops[k] / 1e9, 2),
                "time_ratio_vs_none": round(time_ratio, 3),
                "flop_ratio_vs_none": round(flop_ratio, 3),
                "overhead": round(time_ratio / flop_ratio, 3),
            }
        )
    return rows


def train_markdown(report: dict) -> str:
    rows = report["train"]
    lines = [
        f"{report['machine']}; batch {report['batch_size']}, median of {report['steps']} "
        "interleaved steps",
        "",
        "| model | step (s) | speed vs official | GFLOP/step | time ratio vs none "
        "| FLOP ratio vs none | time/FLOP |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['median_step_s']:.3f} | {r['speed_vs_official']:.2f}x | "
            f"{r['gflop_per_step']:.1f} | {r['time_ratio_vs_none']:.2f} | "
            f"{r['flop_ratio_vs_none']:.2f} | {r['overhead']:.2f} |"
        )
    none = next(r for r in rows if r["model"] == "project, mask none")
    ok = none["speed_vs_official"] >= 1.0
    status = "met" if ok else "**missed**"
    lines += [
        "",
        f"Target: project mask none >= 1.0x the official speed: {none['speed_vs_official']:.2f}x "
        f"({status}).",
    ]
    for r in rows[2:]:
        lines.append(
            f"{r['model']}: {r['time_ratio_vs_none']:.2f}x the time of mask none for "
            f"{r['flop_ratio_vs_none']:.2f}x its FLOPs (time/FLOP {r['overhead']:.2f})."
        )
    return "\n".join(lines)


def plot_train(report: dict, path: Path) -> None:
    """Step time per model beside the time its FLOPs alone would predict (from mask none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["train"]
    none = next(r for r in rows if r["model"] == "project, mask none")
    names = [r["model"].replace("project, ", "").replace(", attention=", "\n") for r in rows]
    measured = [r["median_step_s"] for r in rows]
    predicted = [none["median_step_s"] * r["gflop_per_step"] / none["gflop_per_step"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], measured, 0.4, label="measured step")
    ax.bar([x + 0.2 for x in xs], predicted, 0.4, label="mask none's time x FLOP ratio")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("training step (s)")
    ax.set_title(
        f"QD-DETR training step, batch {report['batch_size']}: {report['machine']}", fontsize=9
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--backend", default="fused", help="attention backend of the STAMP rows")
    parser.add_argument("--md", type=Path, default=None, help="write the training table here")
    parser.add_argument("--plot", type=Path, default=None, help="side-by-side figure (PNG)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--gt", type=Path, default=DEFAULT_GT, help="QVHighlights val annotations (jsonl)"
    )
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-eval", action="store_true", help="no evaluation benchmark")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.skip_eval and not args.gt.is_file():
        print(
            f"bench_qvhighlights: the evaluation benchmark needs the val annotations, not found at "
            f"{args.gt}; pass --gt <highlight_val_release.jsonl> (the repository ships it in "
            "data/qvhighlights/), or --skip-eval",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if not args.skip_train:
        report["batch_size"], report["steps"] = args.batch_size, args.steps
        report["train"] = train_side_by_side(args.depth, args.backend, args.batch_size, args.steps)
    if not args.skip_eval:
        report["eval"] = eval_times(args.gt, args.eval_repeats)
    print(json.dumps(report, indent=2))
    if "train" in report:
        markdown = train_markdown(report)
        print("\n" + markdown)
        if args.plot:
            plot_train(report, args.plot)
        if args.md:
            args.md.parent.mkdir(parents=True, exist_ok=True)
            args.md.write_text(markdown + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
