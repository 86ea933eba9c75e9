"""Reporting of ``bench_attention.py``'s results: the markdown tables (targets met / missed,
every shape, the depth-32 generator, the generators, parameter counts, scaling, precision) and
the scaling plot. Reads only the results dict that ``bench_attention.py`` writes as
``bench_attention.json``, so a run's tables can be rendered again without measuring anything:

    python scripts/bench_report.py bench_results/bench_attention.json [--md FILE] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TIME_TARGET = 1.1  # best STAMP training backend: time ratio / FLOP ratio
MEMORY_TARGET = 1.2  # STAMP attention memory / plain SDPA's
CKPT_MEMORY_TARGET = 2.0  # depth 32, checkpointed: total training peak / plain attention's
CKPT_TIME_TARGET = 1.35  # checkpointed time / un-checkpointed time


def plot_scaling(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k[:-3] for k in rows[0] if k.endswith("_ms")]
    labels = {
        "sdpa": "plain SDPA",
        "eager": "STAMP eager (mul)",
        "fused": "STAMP fused (mul)",
        "flex": "STAMP flex (mul)",
        "compiled_fused": "STAMP compiled fused (mul)",
        "matmuls": "fused's matmuls alone",
        "gen_mlp": "STAMP fused + MLP gen.",
        "gen_lowrank": "STAMP fused + lowrank r16 gen.",
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["n"] for r in rows]
    for name in names:
        axes[0].plot(ns, [r[f"{name}_ms"] for r in rows], "o-", label=labels.get(name, name))
        peaks = [r[f"{name}_peak_bytes"] for r in rows]
        if any(peaks):  # (no peaks without the second process: --no-cpu-peaks)
            mem = [(p or float("nan")) / 2**20 for p in peaks]
            axes[1].plot(ns, mem, "o-", label=labels.get(name, name))
    for ax, ylabel in zip(
        axes, ("fwd+bwd time (ms)", "peak memory of the step (MiB)"), strict=True
    ):
        if not ax.lines:
            ax.set_title("not measured", fontsize=9)
            continue
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (queries = keys)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def summary_rows(results: dict) -> list[dict]:
    """One row per target: measured value, target, met / **missed** with the measured reason."""
    out = []
    for entry in results.get("shapes", {}).values():
        s, best = entry["shape"], entry.get("best")
        if not best:
            continue
        plain_eager = next((r for r in entry["rows"] if r["variant"] == "plain eager"), None)
        ok = best["overhead"] <= TIME_TARGET
        reason = ""
        if not ok:
            reason = (
                f"attention core off SDPA's fused kernel: plain eager alone is "
                f"{plain_eager['overhead']:.2f}x; "
                if plain_eager
                else ""
            ) + f"best time ratio {best['time_ratio']:.2f} for FLOP ratio {best['flop_ratio']:.2f}"
        out.append(
            {
                "what": f"{s['name']} time/FLOP, best STAMP ({best['variant']})",
                "measured": f"{best['overhead']:.2f}",
                "target": f"<= {TIME_TARGET}",
                "status": "met" if ok else "**missed**",
                "reason": reason,
            }
        )
        mem = entry.get("best_memory")
        if mem:
            ok = mem["attn_memory_ratio"] <= MEMORY_TARGET
            out.append(
                {
                    "what": f"{s['name']} attention memory, {mem['variant']}",
                    "measured": f"{mem['attn_memory_ratio']:.2f}x",
                    "target": f"<= {MEMORY_TARGET}x",
                    "status": "met" if ok else "**missed**",
                    "reason": "" if ok else mem.get("reason", ""),
                }
            )
    ck = results.get("checkpoint")
    if ck and ck.get("memory_ratio_ckpt") is not None:
        ok = ck["memory_ratio_ckpt"] <= CKPT_MEMORY_TARGET
        full = ck["memory_ratio_no_ckpt"]
        out.append(
            {
                "what": f"depth {ck['shape']['depth']} generator + mask.checkpoint: training peak "
                "vs plain attention",
                "measured": f"{ck['memory_ratio_ckpt']:.2f}x (without: {full:.2f}x)",
                "target": f"<= {CKPT_MEMORY_TARGET}x",
                "status": "met" if ok else "**missed**",
                "reason": "",
            }
        )
        ok = ck["time_ratio_ckpt_vs_no_ckpt"] <= CKPT_TIME_TARGET
        out.append(
            {
                "what": "... its time vs un-checkpointed",
                "measured": f"{ck['time_ratio_ckpt_vs_no_ckpt']:.2f}x",
                "target": f"<= {CKPT_TIME_TARGET}x",
                "status": "met" if ok else "**missed**",
                "reason": "" if ok else "one more forward of the generator (its FLOPs +1/3)",
            }
        )
    return out


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: the title, a table of ``header`` and ``rows``, a blank line."""
    return [
        title,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def to_markdown(results: dict) -> str:
    lines = [
        f"Device: {results['device']}; torch {results['torch']}; {results['dtype']}; "
        f"median of {results['repeats']} interleaved rounds after {results['warmup']} warm-up.",
        "",
    ]
    summary = summary_rows(results)
    if summary:
        lines += _table(
            "## Targets",
            ["what", "measured", "target", "status", "reason (measured)"],
            [[r["what"], r["measured"], r["target"], r["status"], r["reason"]] for r in summary],
        )
    for entry in results.get("shapes", {}).values():
        s = entry["shape"]
        lines += _table(
            f"### {s['name']}: B={s['batch']}, Nq={s['nq']}, Nk={s['nk']}, D={s['dim']}, "
            f"H={s['heads']}, generator depth {s['depth']}",
            ["variant", "pass", "time (ms)", "time ratio", "FLOP ratio", "time/FLOP"]
            + ["attention memory ratio", "peak (MiB)", "peak ratio"],
            [
                [r["variant"], r["pass"], f"{r['time_ms']:.2f}", f"{r['time_ratio']:.2f}"]
                + [f"{r['flop_ratio']:.2f}", f"{r['overhead']:.2f}"]
                + [_ratio(r["attn_memory_ratio"]), _mib(r["peak_bytes"]), _ratio(r["peak_ratio"])]
                for r in entry["rows"]
            ],
        )
    ck = results.get("checkpoint")
    if ck:
        s = ck["shape"]
        lines += _table(
            f"### Depth-{s['depth']} generator, {s['name']}, B={s['batch']} (training step)",
            ["variant", "time (ms)", "peak (MiB)"],
            [[r["variant"], f"{r['time_ms']:.1f}", _mib(r["peak_bytes"])] for r in ck["rows"]],
        )
    for entry in results.get("generators", {}).values():
        s = entry["shape"]
        lines += _table(
            f"### Generators at {s['name']}: B={s['batch']}, Nq={s['nq']}, Nk={s['nk']}, "
            f"D={s['dim']}, H={s['heads']}, depth {s['depth']}",
            ["generator / backend", "pass", "generator params", "time (ms)", "time vs SDPA"]
            + ["time/FLOP", "time vs MLP", "FLOP vs MLP", "attention memory vs SDPA"]
            + ["peak (MiB)", "peak vs SDPA", "peak vs MLP"],
            [
                [r["variant"], r["pass"], f"{r['generator_params']:,}", f"{r['time_ms']:.2f}"]
                + [f"{r['time_ratio']:.2f}", f"{r['overhead']:.2f}", _ratio(r["time_vs_mlp"])]
                + [_ratio(r["flop_vs_mlp"]), _ratio(r["attn_memory_ratio"])]
                + [_mib(r["peak_bytes"]), _ratio(r["peak_ratio"]), _ratio(r["peak_vs_mlp"])]
                for r in entry["rows"]
            ],
        )
    pc = results.get("params")
    if pc:
        lines += _table(
            "### Generator parameters against N (closed form, equal to the module's count)",
            ["D, depth, H (shapes)", "generator", *(f"N={n}" for n in pc[0]["n"])],
            [
                [f"{r['dim']}, {r['depth']}, {r['heads']} ({r['config']})", r["generator"]]
                + [f"{c:,}" for c in r["params"]]
                for r in pc
            ],
        )
    sc = results.get("scaling")
    if sc and sc["rows"]:
        names = [k[:-3] for k in sc["rows"][0] if k.endswith("_ms")]
        lines += _table(
            f"### Scaling: {sc['what']}",
            ["N", *(f"{n} ms" for n in names), *(f"{n} peak MiB" for n in names)],
            [
                [str(r["n"]), *(f"{r[f'{n}_ms']:.1f}" for n in names)]
                + [_mib(r[f"{n}_peak_bytes"]) for n in names]
                for r in sc["rows"]
            ],
        )
        if "sdpa" in names and len(names) > 1:
            others = [n for n in names if n != "sdpa"]
            lines += _table(
                "Time ratio to plain SDPA (same run):",
                ["N", *(f"{n} / sdpa" for n in others)],
                [
                    [str(r["n"]), *(f"{r[f'{n}_ms'] / r['sdpa_ms']:.2f}" for n in others)]
                    for r in sc["rows"]
                ],
            )
    pr = results.get("precision")
    if pr:
        lines += _table(
            f"### Reduced precision: {pr['what']}",
            ["variant", "time (ms)", "time vs M bf16", "saved for backward (MiB)", "peak (MiB)"]
            + ["deviation error"],
            [
                [r["variant"], f"{r['time_ms']:.1f}", _ratio(r["time_vs_bf16"])]
                + [_mib(r["saved_bytes"]), _mib(r["peak_bytes"]), f"{r['deviation_error']:.4f}"]
                for r in pr["rows"]
            ],
        )
    if results.get("skipped"):
        lines += [f"Skipped (time budget): {', '.join(results['skipped'])}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="bench_attention.json of a run")
    parser.add_argument("--md", type=Path, default=None, help="write the markdown here too")
    parser.add_argument("--plot", type=Path, default=None, help="scaling plot (PNG)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    markdown = to_markdown(results)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown)
    scaling = (results.get("scaling") or {}).get("rows")
    if args.plot is not None and scaling:
        plot_scaling(scaling, args.plot, f"STAMP attention scaling, {results['device']}")
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()
