"""The paper's figures: STAMP depth sweep (Fig. S4), attention-weight histograms at the first, a
middle and the last layer, STAMP vs full attention (Figs. S5 / S7), and a sample's mask heatmap
with the modality boundaries marked (Figs. S6 / S8 / S9), with, when the raw media are given,
panel (a): the frames and the audio waveform the sample's tokens come from.

Attention and masks are collected with ``stamp.record_attention`` over one batch (the paper's
Fig. S5 uses 64 samples). Figures are written as PNG with matplotlib's Agg backend (no display
needed) and can be logged to W&B as images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from stamp import record_attention  # noqa: E402
from stamp.diagnostics import GROUPS as RELEVANCE_GROUPS  # noqa: E402
from tasks.common.reporting.profiling import first_batch, forward_fn  # noqa: E402
from tasks.common.runtime.checkpoints import read_checkpoint  # noqa: E402
from tasks.common.runtime.results import RESULTS_FILE, load_results  # noqa: E402

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- collecting
def load_run(run_dir: str | Path, checkpoint: str = "best", batch_size: int | None = None):
    """Rebuild a finished run's model from its results.json config and load its checkpoint
    (``best``, ``last``, ``none`` for the initial weights, or a path). Returns
    (record, module, datamodule)."""
    from tasks.common.runtime.pipeline import build, core_configs

    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / RESULTS_FILE} not found: pass a run directory")
    record = load_results([run_dir / RESULTS_FILE])[0]
    cfg = OmegaConf.create(record["config"])
    if batch_size is not None:
        with open_dict(cfg):
            for key in ("batch_size", "eval_batch_size"):
                if key in cfg.data:
                    cfg.data[key] = batch_size
    mask, attention = core_configs(cfg)
    datamodule, _, module = build(cfg, mask, attention)
    ckpt = _checkpoint_path(record, run_dir, checkpoint)
    if ckpt is not None:
        state = read_checkpoint(ckpt)  # weights only: a crafted file runs no code
        # as Lightning loads it: modules that keep frozen weights out of their checkpoints (the
        # MAD task's LLaMA) set strict_loading = False
        module.load_state_dict(state["state_dict"], strict=getattr(module, "strict_loading", True))
        log.info("loaded %s", ckpt)
    return record, module.eval(), datamodule


def _checkpoint_path(record: dict, run_dir: Path, checkpoint: str) -> Path | None:
    if checkpoint == "none":
        return None
    if checkpoint == "best":
        best = (record.get("best") or {}).get("ckpt")
        if best and Path(best).is_file():
            return Path(best)
        checkpoint = "last"
    if checkpoint == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last
        raise FileNotFoundError(
            f"{run_dir}: no best checkpoint and no {last}; pass --checkpoint none to plot the "
            "initial weights or --checkpoint <file.ckpt>"
        )
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    return Path(checkpoint)


def first_calls(records: list[dict]) -> list[dict]:
    """The first call of every attention module, in call order: one record per layer even when
    a forward runs a module more than once (QD-DETR's negative pairs, decoding loops)."""
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(record["name"], record)
    return list(seen.values())


def collect_attention(module: nn.Module, batch: Any) -> list[dict]:
    """One record per attention module (its first call in the forward), in call order:
    {name, attn (B,H,Nq,Nk), mask, key_padding_mask}."""
    with record_attention(module) as records:
        forward_fn(module, batch)()
    return first_calls(records)


def collect_run(module: nn.Module, datamodule: Any, split: str = "val") -> tuple[list[dict], Any]:
    """Attention records of one batch of ``split``; a val batch that cannot run the training
    objective (no targets in it) falls back to a train batch."""
    batch = first_batch(datamodule, split)
    try:
        return collect_attention(module, batch), batch
    except (KeyError, TypeError, AttributeError) as error:
        if split == "train":
            raise
        log.warning("a %s batch cannot run the training objective (%s): using train", split, error)
        return collect_run(module, datamodule, "train")


def pick_layers(count: int, layers: Sequence[int] | None = None) -> list[int]:
    """Indices of the first, a middle and the last attention call (or the given ones)."""
    if count == 0:
        raise ValueError("no attention was recorded (the model has no StampAttention)")
    chosen = list(layers) if layers else [0, count // 2, count - 1]
    out = []
    for i in chosen:
        j = i + count if i < 0 else i
        if not 0 <= j < count:
            raise ValueError(f"layer {i} out of range: {count} attention calls were recorded")
        if j not in out:
            out.append(j)
    return out


def attention_weights(record: dict) -> Tensor:
    """The attention probabilities of valid (query, key) pairs, flattened (padding left out)."""
    attn = record["attn"].float()  # (B, H, Nq, Nk)
    valid = torch.ones(attn.shape[0], attn.shape[2], attn.shape[3], dtype=torch.bool)
    pad = record.get("key_padding_mask")
    if pad is not None:
        valid &= ~pad.bool()[:, None, :]
        if attn.shape[2] == attn.shape[3]:  # self-attention: padded queries too
            valid &= ~pad.bool()[:, :, None]
    return attn.permute(0, 2, 3, 1)[valid].flatten()


def modality_boundaries(net: nn.Module) -> list[int] | None:
    """Token indices where a new modality starts, from the ``modality_boundaries()`` method of
    the model or of the first submodule that has one."""
    for module in net.modules():
        fn = getattr(module, "modality_boundaries", None)
        if callable(fn):
            return [int(b) for b in fn()]
    return None


# ----------------------------------------------------------------------------- figures
def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_attention_histograms(
    runs: dict[str, list[dict]],
    path: str | Path,
    layers: Sequence[int] | None = None,
    bins: int = 50,
) -> Path:
    """Figs. S5 / S7: one panel per chosen layer, one histogram per run (e.g. STAMP, full)."""
    count = min(len(r) for r in runs.values())
    idx = pick_layers(count, layers)
    fig, axes = plt.subplots(1, len(idx), figsize=(4.2 * len(idx), 3.4), squeeze=False)
    for ax, i in zip(axes[0], idx, strict=True):
        weights = {label: attention_weights(records[i]).numpy() for label, records in runs.items()}
        top = max(float(w.max()) for w in weights.values() if w.size) or 1.0
        for label, w in weights.items():
            ax.hist(w, bins=bins, range=(0.0, top), alpha=0.55, label=label, density=True)
        name = next(iter(runs.values()))[i]["name"]
        ax.set_title(f"attention layer {i + 1} of {count}\n{name}", fontsize=9)
        ax.set_xlabel("attention weight")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("density (log)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("attention-weight distribution over one batch", y=1.04)
    return _save(fig, path)


def _draw_mask(
    ax: plt.Axes,
    mask: Tensor,
    boundaries: Sequence[int] | None = None,
    key_padding: Tensor | None = None,
):
    """One sample's (Nq, Nk) mask on ``ax``: padded keys (and queries) blank, red lines where a
    modality starts; returns the image (for a colour bar)."""
    values = mask.detach().float().cpu().clone()
    if key_padding is not None:
        pad = key_padding.bool().cpu()
        values[:, pad] = float("nan")
        if values.shape[0] == values.shape[1]:  # self-attention: padded queries too
            values[pad, :] = float("nan")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(values.numpy(), cmap=cmap, aspect="auto", interpolation="nearest")
    for b in boundaries or []:
        ax.axvline(b - 0.5, color="red", linewidth=1.2)
        if values.shape[0] == values.shape[1]:
            ax.axhline(b - 0.5, color="red", linewidth=1.2)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    return image


def plot_mask_heatmap(
    mask: Tensor,
    path: str | Path,
    boundaries: Sequence[int] | None = None,
    key_padding: Tensor | None = None,
    title: str = "STAMP mask",
) -> Path:
    """Figs. S6 / S8 / S9: one sample's (Nq, Nk) mask; modality boundaries as lines, padded
    keys blank."""
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    image = _draw_mask(ax, mask, boundaries, key_padding)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="mask value M")
    return _save(fig, path)


def mask_records(records: list[dict]) -> list[int]:
    """Indices of the recorded calls that had a STAMP mask."""
    return [i for i, r in enumerate(records) if r.get("mask") is not None]


def render_mask_image(
    mask: Tensor,
    path: str | Path,
    boundaries: Sequence[int] | None = None,
    key_padding: Tensor | None = None,
    title: str = "STAMP mask",
    size: int = 384,
) -> Path:
    """One sample's (Nq, Nk) mask as a PNG drawn pixel by pixel (a few ms, where the matplotlib
    figure of ``plot_mask_heatmap`` takes about half a second): each entry a block of pixels in
    viridis, padded keys (and queries) light grey, red lines where a modality starts, the title
    above and a colour scale with its range on the right. For the heatmap at every validation."""
    import numpy as np
    from PIL import Image, ImageDraw

    values = mask.detach().float().cpu().clone()
    if key_padding is not None:
        pad = key_padding.bool().cpu()
        values[:, pad] = float("nan")
        if values.shape[0] == values.shape[1]:
            values[pad, :] = float("nan")
    finite = values[values.isfinite()]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    scaled = ((values - lo) / (hi - lo if hi > lo else 1.0)).numpy()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    pixels = (cmap(np.ma.masked_invalid(scaled))[..., :3] * 255).astype(np.uint8)
    nq, nk = values.shape
    scale = max(1, size // max(nq, nk))
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    for b in boundaries or []:
        col = max(0, min(b * scale, nk * scale) - 1)
        pixels[:, col] = (255, 0, 0)
        if nq == nk:
            pixels[col, :] = (255, 0, 0)
    height, width = pixels.shape[:2]
    top, right, bar = 18, 70, 12
    canvas = Image.new("RGB", (width + right, height + top), "white")
    canvas.paste(Image.fromarray(pixels), (0, top))
    ramp = (cmap(np.linspace(1.0, 0.0, height))[:, :3] * 255).astype(np.uint8)
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None], bar, axis=1)), (width + 6, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 3), title, fill="black")
    draw.text((width + bar + 9, top), f"{hi:.3g}", fill="black")
    draw.text((width + bar + 9, top + height - 11), f"{lo:.3g}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, compress_level=1)
    return path


def run_mask(records: list[dict], sample: int = 0, layer: int = 0) -> tuple | None:
    """(record, (Nq, Nk) mask, key padding or None) of ``sample`` at the ``layer``-th masked
    attention call (a per-head mask: the mean over heads); None if the run has no mask."""
    masked = mask_records(records)
    if not masked:
        return None
    record = records[masked[pick_layers(len(masked), [layer])[0]]]
    mask = record["mask"]
    m = mask[sample] if mask.dim() == 3 else mask[sample].mean(0)
    pad = record.get("key_padding_mask")
    return record, m, None if pad is None else pad[sample]


def plot_run_mask(
    records: list[dict],
    path: str | Path,
    sample: int = 0,
    layer: int = 0,
    boundaries: Sequence[int] | None = None,
    label: str = "",
    scene: dict | None = None,
    style: str = "figure",
) -> Path | None:
    """The mask heatmap of ``sample`` at the ``layer``-th masked attention call (None if the
    run has no mask). ``scene``: ``plot_scene``'s media and window (frames, waveform, rate,
    window) for the figure with panel (a) and the moment's caption. ``style``: ``figure``
    (matplotlib, with axes) or ``image`` (``render_mask_image``, a few ms)."""
    found = run_mask(records, sample, layer)
    if found is None:
        return None
    record, m, pad = found
    title = f"{label} mask, sample {sample}, {record['name']}".strip()
    if scene is not None:
        return plot_scene(m, path, boundaries=boundaries, key_padding=pad, title=title, **scene)
    if style == "image":
        return render_mask_image(m, path, boundaries, pad, title)
    if style != "figure":
        raise ValueError(f"style must be 'figure' or 'image', got {style!r}")
    return plot_mask_heatmap(m, path, boundaries, pad, title)


# ----------------------------------------------------------------------------- panel (a)
def read_frames(path: str | Path, start_s: float, count: int, fps: float) -> list:
    """``count`` RGB frames (PIL images) of a video from ``start_s`` at ``fps``: frame k is the one
    on screen at ``start_s + k / fps`` (as ``scripts/extract_features.py`` samples the features),
    decoded from the keyframe before ``start_s`` only, not from the movie's start."""
    import av

    times = [start_s + k / fps for k in range(count)]
    frames: list = []
    previous = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if start_s > 0 and stream.time_base is not None:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            while previous is not None and len(frames) < count and t > times[len(frames)] + 1e-6:
                frames.append(previous)
            if len(frames) == count:
                break
            previous = frame.to_image()
    if previous is None:
        raise ValueError(f"{path}: no video frame at or after {start_s:.2f} s")
    frames += [previous] * (count - len(frames))  # past the last frame: it stays on screen
    return frames


def read_waveform(
    path: str | Path, start_s: float, seconds: float, rate: int = 16000
) -> tuple[Tensor, int]:
    """The mono waveform of a file's first audio stream (a wav, or a video's sound) from
    ``start_s`` for ``seconds``, resampled to ``rate``; (samples,) float32 and the rate."""
    import av
    import numpy as np

    chunks, first = [], None
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        if start_s > 0 and stream.time_base is not None:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(stream):
            if first is None:
                first = float(frame.time or 0.0)
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            if first + sum(len(c) for c in chunks) / rate >= start_s + seconds:
                break
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    lo = max(0, int(round((start_s - (first or 0.0)) * rate)))
    window = samples[lo : lo + int(round(seconds * rate))]
    return torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)), rate


