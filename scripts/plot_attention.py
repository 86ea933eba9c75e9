"""Attention-weight histograms and mask heatmaps of trained runs (paper Figs. S5-S9).

    python scripts/plot_attention.py RUN_DIR_STAMP RUN_DIR_FULL [--out DIR] [--layers 0,7,-1]
    python scripts/plot_attention.py RUN_DIR --movie 3034_IDES_OF_MARCH --time 812.4 \
        --video movies/ [--audio movies/]

For each run directory (a results.json written by train.py) the model is rebuilt from its
config, its best checkpoint loaded, and one batch of the validation split run through it with
stamp.record_attention: the split's first batch (--sample picks one of it), or, as the paper's
figures name a moment, the AD of --movie at --time seconds (a batch of that one AD; tasks whose
datamodule has moment_batch: MAD-AD). Writes:
  attention_hist.png         Figs. S5 / S7: first, middle, last layer; one histogram per run
  mask_<run>.png             Figs. S6 / S8 / S9: a sample's mask with the modality boundaries
                             and, with --video / --audio, panel (a): the frames and the audio
                             waveform its tokens come from (the movie's credits audio for a run
                             with data.eval_audio=credits, Fig. S8)
into --out (default: <first run>/plots) and, with --wandb, to an offline W&B run.
--video / --audio: a file, or a directory holding <movie id>.<ext> (--audio defaults to the
video's own sound track).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plot_sweep import run_dirs_parser  # noqa: E402  (scripts/: the shared command line)

from tasks.common.reporting.plots import (  # noqa: E402
    collect_attention,
    collect_run,
    load_run,
    log_images_to_wandb,
    modality_boundaries,
    plot_attention_histograms,
    plot_run_mask,
    read_frames,
    read_waveform,
)

LABELS = {"none": "full attention", "multilayer": "multi-layer STAMP", "global": "STAMP"}


def _ints(text: str) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


def media_file(path: Path, movie: str) -> Path:
    """``path`` itself, or in a directory the file named after the movie id (any extension)."""
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        return path
    found = sorted(p for p in path.glob(f"{movie}.*") if p.is_file())
    if not found:
        raise FileNotFoundError(f"{path} holds no {movie}.<ext> (the movie's media file)")
    return found[0]


def moment(datamodule, split: str, sample: int, movie: str | None, time: float | None):
    """(batch, window or None, sample): the AD of ``movie`` at ``time``, else ``None`` and the
    split's first batch is used (its ``sample``; window when the task can tell it)."""
    if movie is not None:
        select = getattr(datamodule, "moment_batch", None)
        if select is None:
            raise SystemExit(
                f"{type(datamodule).__name__} cannot select a moment by movie and time "
                "(no moment_batch); use --sample"
            )
        batch, window = select(split, movie, time)
        return batch, window, 0
    window = None
    if hasattr(datamodule, "moment_batch"):  # the first batch is the split's start, in order
        window = datamodule.dataset(split).media_window(sample)
    return None, window, sample


def scene_of(window: dict | None, video: Path | None, audio: Path | None) -> dict | None:
    """``plot_scene``'s inputs: the frames and waveform the window's tokens come from."""
    if window is None:
        if video or audio:
            raise SystemExit(
                "--video / --audio need a task that tells where a sample's tokens "
                "come from (media_window: MAD-AD)"
            )
        return None
    scene = {"window": window}
    if video is not None:
        scene["frames"] = read_frames(
            media_file(video, window["movie"]),
            window["visual_start_s"],
            window["tokens_per_modality"],
            window["fps"],
        )
    sound = audio or video
    if sound is not None:
        waveform, rate = read_waveform(
            media_file(sound, window["movie"]), window["audio_start_s"], window["seconds"]
        )
        scene.update(waveform=waveform, rate=rate)
    return scene


def main(argv: list[str] | None = None) -> int:
    parser = run_dirs_parser(__doc__)
    parser.add_argument("--out", type=Path, help="default: <first run dir>/plots")
    parser.add_argument(
        "--layers",
        default="",
        help="attention calls for the histograms "
        "(default: first, middle, last; negative counts from the end)",
    )
    parser.add_argument(
        "--mask-layer",
        type=int,
        default=0,
        help="masked call for the heatmap (0 = first, as in Fig. S6)",
    )
    parser.add_argument("--sample", type=int, default=0, help="sample of the batch to show")
    parser.add_argument("--movie", help="the moment's movie id (with --time; as the figures)")
    parser.add_argument("--time", type=float, help="seconds into --movie: the AD at that time")
    parser.add_argument("--video", type=Path, help="video file or directory: panel (a) frames")
    parser.add_argument("--audio", type=Path, help="audio file or directory (default: --video)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples in the batch (Fig. S5: 64)"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--checkpoint", default="best", help="best, last, none or a path")
    parser.add_argument(
        "--boundaries",
        default="",
        help="token indices where a modality starts (default: the model's modality_boundaries())",
    )
    parser.add_argument("--wandb", action="store_true", help="also log the PNGs to W&B")
    args = parser.parse_args(argv)
    if (args.movie is None) != (args.time is None):
        parser.error("--movie and --time go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = args.out or args.run_dirs[0] / "plots"
    runs, images, records_by_run = {}, {}, {}
    for run_dir in args.run_dirs:
        record, module, datamodule = load_run(run_dir, args.checkpoint, args.batch_size)
        batch, window, sample = moment(datamodule, args.split, args.sample, args.movie, args.time)
        if batch is not None:
            records = collect_attention(module, batch)
        else:
            records, _ = collect_run(module, datamodule, args.split)
        label = f"{LABELS.get(record['mask'], record['mask'])} ({run_dir.name})"
        runs[label] = records
        chosen = args.movie is not None or args.video is not None or args.audio is not None
        scene = scene_of(window, args.video, args.audio) if chosen else None
        records_by_run[run_dir] = (module, records, label, sample, scene)
    images["attention_hist"] = plot_attention_histograms(
        runs, out / "attention_hist.png", _ints(args.layers)
    )
    for run_dir, (module, records, label, sample, scene) in records_by_run.items():
        boundaries = _ints(args.boundaries) or modality_boundaries(module.net)
        path = plot_run_mask(
            records,
            out / f"mask_{run_dir.name}.png",
            sample,
            args.mask_layer,
            boundaries,
            label,
            scene=scene,
        )
        if path is not None:
            images[f"mask_{run_dir.name}"] = path
    for key, path in images.items():
        print(f"{key}: {path}")
    if args.wandb:
        log_images_to_wandb(images, out, name=f"plots-{args.run_dirs[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
