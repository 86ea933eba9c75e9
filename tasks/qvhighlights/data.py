"""QVHighlights data: the official annotation jsonl and per-video / per-query feature files,
read as in QD-DETR (``qd_detr/start_end_dataset.py``).

Layout (paths from the config)::

    <annotations>/highlight_{train,val,test}_release.jsonl
    <v_feat_dir_1>/{vid}.npz   key "features"          (n_clips, D1), one row per 2 s clip
    <v_feat_dir_2>/{vid}.npz   ...                      (e.g. slowfast_features/, clip_features/)
    <t_feat_dir>/qid{qid}.npz  key "last_hidden_state"  (n_tokens, Dt)

Each video feature type is cut to ``max_v_l`` clips and L2-normalised, the types are cut to the
shortest and concatenated, and the 2-d temporal endpoint feature (tef) is appended; query token
features are cut to ``max_q_l`` and L2-normalised.

For the mask diagnostics a labelled batch also carries ``key_relevance``: per key of QD-DETR's
self-attention encoder ([global token, clips]), whether a clip lies inside a ground-truth window
(``KEY_CATEGORIES``). The T2V layers attend from clips to text tokens and are not labelled.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stamp.diagnostics import KeyCategories
from tasks.common.runtime.data import (
    DataValidationError,
    EpochShuffleSampler,
    SeededItems,
    check_finite,
    current_epoch,
)
from tasks.qvhighlights.metrics import load_jsonl
from tasks.qvhighlights.spans import span_xx_to_cxw

log = logging.getLogger(__name__)

ANNOTATION_KEYS = ("qid", "query", "duration", "vid")
LABEL_KEYS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")
# The keys of QD-DETR's self-attention encoder (code i = names[i]): its global token, the clips
# inside a ground-truth window of the query, the clips outside every window, padding.
KEY_CATEGORIES = KeyCategories(
    names=("global", "in_window", "outside", "padding"),
    relevant=("in_window",),
    irrelevant=("outside",),
)
GLOBAL_KEY, IN_WINDOW, OUTSIDE, PADDING_KEY = range(len(KEY_CATEGORIES.names))


def l2_normalize(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Row-wise L2 normalisation as in the original (``l2_normalize_np_array``, eps 1e-5)."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def read_annotations(path: str | Path, need_labels: bool, data_ratio: float = 1.0) -> list[dict]:
    """Official annotation jsonl; checks the keys each line must have."""
    rows = load_jsonl(path)
    if not rows:
        raise DataValidationError(path, "no annotation rows (empty file)")
    keys = ANNOTATION_KEYS + (LABEL_KEYS if need_labels else ())
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{path}: line {i + 1} (qid {row.get('qid')}) lacks keys {missing}")
    if data_ratio < 1.0:
        rows = rows[: max(1, int(len(rows) * data_ratio))]
    return rows


def load_npz_array(path: Path, key: str, config_key: str) -> np.ndarray:
    """A 2-d float array from an npz file; clear errors naming the file and what was expected."""
    if not path.is_file():
        raise FileNotFoundError(
            f"QVHighlights feature file not found: {path} (set by {config_key}; "
            "scripts/make_qvhighlights_features.py writes synthetic features in this layout)"
        )
    if path.stat().st_size == 0:
        raise DataValidationError(path, "empty file (0 bytes)")
    for attempt in range(3):
        try:
            return _read_npz(path, key)
        except SystemError:
            # CPython 3.11 gh-106905: ast.literal_eval (numpy's .npy header parser) run from
            # several threads (FeatureStore.preload) can fail spuriously; reading again works
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_npz(path: Path, key: str) -> np.ndarray:
    arr = read_npz_array(path, key).astype(np.float32)
    check_finite(arr, path)
    return arr


def read_npz_array(path: Path, key: str) -> np.ndarray:
    """The array under ``key`` of an npz file as stored (dtype kept), checked to be 2-d with at
    least one row; ``DataValidationError`` naming the file otherwise. Shared by the reader and
    ``scripts/check_qvhighlights_features.py``."""
    try:
        loaded = np.load(path)
    except SystemError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, BadZipFile, EOFError, pickle errors, ...
        raise DataValidationError(path, f"not a readable npz file ({err})") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataValidationError(
            path, f"expected an npz archive with key {key!r}, found a plain array"
        )
    with loaded:
        if key not in loaded.files:
            raise DataValidationError(
                path, f"expected key {key!r} in the npz file, found {loaded.files}"
            )
        try:
            arr = loaded[key]
        except SystemError:
            raise
        except Exception as err:  # noqa: BLE001 - a truncated archive fails here (BadZipFile, zlib)
            raise DataValidationError(path, f"truncated or corrupt npz archive ({err})") from err
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DataValidationError(
            path, f"expected a 2-d array (rows, dim) under {key!r}, got {arr.shape}"
        )
    return arr


class FeatureStore:
    """Reads, normalises and caches the video and query features of one split."""

    def __init__(
        self,
        v_feat_dirs: Sequence[str | Path],
        t_feat_dir: str | Path,
        max_v_l: int = 75,
        max_q_l: int = 32,
        normalize_v: bool = True,
        normalize_t: bool = True,
        cache: bool = True,
    ) -> None:
        if not v_feat_dirs:
            raise ValueError("data.v_feat_types is empty: give at least one video feature type")
        self.v_feat_dirs = [Path(d) for d in v_feat_dirs]
        self.t_feat_dir = Path(t_feat_dir)
        self.max_v_l, self.max_q_l = max_v_l, max_q_l
        self.normalize_v, self.normalize_t = normalize_v, normalize_t
        self.cache = cache
        self._video: dict[str, np.ndarray] = {}
        self._text: dict[Any, np.ndarray] = {}
        self.lengths: dict[str, list[int]] = {}  # vid -> clips of each feature type (<= max_v_l)

    def video(self, vid: str) -> np.ndarray:
        """(n_clips <= max_v_l, sum of dims), without the tef."""
        if vid in self._video:
            return self._video[vid]
        parts = []
        for d in self.v_feat_dirs:
            feat = load_npz_array(
                d / f"{vid}.npz", "features", "data.feature_dir / data.v_feat_types"
            )[: self.max_v_l]
            parts.append(l2_normalize(feat) if self.normalize_v else feat)
        self.lengths[vid] = [len(p) for p in parts]
        n = min(len(p) for p in parts)  # some feature types are a clip longer than the others
        out = np.concatenate([p[:n] for p in parts], axis=1)
        if self.cache:
            self._video[vid] = out
        return out

    def text(self, qid: Any) -> np.ndarray:
        """(n_tokens <= max_q_l, dim)."""
        if qid in self._text:
            return self._text[qid]
        path = self.t_feat_dir / f"qid{qid}.npz"
        feat = load_npz_array(path, "last_hidden_state", "data.feature_dir / data.t_feat_type")[
            : self.max_q_l
        ]
        out = l2_normalize(feat) if self.normalize_t else feat
        if self.cache:
            self._text[qid] = out
        return out

    def preload(self, rows: Sequence[dict], num_threads: int = 8) -> None:
        """Read every file of a split once (threads; npz reading releases the GIL)."""
        if not self.cache:
            return
        vids = sorted({r["vid"] for r in rows} - set(self._video))
        qids = [r["qid"] for r in rows if r["qid"] not in self._text]
        with ThreadPoolExecutor(num_threads) as pool:
            list(pool.map(self.video, vids))
            list(pool.map(self.text, qids))


def temporal_endpoint_feature(n_clips: int) -> np.ndarray:
    """tef: [start, end] of each clip as a fraction of the video, (n_clips, 2)."""
    start = np.arange(n_clips, dtype=np.float32) / n_clips
    return np.stack([start, start + 1.0 / n_clips], axis=1)


def saliency_labels(
    rel_clip_ids: Sequence[int], scores: Sequence[Sequence[int]], n_clips: int, rng: Any
) -> tuple[list[int], list[int], np.ndarray]:
    """QD-DETR's ``get_saliency_labels_all`` (max_n=1, easy negatives on).

    Positives: the relevant clip with the highest summed score (hard) + a random relevant clip
    (easy); negatives: the relevant clip with the lowest summed score (hard) + a random clip
    outside the relevant ones (easy). Also the per-clip summed score (0..12) over the video.
    Relevant clip ids beyond the loaded clips are dropped from the score array (the original
    grows it by one, which breaks batching).
    """
    agg = np.asarray(scores, dtype=np.float64).reshape(len(rel_clip_ids), -1).sum(1)
    order = np.argsort(agg, kind="stable")
    all_scores = np.zeros(n_clips, dtype=np.float32)
    for cid, s in zip(rel_clip_ids, agg, strict=True):
        if cid < n_clips:
            all_scores[cid] = s
    hard_pos = [min(rel_clip_ids[order[-1]], n_clips - 1)]
    hard_neg = [min(rel_clip_ids[order[0]], n_clips - 1)]
    easy_neg_pool = sorted(set(range(n_clips)) - set(rel_clip_ids))
    if easy_neg_pool:
        easy_pos = [min(rng.choice(list(rel_clip_ids)), n_clips - 1)]
        easy_neg = [rng.choice(easy_neg_pool)]
    else:
        easy_pos, easy_neg = hard_pos, hard_neg
    return hard_pos + easy_pos, hard_neg + easy_neg, all_scores


def clip_relevance(windows: Sequence[Sequence[float]], n_clips: int, clip_len: float) -> Tensor:
    """(n_clips,) ``IN_WINDOW`` / ``OUTSIDE`` codes: clip i (seconds [i, i + 1) * clip_len) is
    inside when its centre lies in a window [start, end). On QVHighlights' train and val
    annotations the windows sit on clip boundaries and this gives ``relevant_clip_ids``."""
    centres = (torch.arange(n_clips, dtype=torch.float64) + 0.5) * clip_len
    inside = torch.zeros(n_clips, dtype=torch.bool)
    for start, end in windows:
        inside |= (centres >= start) & (centres < end)
    return torch.where(inside, IN_WINDOW, OUTSIDE)


class QVHighlightsDataset(Dataset):
    """One item per query: features, span labels (normalised center/width), saliency labels."""

    def __init__(
        self,
        rows: list[dict],
        features: FeatureStore,
        load_labels: bool = True,
        clip_len: float = 2.0,
        max_windows: int = 5,
        use_tef: bool = True,
    ) -> None:
        self.rows, self.features = rows, features
        self.load_labels, self.clip_len = load_labels, clip_len
        self.max_windows, self.use_tef = max_windows, use_tef
        # the global ``random`` as in the original: Lightning seeds it in every worker
        self.rng = random

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        meta = self.rows[index]
        video = self.features.video(meta["vid"])
        n_clips = len(video)
        if self.use_tef:
            video = np.concatenate([video, temporal_endpoint_feature(n_clips)], axis=1)
        item: dict[str, Any] = {
            "meta": meta,
            "video_feat": torch.from_numpy(video),
            "query_feat": torch.from_numpy(self.features.text(meta["qid"])),
        }
        if self.load_labels:
            windows = list(meta["relevant_windows"])
            if len(windows) > self.max_windows:
                self.rng.shuffle(windows)
                windows = windows[: self.max_windows]
            xx = torch.tensor(windows, dtype=torch.float32) / (n_clips * self.clip_len)
            item["span_labels"] = span_xx_to_cxw(xx)
            pos, neg, all_scores = saliency_labels(
                meta["relevant_clip_ids"], meta["saliency_scores"], n_clips, self.rng
            )
            item["saliency_pos_labels"] = torch.tensor(pos)
            item["saliency_neg_labels"] = torch.tensor(neg)
            item["saliency_all_labels"] = torch.from_numpy(all_scores)
            # every window (not the max_windows drawn above): the diagnostics' clip labels
            windows = meta["relevant_windows"]
            item["clip_relevance"] = clip_relevance(windows, n_clips, self.clip_len)
        return item


def pad_sequences(seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad (L_i, ...) tensors to the longest -> (B, L, ...) and a float mask (1 = valid)."""
    length = max(len(s) for s in seqs)
    out = seqs[0].new_zeros((len(seqs), length, *seqs[0].shape[1:]))
    mask = torch.zeros(len(seqs), length)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = 1.0
    return out, mask


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pads features to the longest item in the batch; span labels stay a list (ragged)."""
    batch: dict[str, Any] = {"meta": [it["meta"] for it in items]}
    batch["src_vid"], batch["src_vid_mask"] = pad_sequences([it["video_feat"] for it in items])
    batch["src_txt"], batch["src_txt_mask"] = pad_sequences([it["query_feat"] for it in items])
    if "span_labels" in items[0]:
        batch["span_labels"] = [it["span_labels"] for it in items]
        batch["saliency_pos_labels"] = torch.stack([it["saliency_pos_labels"] for it in items])
        batch["saliency_neg_labels"] = torch.stack([it["saliency_neg_labels"] for it in items])
        batch["saliency_all_labels"], _ = pad_sequences([it["saliency_all_labels"] for it in items])
        batch["key_relevance"] = encoder_key_relevance([it["clip_relevance"] for it in items])
    return batch


def encoder_key_relevance(clips: Sequence[Tensor]) -> Tensor:
    """(B, 1 + longest) codes of the encoder's keys: the global token, the clips, padding."""
    codes = torch.full((len(clips), 1 + max(len(c) for c in clips)), PADDING_KEY)
    codes[:, 0] = GLOBAL_KEY
    for i, c in enumerate(clips):
        codes[i, 1 : 1 + len(c)] = c
    return codes


