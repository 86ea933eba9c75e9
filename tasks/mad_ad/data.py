"""MAD-v2 audio description data: AD csv + MAD-layout feature files -> audiovisual token windows.

Files (official layouts):
* visual features: MAD's ``CLIP_frames_features_5fps.h5``, one dataset per movie id, (T, 512)
  CLIP image features at 5 fps;
* audio features: the same layout at 5 Hz (OpenL3, 512-d), written by
  ``scripts/extract_features.py``;
* AD annotations: a MAD-v2 csv (``mad-v2-ad-named.csv`` / ``-unnamed.csv``) with one row per AD;
  column names are configurable (``columns.movie/start/end/text``; start/end in seconds).

Each AD becomes ``tokens_per_modality`` visual + the same number of audio feature vectors around
its centre (5 s at 5 fps), the Alpaca prompt of the paper's Fig. S3, and the AD text as the
response (the loss covers the response and the end-of-sequence token only).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tasks.common.data import (
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


def read_ad_csv(path: str | Path, columns: Mapping[str, str] | None = None) -> list[ADMoment]:
    """Rows of a MAD-v2 AD csv; ``columns`` maps movie/start/end/text to the file's headers."""
    names = {**DEFAULT_COLUMNS, **(columns or {})}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [v for v in names.values() if v not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: no column(s) {missing}; the file has {reader.fieldnames}. Set "
                "data.columns.{movie,start,end,text} to the file's column names."
            )
        moments = []
        for i, row in enumerate(reader):
            line = i + 2  # the header is line 1
            try:
                start, end = float(row[names["start"]]), float(row[names["end"]])
            except (TypeError, ValueError) as err:
                raise DataValidationError(
                    path, f"start / end are not numbers ({err})", line
                ) from None
            if not (np.isfinite(start) and np.isfinite(end)) or start > end or start < 0:
                raise DataValidationError(path, f"bad AD window start={start}, end={end}", line)
            text = row[names["text"]]
            if text is None or not str(text).strip():
                raise DataValidationError(path, "empty AD text", line)
            moments.append(
                ADMoment(str(row[names["movie"]]), start, end, str(text).strip(), index=i)
            )
    if not moments:
        raise DataValidationError(path, "no AD rows (empty file)")
    return moments


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

    def length(self, movie: str) -> int:
        if movie not in self._h5():
            raise KeyError(f"{self.path} has no features for movie {movie!r}")
        return int(self._h5()[movie].shape[0])

    def validate(self, movies: Sequence[str], chunk: int = 65536) -> int:
        """Open the file and check every listed movie's features: present, 2-d, one width for
        all, finite values (read in chunks). Returns the feature width."""
        try:
            h5 = self._h5()
        except Exception as err:  # noqa: BLE001 - truncated / not an HDF5 file
            raise DataValidationError(self.path, f"not a readable HDF5 file ({err})") from err
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

    def __getitem__(self, i: int) -> dict:
        m = self.moments[i]
        center = 0.5 * (m.start + m.end)
        visual, visual_pad = self.visual.window(m.movie, center, self.tokens, self.fps)
        if self.audio_source == "credits":  # Fig. S8: the movie's last S audio tokens
            audio_center = self.audio.length(m.movie) / self.fps
        else:
            audio_center = center
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
        visual_features, audio_features, annotations = (
            resolve(root, p) for p in (visual_features, audio_features, annotations)
        )
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
        moments = read_ad_csv(annotations, columns)
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
