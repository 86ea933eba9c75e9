"""MAD-v2 audio description data: AD csv + MAD-layout feature files -> audiovisual token windows.

Files (official layouts):
* visual features: MAD's ``CLIP_B32_frames_features_5fps.h5`` (the current release's name; the
  MAD-v1 name ``CLIP_frames_features_5fps.h5`` of the same CLIP ViT-B/32 features is accepted
  with a note), one dataset per movie id, (T, 512) CLIP image features at 5 fps. The release's
  text counterpart, ``CLIP_B32_language_tokens_features.h5``, is not read: the LLM encodes the
  AD text itself;
* audio features: the same layout at 5 Hz (OpenL3, 512-d), written by
  ``scripts/extract_features.py``;
* AD annotations: a MAD-v2 csv (``mad-v2-ad-named.csv`` / ``-unnamed.csv``) with one row per AD;
  column names are configurable (``columns.movie/start/end/text``; start/end in seconds).

The released csv files carry rows AutoAD-II's loader adjusts or skips; they are read the same
way here (``read_ad_csv`` / ``drop_outside_features``), every such row counted per rule and
reported once per file at start-up (``AnnotationReport``: log and ``results.json``
``data_report``), never silently and never as an error:
* ``negative_start``: a start before 0 s is clamped to 0 (``max(0, start)``);
* ``empty_text``: an empty or blank description is dropped (AutoAD-II:
  ``anno[anno['sentence'].str.strip() != ""]``);
* ``outside_features``: a description that starts or ends after the movie's features (whole
  seconds, as AutoAD-II's ``start <= avail // 5 and end <= avail // 5`` with
  ``avail = floor(min(movie_duration * 5, frames))``; the csv's ``movie_duration`` column is used
  when it has one), or ends before 0 s, is dropped.
Rows that are genuinely malformed (a number that does not parse, a NaN / Inf time, an end before
a non-negative start, a missing column) still stop the run, naming the file and the row.

Each AD becomes ``tokens_per_modality`` visual + the same number of audio feature vectors around
its centre (5 s at 5 fps), the Alpaca prompt of the paper's Fig. S3, and the AD text as the
response (the loss covers the response and the end-of-sequence token only).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tasks.common.runtime.data import (
    DataValidationError,
    EpochShuffleSampler,
    check_finite,
    current_epoch,
)

log = logging.getLogger(__name__)

AD_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nGenerate caption of this video.\n\n### Response:"
)
IGNORE_INDEX = -100  # labels that the loss skips (prompt and padding)
DEFAULT_COLUMNS = {"movie": "movie", "start": "start", "end": "end", "text": "text"}
# optional column: the movie's duration in seconds (AutoAD-II bounds the span with it when present)
DURATION_COLUMN = "movie_duration"

# the current MAD release's visual feature file and the MAD-v1 name of the same CLIP ViT-B/32
# 5 fps features (MAD's documentation renamed the files when it added the L/14 ones)
MAD_VISUAL_FILE = "CLIP_B32_frames_features_5fps.h5"
MAD_V1_VISUAL_FILE = "CLIP_frames_features_5fps.h5"
FEATURE_ALIASES = {MAD_VISUAL_FILE: MAD_V1_VISUAL_FILE, MAD_V1_VISUAL_FILE: MAD_VISUAL_FILE}

# how AutoAD-II reads the released csv files: rule -> what happens to such a row
QUIRK_RULES = {
    "negative_start": "start < 0 clamped to 0 (AutoAD-II: max(0, start))",
    "empty_text": "empty / blank description dropped (AutoAD-II: sentence.strip() != '')",
    "outside_features": (
        "starts or ends after the movie's features (whole seconds, AutoAD-II: start, end <= "
        "floor(min(duration x fps, frames)) // fps) or ends before 0 s: dropped"
    ),
}


# val / test audio: the moment's own window, or (Fig. S8) the movie's last S audio tokens
# (end credits: soundtrack only) beside the unchanged video
AUDIO_SOURCES = ("original", "credits")


def check_paths(paths: Mapping[str, str | None], what: str = "MAD audio description") -> None:
    """One error listing every missing file / directory with the config key that sets it."""
    problems = [
        f"  {key}={path!s}  ({'not set' if not path else 'not found'})"
        for key, path in paths.items()
        if not path or not Path(path).exists()
    ]
    if problems:
        raise FileNotFoundError(
            f"{what}: these paths are missing; set them on the command line, or once per "
            "machine in configs/local/default.yaml as paths.mad_dir (data.root) and "
            "paths.llama_dir (model.llm_path), see docs/mad_ad.md:\n"
            + "\n".join(problems)
            + "\nSynthetic stand-ins for trying the pipeline: python scripts/make_mad_data.py "
            "--out data/mad_synthetic and python scripts/make_tiny_llama.py --out "
            "data/tiny_llama (then data.root=data/mad_synthetic model.llm_path=data/tiny_llama)."
        )


def resolve(root: str | None, path: str | None) -> str | None:
    """``path`` relative to ``root`` (data.root) unless absolute or unset."""
    if path is None or root is None or Path(path).is_absolute():
        return path
    return str(Path(root) / path)


@dataclass(frozen=True)
class ADMoment:
    """One audio description: which movie, when (seconds) and what was said."""

    movie: str
    start: float
    end: float
    text: str
    index: int  # row number in the csv (stable id for predictions)
    duration: float | None = None  # the csv's movie_duration (seconds), when it has the column


@dataclass
class AnnotationReport:
    """What reading one AD csv changed, rule by rule (``QUIRK_RULES``): the rows of each rule and
    the csv line numbers of the first few, so a user can look them up."""

    file: str
    rows: int = 0  # data rows in the file
    kept: int = 0  # ADs left after every rule
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUIRK_RULES, 0))
    examples: dict[str, list[int]] = field(default_factory=dict)  # rule -> first csv lines

    def count(self, rule: str, line: int, limit: int = 5) -> None:
        self.counts[rule] += 1
        lines = self.examples.setdefault(rule, [])
        if len(lines) < limit:
            lines.append(line)

    def as_dict(self) -> dict:
        """The results.json form: file, rows, kept, and per rule its count, what it does and
        example csv lines."""
        return {
            "file": self.file,
            "rows": self.rows,
            "kept": self.kept,
            "rules": {
                rule: {
                    "count": self.counts[rule],
                    "rule": QUIRK_RULES[rule],
                    "lines": self.examples.get(rule, []),
                }
                for rule in QUIRK_RULES
            },
        }

    def summary(self) -> str:
        """One log line: how many rows each rule touched, with the first csv lines."""
        parts = []
        for rule in QUIRK_RULES:
            lines = self.examples.get(rule, [])
            more = ", ..." if self.counts[rule] > len(lines) else ""
            where = f" (lines {', '.join(map(str, lines))}{more})" if lines else ""
            parts.append(f"{rule} {self.counts[rule]}{where}")
        return (
            f"{self.file}: {self.rows} rows read as AutoAD-II reads them, {self.kept} ADs kept; "
            + "; ".join(parts)
        )

    def log(self) -> None:
        """Once per file at start-up: a warning when a rule touched any row, else info."""
        level = logging.WARNING if any(self.counts.values()) else logging.INFO
        log.log(level, "%s", self.summary())


def _number(
    row: Mapping[str, str | None], key: str, path: str | Path, line: int, what: str
) -> float:
    """A csv field as a finite float; anything else -> DataValidationError naming file / line."""
    value = row.get(key)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataValidationError(path, f"{what} ({key}={value!r})", line) from None
    if not math.isfinite(number):
        raise DataValidationError(path, f"not a finite time ({key}={value!r})", line)
    return number


def read_ad_csv(
    path: str | Path, columns: Mapping[str, str] | None = None
) -> tuple[list[ADMoment], AnnotationReport]:
    """Rows of a MAD-v2 AD csv read as AutoAD-II reads them, and the report of what that changed.

    ``columns`` maps movie/start/end/text to the file's headers. Negative starts are clamped to 0
    and empty texts dropped (both counted in the report); the span rule needs the features
    (``drop_outside_features``). Malformed rows (unparseable or non-finite times, an end before
    a non-negative start, a row shorter than the header) raise ``DataValidationError`` naming
    the file and the csv line.
    """
    names = {**DEFAULT_COLUMNS, **(columns or {})}
    report = AnnotationReport(str(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [v for v in names.values() if v not in header]
        if missing:
            raise ValueError(
                f"{path}: no column(s) {missing}; the file has {reader.fieldnames}. Set "
                "data.columns.{movie,start,end,text} to the file's column names."
            )
        has_duration = DURATION_COLUMN in header
        moments = []
        for i, row in enumerate(reader):
            line = i + 2  # the header is line 1
            report.rows += 1
            if None in row.values():
                raise DataValidationError(
                    path,
                    f"{sum(v is None for v in row.values())} of {len(header)} columns missing",
                    line,
                )
            start = _number(row, names["start"], path, line, "start / end are not numbers")
            end = _number(row, names["end"], path, line, "start / end are not numbers")
            if start < 0:
                report.count("negative_start", line)
                start = 0.0
            if end < start and end >= 0:
                raise DataValidationError(path, f"bad AD window start={start}, end={end}", line)
            text = str(row[names["text"]]).strip()
            if not text:
                report.count("empty_text", line)
                continue
            duration = (
                _number(row, DURATION_COLUMN, path, line, "the movie's duration is not a number")
                if has_duration
                else None
            )
            moments.append(
                ADMoment(str(row[names["movie"]]), start, end, text, index=i, duration=duration)
            )
    if report.rows == 0:
        raise DataValidationError(path, "no AD rows (empty file)")
    report.kept = len(moments)
    return moments, report


def feature_span_s(frames: int, fps: float, duration: float | None = None) -> int:
    """The whole seconds of a movie that have features: ``floor(min(duration x fps, frames))
    // fps`` as AutoAD-II bounds a movie's descriptions."""
    available = frames if duration is None else min(duration * fps, frames)
    return int(math.floor(available) // fps)


def drop_outside_features(
    moments: Sequence[ADMoment],
    frames: Mapping[str, int],
    fps: float,
    report: AnnotationReport,
) -> list[ADMoment]:
    """Keep the ADs inside their movie's features (``feature_span_s``; ``frames``: movie ->
    frames with features); the dropped ones are counted in ``report`` (rule
    ``outside_features``)."""
    kept = []
    for m in moments:
        span = feature_span_s(frames[m.movie], fps, m.duration)
        if m.end < 0 or m.start > span or m.end > span:
            report.count("outside_features", m.index + 2)
            continue
        kept.append(m)
    report.kept = len(kept)
    return kept


def resolve_features(root: str | None, name: str | None, key: str) -> tuple[str | None, str | None]:
    """The feature file ``name`` under ``root``; a missing MAD visual file whose other release
    name exists (``CLIP_B32_frames_features_5fps.h5`` <-> MAD-v1's
    ``CLIP_frames_features_5fps.h5``, the same features) is replaced by it. Returns (path, note):
    the note says which name was used and why (None when nothing needs saying)."""
    path = resolve(root, name)
    if path is None:
        return None, None
    file = Path(path)
    alias = FEATURE_ALIASES.get(file.name)
    if alias is not None and not file.exists() and (file.parent / alias).exists():
        used = str(file.parent / alias)
        return used, (
            f"{key}: {file.name} not found, using {alias} beside it (the same CLIP ViT-B/32 "
            "5 fps features under the other MAD release's name)"
        )
    if file.name == MAD_V1_VISUAL_FILE:
        return path, (
            f"{key}: {file.name} is MAD-v1's name of the features the current release ships "
            f"as {MAD_VISUAL_FILE}; read as given"
        )
    return path, None


def movie_list(spec: Sequence[str] | str | None) -> list[str]:
    """A list of movie ids, or the path of a text file with one id per line."""
    if spec is None:
        return []
    if isinstance(spec, str):
        lines = Path(spec).read_text().splitlines()
        return [line.strip() for line in lines if line.strip()]
    return [str(m) for m in spec]


def split_moments(
    moments: Sequence[ADMoment], val_movies: Sequence[str], test_movies: Sequence[str]
) -> dict[str, list[ADMoment]]:
    """train = every movie not in val / test; each split sorted by (movie, start)."""
    val, test = set(val_movies), set(test_movies)
    if val & test:
        raise ValueError(f"movies in both val and test: {sorted(val & test)}")
    splits: dict[str, list[ADMoment]] = {"train": [], "val": [], "test": []}
    for m in moments:
        key = "val" if m.movie in val else "test" if m.movie in test else "train"
        splits[key].append(m)
    for key in splits:
        splits[key].sort(key=lambda m: (m.movie, m.start, m.index))
    return splits


def window_start(center_s: float, n_frames: int, num_tokens: int, fps: float) -> int:
    """First frame of the ``num_tokens`` window centred on ``center_s``, kept inside the movie."""
    first = int(round(center_s * fps)) - num_tokens // 2
    return max(0, min(first, n_frames - num_tokens))


class FeatureStore:
    """Lazy reader of a MAD-layout h5 (one (T, D) dataset per movie); opened once per worker."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._file = None

    def _h5(self):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self) -> dict:  # h5py handles do not pickle into DataLoader workers
        return {"path": self.path, "_file": None}

    def open(self):
        """The open h5 file; a truncated / non-HDF5 file -> DataValidationError naming it."""
        try:
            return self._h5()
        except Exception as err:  # noqa: BLE001 - truncated / not an HDF5 file
            raise DataValidationError(self.path, f"not a readable HDF5 file ({err})") from err

    def length(self, movie: str) -> int:
        if movie not in self._h5():
            raise KeyError(f"{self.path} has no features for movie {movie!r}")
        return int(self._h5()[movie].shape[0])

    def validate(self, movies: Sequence[str], chunk: int = 65536) -> int:
        """Open the file and check every listed movie's features: present, 2-d, one width for
        all, finite values (read in chunks). Returns the feature width."""
        h5 = self.open()
        width = None
        for movie in sorted(set(movies)):
            if movie not in h5:
                raise DataValidationError(self.path, f"no features for movie {movie!r}")
            data = h5[movie]
            if data.ndim != 2 or data.shape[0] == 0:
                raise DataValidationError(
                    self.path, f"movie {movie!r}: expected (frames, dim), got {data.shape}"
                )
            if width is not None and data.shape[1] != width:
                raise DataValidationError(
                    self.path, f"movie {movie!r} has dim {data.shape[1]}, other movies {width}"
                )
            width = data.shape[1]
            for first in range(0, data.shape[0], chunk):
                block = np.asarray(data[first : first + chunk], dtype=np.float32)
                try:
                    check_finite(block, self.path, f"movie {movie!r} features")
                except DataValidationError as err:
                    raise DataValidationError(
                        self.path, f"movie {movie!r}: NaN / Inf features", first + (err.row or 0)
                    ) from None
        return int(width or 0)

    def dim(self) -> int:
        first = next(iter(self._h5().keys()))
        return int(self._h5()[first].shape[1])

    def window(
        self, movie: str, center_s: float, num_tokens: int, fps: float
    ) -> tuple[Tensor, Tensor]:
        """(num_tokens, D) features around ``center_s`` and a (num_tokens,) True-at-padding mask."""
        n = self.length(movie)
        first = window_start(center_s, n, num_tokens, fps)
        array = np.asarray(self._h5()[movie][first : first + num_tokens], dtype=np.float32)
        feats = torch.zeros(num_tokens, array.shape[1])
        feats[: len(array)] = torch.from_numpy(array)
        pad = torch.ones(num_tokens, dtype=torch.bool)
        pad[: len(array)] = False
        return feats, pad


def feature_frames(movies: set[str], *stores: FeatureStore) -> dict[str, int]:
    """Frames that have features in every store (visual and audio), per movie: the bound of the
    ``outside_features`` rule. A movie of the csv without features -> DataValidationError."""
    frames = {}
    for store in stores:
        store.open()
    for movie in sorted(movies):
        lengths = []
        for store in stores:
            try:
                lengths.append(store.length(movie))
            except KeyError:
                raise DataValidationError(
                    store.path, f"no features for movie {movie!r} (named in the AD csv)"
                ) from None
        frames[movie] = min(lengths)
    return frames


def load_ads(
    annotations: str | Path,
    columns: Mapping[str, str] | None,
    visual: FeatureStore,
    audio: FeatureStore,
    fps: float,
) -> tuple[list[ADMoment], AnnotationReport]:
    """The ADs of a csv as AutoAD-II reads them against these features (every rule of
    ``QUIRK_RULES``), the report logged once; no AD left -> DataValidationError."""
    moments, report = read_ad_csv(annotations, columns)
    frames = feature_frames({m.movie for m in moments}, visual, audio)
    moments = drop_outside_features(moments, frames, fps, report)
    report.log()
    if not moments:
        raise DataValidationError(annotations, f"no AD left: {report.summary()}")
    return moments, report


def encode_prompt(tokenizer, prompt: str = AD_PROMPT) -> list[int]:
    """BOS + prompt ids (the generation prefix)."""
    return [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)


def encode_example(tokenizer, text: str, prompt: str, max_text_tokens: int) -> tuple[list, list]:
    """input ids = BOS + prompt + AD + EOS; labels = the AD and EOS only (prompt ignored)."""
    prefix = encode_prompt(tokenizer, prompt)
    answer = tokenizer.encode(text, add_special_tokens=False)[:max_text_tokens]
    answer = answer + [tokenizer.eos_token_id]
    return prefix + answer, [IGNORE_INDEX] * len(prefix) + answer


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} needs BOS and EOS tokens")
    return tokenizer


class MadADDataset(Dataset):
    def __init__(
        self,
        moments: Sequence[ADMoment],
        visual: FeatureStore,
        audio: FeatureStore,
        tokenizer,
        prompt: str,
        tokens_per_modality: int,
        fps: float,
        max_text_tokens: int,
        audio_source: str = "original",
    ) -> None:
        self.moments = list(moments)
        self.visual, self.audio = visual, audio
        self.audio_source = audio_source
        self.tokenizer, self.prompt = tokenizer, prompt
        self.tokens, self.fps, self.max_text_tokens = tokens_per_modality, fps, max_text_tokens

    def __len__(self) -> int:
        return len(self.moments)

    def centers(self, i: int) -> tuple[float, float]:
        """The centres (seconds) of AD ``i``'s visual and audio windows: the AD's centre, or for
        the audio with ``audio_source=credits`` (Fig. S8) the movie's end."""
        m = self.moments[i]
        center = 0.5 * (m.start + m.end)
        if self.audio_source == "credits":  # Fig. S8: the movie's last S audio tokens
            return center, self.audio.length(m.movie) / self.fps
        return center, center

    def media_window(self, i: int) -> dict:
        """Where AD ``i``'s tokens come from in the movie: the visual and the audio window's first
        second and their length (the frames and waveform of Figs. S6-S9 panel (a)), with the AD."""
        m = self.moments[i]
        visual_center, audio_center = self.centers(i)
        visual = window_start(visual_center, self.visual.length(m.movie), self.tokens, self.fps)
        audio = window_start(audio_center, self.audio.length(m.movie), self.tokens, self.fps)
        return {
            "movie": m.movie,
            "start": m.start,
            "end": m.end,
            "text": m.text,
            "visual_start_s": visual / self.fps,
            "audio_start_s": audio / self.fps,
            "seconds": self.tokens / self.fps,
            "fps": self.fps,
            "tokens_per_modality": self.tokens,
        }

    def __getitem__(self, i: int) -> dict:
        m = self.moments[i]
        center, audio_center = self.centers(i)
        visual, visual_pad = self.visual.window(m.movie, center, self.tokens, self.fps)
        audio, audio_pad = self.audio.window(m.movie, audio_center, self.tokens, self.fps)
        ids, labels = encode_example(self.tokenizer, m.text, self.prompt, self.max_text_tokens)
        return {
            "visual": visual,
            "audio": audio,
            "padding_mask": torch.cat([visual_pad, audio_pad]),
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "movie": m.movie,
            "start": m.start,
            "index": m.index,
            "text": m.text,
        }


def collate(batch: list[dict], pad_id: int) -> dict:
    """Stack features; right-pad token ids (pad_id), labels (ignored) and the attention mask."""
    length = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[row, :n], labels[row, :n], attention[row, :n] = b["input_ids"], b["labels"], 1
    out = {key: torch.stack([b[key] for b in batch]) for key in ("visual", "audio", "padding_mask")}
    out.update(input_ids=ids, labels=labels, attention_mask=attention)
    for key in ("movie", "start", "index", "text"):
        out[key] = [b[key] for b in batch]
    return out


class MadADDataModule(L.LightningDataModule):
    """Train / val / test splits of MAD-v2 ADs by movie.

    File names are relative to ``root`` unless absolute. ``val_movies`` defaults to the paper's
    1,010-moment validation subset (the two movies 3034_IDES_OF_MARCH and 3074_THE_ROOMMATE of
    the unnamed version); ``test_movies`` is a list or a text file of movie ids; every other movie
    of the csv is training data.
    """

    def __init__(
        self,
        visual_features: str | None,
        audio_features: str | None,
        annotations: str | None,
        tokenizer_path: str | None,
        root: str | None = None,
        val_movies: Sequence[str] | str | None = ("3034_IDES_OF_MARCH", "3074_THE_ROOMMATE"),
        test_movies: Sequence[str] | str | None = None,
        columns: Mapping[str, str] | None = None,
        prompt: str = AD_PROMPT,
        tokens_per_modality: int = 25,
        fps: float = 5.0,
        max_text_tokens: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        limit_train: int | None = None,
        eval_audio: str = "original",
    ) -> None:
        super().__init__()
        if eval_audio not in AUDIO_SOURCES:
            raise ValueError(f"data.eval_audio={eval_audio!r}; choose one of {AUDIO_SOURCES}")
        self.eval_audio = eval_audio
        visual_features, visual_note = resolve_features(
            root, visual_features, "data.visual_features"
        )
        audio_features, audio_note = resolve_features(root, audio_features, "data.audio_features")
        annotations = resolve(root, annotations)
        if isinstance(test_movies, str):
            test_movies = resolve(root, test_movies)
        paths = {
            "data.visual_features": visual_features,
            "data.audio_features": audio_features,
            "data.annotations": annotations,
            "model.llm_path (tokenizer)": tokenizer_path,
        }
        if isinstance(test_movies, str):
            paths["data.test_movies"] = test_movies
        check_paths(paths)
        self.visual, self.audio = FeatureStore(visual_features), FeatureStore(audio_features)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        for note in (visual_note, audio_note):
            if note:
                log.warning("%s", note)
        moments, report = load_ads(annotations, columns, self.visual, self.audio, fps)
        # results.json data_report (tasks.common.runtime.pipeline): what reading the files changed
        self.data_report = {
            "annotations": report.as_dict(),
            "notes": [n for n in (visual_note, audio_note) if n],
        }
        test = movie_list(test_movies)
        self.splits = split_moments(moments, movie_list(val_movies), test)
        if limit_train is not None:
            self.splits["train"] = self.splits["train"][:limit_train]
        log.info("MAD ADs: %s", {k: len(v) for k, v in self.splits.items()})
        if not self.splits["train"]:
            raise ValueError(f"{annotations}: no training ADs after removing val / test movies")
        # every split's features checked now, before any training step
        used = [m.movie for split in self.splits.values() for m in split]
        self.visual.validate(used)
        self.audio.validate(used)
        self.dataset_kwargs = dict(
            visual=self.visual,
            audio=self.audio,
            tokenizer=self.tokenizer,
            prompt=prompt,
            tokens_per_modality=tokens_per_modality,
            fps=fps,
            max_text_tokens=max_text_tokens,
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers

    def dataset(self, split: str) -> MadADDataset:
        audio = "original" if split == "train" else self.eval_audio
        return MadADDataset(self.splits[split], **self.dataset_kwargs, audio_source=audio)

    def find_moment(self, split: str, movie: str, time: float) -> int:
        """Index in ``split`` of ``movie``'s AD at ``time`` seconds (how Figs. S6-S9 name a
        moment): the AD whose [start, end] holds it, else the one whose centre is nearest."""
        moments = self.splits[split]
        candidates = [i for i, m in enumerate(moments) if m.movie == str(movie)]
        if not candidates:
            movies = sorted({m.movie for m in moments})
            raise ValueError(
                f"movie {movie!r} has no AD in the {split} split; its movies: {movies[:20]}"
                + (" ..." if len(movies) > 20 else "")
            )
        inside = [i for i in candidates if moments[i].start <= time <= moments[i].end]
        pool = inside or candidates
        return min(pool, key=lambda i: abs(0.5 * (moments[i].start + moments[i].end) - time))

    def moment_batch(self, split: str, movie: str, time: float) -> tuple[dict, dict]:
        """A batch of one AD chosen by movie and time, and where its tokens come from in the movie
        (``MadADDataset.media_window``)."""
        dataset = self.dataset(split)
        i = self.find_moment(split, movie, time)
        return collate([dataset[i]], self.pad_id), dataset.media_window(i)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if not self.splits[split]:
            raise ValueError(f"the {split} split has no ADs; set data.{split}_movies")
        dataset = self.dataset(split)
        # training order fixed by (seed, epoch): resuming is exact
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(dataset), epoch=current_epoch(self))
            if shuffle
            else None,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.pad_id),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