def plot_scene(
    mask: Tensor,
    path: str | Path,
    frames: Sequence | None = None,
    waveform: Tensor | None = None,
    rate: int = 16000,
    window: dict | None = None,
    boundaries: Sequence[int] | None = None,
    key_padding: Tensor | None = None,
    title: str = "",
    max_frames: int = 10,
) -> Path:
    """Figs. S6 / S8 / S9: (a) the frames and the audio waveform the tokens come from (when
    given), (b) the sample's (Nq, Nk) mask with the modality boundaries. ``window``: the
    ``media_window`` of the sample (visual / audio start, seconds, fps, the AD)."""
    window = window or {}
    has_media = frames is not None or waveform is not None
    fig = plt.figure(figsize=(11.0, 8.6 if has_media else 5.0))
    grid = fig.add_gridspec(
        3 if has_media else 1,
        1,
        height_ratios=[1.0, 0.8, 3.0][-(3 if has_media else 1) :],
        hspace=0.5,
    )
    first_panel = None
    if frames is not None:
        step = max(1, -(-len(frames) // max_frames))  # ceil: at most max_frames thumbnails
        shown = list(range(0, len(frames), step))
        strip = grid[0].subgridspec(1, len(shown), wspace=0.04)
        fps = float(window.get("fps", 5.0))
        start = float(window.get("visual_start_s", 0.0))
        for j, k in enumerate(shown):
            ax = fig.add_subplot(strip[0, j])
            first_panel = first_panel or ax
            ax.imshow(frames[k])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"v{k}\n{start + k / fps:.1f} s", fontsize=7)
    if waveform is not None:
        ax = fig.add_subplot(grid[1])
        first_panel = first_panel or ax
        start = float(window.get("audio_start_s", 0.0))
        t = start + torch.arange(len(waveform), dtype=torch.float64) / rate
        ax.plot(t.numpy(), waveform.numpy(), linewidth=0.5, color="tab:blue")
        tokens = int(window.get("tokens_per_modality", 0))
        fps = float(window.get("fps", 5.0))
        for k in range(tokens + 1):  # one audio token per 1 / fps seconds
            ax.axvline(start + k / fps, color="grey", linewidth=0.3)
        ax.set_xlabel("audio (s)")
        ax.set_ylabel("amplitude")
        ax.set_xlim(start, start + float(window.get("seconds", len(waveform) / rate)))
    ax = fig.add_subplot(grid[-1])
    image = _draw_mask(ax, mask, boundaries, key_padding)
    fig.colorbar(image, ax=ax, label="mask value M")
    if first_panel is not None:
        top = first_panel.get_position().y1
        fig.text(0.02, top + 0.02, "(a)", fontsize=11, weight="bold", va="bottom")
        fig.text(0.02, ax.get_position().y1 + 0.01, "(b)", fontsize=11, weight="bold")
    caption = title
    if window.get("movie") is not None:
        caption += (
            f"\n{window['movie']}, AD {window['start']:.1f}-{window['end']:.1f} s: "
            f'"{window.get("text", "")}"'
        )
    fig.suptitle(caption.strip(), fontsize=10)
    return _save(fig, path)


def stamp_groups_label(record: dict) -> str:
    """``", t2v only"`` for a run whose ``model.stamp_layers`` (QVHighlights) is not the
    default both groups; empty otherwise (and for tasks without the setting)."""
    model = (record.get("config") or {}).get("model") or {}
    groups = model.get("stamp_layers") if isinstance(model, dict) else None
    if not groups or sorted(groups) == ["self", "t2v"]:
        return ""
    return f", {'+'.join(groups)} only"


def plot_depth_sweep(
    records: list[dict],
    metric: str,
    path: str | Path,
    paper_points: dict[tuple[int, str], float] | None = None,
) -> Path:
    """Fig. S4: ``metric`` against STAMP depth, one line per fusion op (mean ± std over seeds);
    full attention runs as a dashed line; the paper's points as crosses."""
    from tasks.common.reporting.tables import Stat
    from tasks.common.runtime.results import generator_label, mask_type

    ok = [r for r in records if r.get("status", "ok") == "ok" and metric in r.get("metrics", {})]
    if not ok:
        raise ValueError(f"no finished run logged {metric}")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    kinds = [mask_type(r) for r in ok]
    stamp = [r for r, k in zip(ok, kinds, strict=True) if k and not k.is_full_attention]

    def line_of(r: dict) -> tuple[str, str, str]:
        return str(r.get("fusion")), generator_label(r), stamp_groups_label(r)

    # one line per fusion op, generator form (mlp / lowrank / per-head) and the layer groups
    # with STAMP (QVHighlights: both groups or cross-attention only) - never sharing a line
    lines = sorted({line_of(r) for r in stamp})
    for fusion, form, groups in lines:
        by_depth: dict[int, list[float]] = {}
        for r in stamp:
            if line_of(r) == (fusion, form, groups):
                by_depth.setdefault(int(r["depth"]), []).append(r["metrics"][metric])
        depths = sorted(by_depth)
        stats = [Stat.of(by_depth[d]) for d in depths]
        ax.errorbar(
            depths,
            [s.mean for s in stats],
            yerr=[s.std or 0.0 for s in stats],
            marker="o",
            capsize=3,
            label=f"STAMP, {fusion}" + ("" if form == "mlp" else f", {form}") + groups,
        )
    full = Stat.of(
        [r["metrics"][metric] for r, k in zip(ok, kinds, strict=True) if k and k.is_full_attention]
    )
    if full is not None:
        ax.axhline(full.mean, color="grey", linestyle="--", label=f"full attention ({full.n})")
    for (depth, fusion), value in (paper_points or {}).items():
        ax.plot([depth], [value], marker="x", color="black", markersize=8)
        ax.annotate(
            f"paper {fusion}", (depth, value), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xscale("log", base=2)
    ticks = sorted({int(r["depth"]) for r in stamp} | {d for d, _ in (paper_points or {})})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("STAMP depth (linear layers in the generator)")
    ax.set_ylabel(metric)
    ax.set_title("STAMP depth x fusion (Fig. S4)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def log_images_to_wandb(
    images: dict[str, Path],
    out_dir: str | Path,
    project: str = "stamp",
    name: str = "plots",
    run: Any = None,
) -> None:
    """Log PNGs as W&B images: to ``run`` if given, else to a new (offline by default) run."""
    import os

    import wandb

    own = run is None
    if own:
        os.environ.setdefault("WANDB_MODE", "offline")
        run = wandb.init(project=project, name=name, dir=str(out_dir), job_type="plots")
    run.log({key: wandb.Image(str(path)) for key, path in images.items()})
    if own:
        run.finish()


def plot_mask_grid(
    records: list[dict],
    path: str | Path,
    layers: Sequence[int] | None = None,
    sample: int = 0,
    boundaries: Sequence[int] | None = None,
    title: str = "",
) -> Path | None:
    """Figs. S6 / S9 style: one sample's mask at the first, a middle and the last STAMP layer
    (or ``layers``), side by side on one colour scale; padded tokens blank."""
    masked = [records[i] for i in mask_records(records)]
    if not masked:
        return None
    idx = pick_layers(len(masked), layers)
    panels = []
    for i in idx:
        mask = masked[i]["mask"]
        m = (mask[sample] if mask.dim() == 3 else mask[sample].mean(0)).float().cpu().clone()
        pad = masked[i].get("key_padding_mask")
        if pad is not None:
            pad = pad[sample].bool().cpu()
            m[:, pad] = float("nan")
            if m.shape[0] == m.shape[1]:
                m[pad, :] = float("nan")
        panels.append((i, masked[i]["name"], m))
    finite = torch.cat([m[m.isfinite()] for _, _, m in panels])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = None
    for ax, (i, name, m) in zip(axes[0], panels, strict=True):
        image = ax.imshow(m.numpy(), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for b in boundaries or []:
            ax.axvline(b - 0.5, color="red", linewidth=1.0)
            if m.shape[0] == m.shape[1]:
                ax.axhline(b - 0.5, color="red", linewidth=1.0)
        ax.set_title(f"STAMP layer {i + 1} of {len(masked)}\n{name}", fontsize=9)
        ax.set_xlabel("key token")
    axes[0][0].set_ylabel("query token")
    fig.colorbar(image, ax=list(axes[0]), label="mask value M", shrink=0.85)
    fig.suptitle(title or f"mask of sample {sample}", y=1.02)
    return _save(fig, path)


def relevance_groups(summary: dict[str, dict[str, float | None]]) -> list[str]:
    """The key groups of the relevance statistics in a mask_stats summary (``M_<group>`` keys):
    ``relevant``, ``irrelevant``, then the task's categories; [] without key labels."""
    found: list[str] = []
    for row in summary.values():
        found += [k[2:] for k in row if k.startswith("M_") and k[2:] not in found]
    groups = [g for g in RELEVANCE_GROUPS if g in found]
    return groups + [g for g in found if g not in groups] if groups else []


def _bars(ax: plt.Axes, x: list[int], bars: list[tuple[str, list[float], dict]]) -> None:
    width = 0.8 / len(bars)
    for j, (label, values, style) in enumerate(bars):
        offsets = [i + (j - (len(bars) - 1) / 2) * width for i in x]
        ax.bar(offsets, values, width, label=label, **style)


def _plot_relevance(axes, summary: dict[str, dict[str, float | None]], x: list[int]) -> None:
    """Where the mask puts its weight, per layer: M by key category; attention per key on
    relevant / irrelevant keys and the share of a query's attention on them, with and without M."""
    groups = relevance_groups(summary)
    names = list(summary)

    def series(key: str) -> list[float]:
        return [float("nan") if summary[n].get(key) is None else summary[n][key] for n in names]

    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    _bars(axes[0], x, [(g, series(f"M_{g}"), {"color": colours[g]}) for g in groups])
    axes[0].set_title("mean M on the keys of each category")
    axes[0].axhline(0.0, color="black", linewidth=0.6)
    for ax, quantity, title in (
        (axes[1], "attn", "attention per (query, key): relevant vs irrelevant"),
        (axes[2], "share", "share of a query's attention on the keys"),
    ):
        bars = []
        for g in RELEVANCE_GROUPS:
            bars.append((f"{g}, with M", series(f"{quantity}_{g}"), {"color": colours[g]}))
            bars.append(
                (
                    f"{g}, without M",
                    series(f"{quantity}_{g}_noM"),
                    {"color": colours[g], "alpha": 0.45, "hatch": "//"},
                )
            )
        _bars(ax, x, bars)
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_xlabel("STAMP layer")
        ax.set_xticks(x)
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))


def plot_mask_statistics(summary: dict[str, dict[str, float | None]], path: str | Path) -> Path:
    """Per-layer curves of the mask diagnostics (``stamp.diagnostics``): |M|, token dependence
    and negative share; attention entropy with and without M; generator gradient norm. Where
    the run's batches label their keys, a second row: M and the attention with and without M on
    relevant vs irrelevant keys."""
    names = list(summary)
    x = list(range(1, len(names) + 1))

    def series(key: str) -> list[float]:
        return [float("nan") if summary[n].get(key) is None else summary[n][key] for n in names]

    relevance = bool(relevance_groups(summary))
    fig, grid = plt.subplots(
        2 if relevance else 1, 3, figsize=(14.0, 8.4 if relevance else 3.6), squeeze=False
    )
    fig.subplots_adjust(hspace=0.35)
    axes = grid[0]
    if relevance:
        _plot_relevance(grid[1], summary, x)
    for key in ("mean_abs", "token_dependence", "neg_share"):
        axes[0].plot(x, series(key), marker="o", label=key)
    axes[0].set_title("the mask M")
    axes[1].plot(x, series("entropy"), marker="o", label="with M")
    axes[1].plot(x, series("entropy_unmasked"), marker="o", linestyle="--", label="without M")
    axes[1].set_title("attention entropy (nats)")
    axes[2].plot(x, series("grad_norm_first"), marker="o", color="tab:red")
    axes[2].set_title("gradient norm at the generator's first layer")
    axes[2].set_yscale("symlog", linthresh=1e-8)
    for ax in axes:
        ax.set_xlabel("STAMP layer")
        ax.set_xticks(x)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    return _save(fig, path)