class QVHighlightsDataModule(L.LightningDataModule):
    """Train / val / test splits of QVHighlights (val doubles as the model-selection split)."""

    key_relevance_categories = KEY_CATEGORIES  # what a labelled batch's key_relevance means

    def __init__(
        self,
        annotation_dir: str,
        feature_dir: str,
        v_feat_dim: int,
        t_feat_dim: int,
        train_file: str = "highlight_train_release.jsonl",
        val_file: str = "highlight_val_release.jsonl",
        test_file: str | None = "highlight_test_release.jsonl",
        v_feat_types: Sequence[str] = ("slowfast_features", "clip_features"),
        t_feat_type: str = "clip_text_features",
        max_v_l: int = 75,
        max_q_l: int = 32,
        clip_len: float = 2.0,
        max_windows: int = 5,
        use_tef: bool = True,
        normalize_v: bool = True,
        normalize_t: bool = True,
        data_ratio: float = 1.0,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 4,
        pin_memory: bool = True,
        cache_features: bool = True,
        clip_tolerance: int = 2,
    ) -> None:
        super().__init__()
        self.clip_tolerance, self.clip_len, self.max_v_l = clip_tolerance, clip_len, max_v_l
        ann, feat = Path(annotation_dir), Path(feature_dir)
        self.paths = {
            "train": ann / train_file,
            "val": ann / val_file,
            "test": None if test_file is None else ann / test_file,
        }
        self.v_feat_dim, self.t_feat_dim = v_feat_dim, t_feat_dim
        self.store_kwargs = dict(
            v_feat_dirs=[feat / t for t in v_feat_types],
            t_feat_dir=feat / t_feat_type,
            max_v_l=max_v_l,
            max_q_l=max_q_l,
            normalize_v=normalize_v,
            normalize_t=normalize_t,
            cache=cache_features,
        )
        self.item_kwargs = dict(clip_len=clip_len, max_windows=max_windows, use_tef=use_tef)
        self.data_ratio = data_ratio
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.datasets: dict[str, QVHighlightsDataset] = {}
        self.store: FeatureStore | None = None

    def split(self, name: str) -> QVHighlightsDataset:
        """Build (once) the dataset of a split; the test split has no labels."""
        if name in self.datasets:
            return self.datasets[name]
        path = self.paths[name]
        if path is None:
            raise ValueError(f"data.{name}_file is not set")
        labels = name != "test"
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"QVHighlights {name} annotations not found: {path} (set by data.annotation_dir "
                f"and data.{name}_file; the official files are highlight_{{train,val,test}}"
                "_release.jsonl)"
            )
        rows = read_annotations(path, need_labels=labels, data_ratio=self.data_ratio)
        if self.store is None:
            self.store = FeatureStore(**self.store_kwargs)
        self.store.preload(rows)
        for i, row in enumerate(rows):  # every row, not only the first: dims of every file
            self._check_dims(row, path, i + 1)
            self._check_lengths(row, path, i + 1, labels)
        self.datasets[name] = QVHighlightsDataset(
            rows, self.store, load_labels=labels, **self.item_kwargs
        )
        log.info("QVHighlights %s: %d queries from %s", name, len(rows), path)
        return self.datasets[name]

    def _check_dims(self, row: dict, path: Path | None = None, line: int | None = None) -> None:
        v, t = self.store.video(row["vid"]), self.store.text(row["qid"])
        if v.shape[1] != self.v_feat_dim or t.shape[1] != self.t_feat_dim:
            raise DataValidationError(
                path or "QVHighlights annotations",
                f"features have video dim {v.shape[1]} and text dim {t.shape[1]} "
                f"(vid {row['vid']}, qid {row['qid']}), but data.v_feat_dim={self.v_feat_dim} "
                f"and data.t_feat_dim={self.t_feat_dim}",
                row=line,
            )

    def _check_lengths(self, row: dict, path: Path, line: int, labels: bool) -> None:
        """Cross-file checks of one query: every video feature type covers the same clips, the
        features cover the annotation's duration, and the ground-truth windows lie inside it.

        The tolerance is ``data.clip_tolerance`` clips (default 2): QD-DETR cuts the types to
        the shortest, since extractors round a video's last partial clip differently (the
        SlowFast and CLIP files of one video may differ by a clip); a larger gap is a feature
        extraction that stopped early, and training on it would put targets past the end of
        the features. Windows get no tolerance: none of the 8,768 train / val rows of the
        official annotations has one outside ``[0, duration]``.
        """
        vid, tol = row["vid"], self.clip_tolerance
        lengths = self.store.lengths[vid]
        files = [str(d / f"{vid}.npz") for d in self.store.v_feat_dirs]
        if max(lengths) - min(lengths) > tol:
            listed = ", ".join(f"{f}: {n} clips" for f, n in zip(files, lengths, strict=True))
            raise DataValidationError(
                path,
                f"vid {vid} (qid {row['qid']}): the video feature types cover different numbers "
                f"of clips ({listed}), more than data.clip_tolerance={tol} apart; was a feature "
                "extraction stopped early?",
                row=line,
            )
        duration = float(row["duration"])
        expected = min(math.ceil(duration / self.clip_len), self.max_v_l)
        if min(lengths) < expected - tol:
            raise DataValidationError(
                path,
                f"vid {vid} (qid {row['qid']}): the features ({', '.join(files)}) have "
                f"{min(lengths)} clips of {self.clip_len:g} s, but the video lasts {duration:g} s "
                f"({expected} clips, data.max_v_l={self.max_v_l}); more than "
                f"data.clip_tolerance={tol} clips short",
                row=line,
            )
        for window in row.get("relevant_windows") or [] if labels else []:
            start, end = window[0], window[1]
            if not 0 <= start < end <= duration:
                raise DataValidationError(
                    path,
                    f"qid {row['qid']} (vid {vid}): relevant window {list(window)} is not inside "
                    f"the video [0, {duration:g}] s (duration)",
                    row=line,
                )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.split("train")
            self.split("val")
        if stage == "validate":
            self.split("val")
        if stage in ("test", "predict"):
            self.split("test")

    def _loader(self, name: str, train: bool) -> DataLoader:
        # training: order and label sampling fixed by (seed, epoch) -> resuming is exact
        dataset = self.split(name)
        sampler = (
            EpochShuffleSampler(len(dataset), item_seeds=True, epoch=current_epoch(self))
            if train
            else None
        )
        return DataLoader(
            SeededItems(dataset) if train else dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
