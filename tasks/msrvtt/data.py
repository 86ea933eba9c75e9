"""MSR-VTT video captioning data: official json annotations, mp4 decoding, SwinBERT's masking.

Layout under ``root`` (the MSR-VTT release, names configurable):

    train_val_videodatainfo.json   videos with ``split`` in {train, validate}; their sentences
    test_videodatainfo.json        videos with ``split`` == test; their sentences
    TrainValVideo/<video_id>.mp4   (video0 .. video7009)
    TestVideo/<video_id>.mp4       (video7010 .. video9999)

The standard splits (6,513 train / 497 validate / 2,990 test) are the ``split`` field of the
json files. Training iterates over every (video, caption) pair, as SwinBERT does; validation and
test iterate over videos, with all their captions as references.

Text inputs follow SwinBERT's ``CaptionTensorizer`` (seq2seq / learn_vid_att mode):
``[CLS] caption [SEP] [PAD]...`` of length ``max_text_len``; ``round(mask_prob * len)`` tokens
(at least 1, at most ``max_masked_tokens``) drawn from positions 1..len-1 ([SEP] included, it is
the end-of-sentence token) are masked 80 % [MASK] / 10 % random token / 10 % unchanged.
The attention layout is not built here: the model builds it from ``text_len``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import av
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tasks.common.runtime.data import (
    DataValidationError,
    EpochShuffleSampler,
    SeededItems,
    current_epoch,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STANDARD_SPLIT_SIZES = {"train": 6513, "validate": 497, "test": 2990}


@dataclass
class VideoCaptions:
    video_id: str
    split: str
    captions: list[str]


def load_tokenizer(path: str | Path):
    """BERT WordPiece tokenizer from a local folder holding ``vocab.txt`` (never downloads)."""
    from transformers import BertTokenizer

    path = Path(path)
    if not (path / "vocab.txt").is_file():
        raise FileNotFoundError(
            f"BERT tokenizer: no vocab.txt in {path} (config key data.tokenizer_path / "
            "model.tokenizer_path). Put bert-base-uncased (vocab.txt, config.json, weights) "
            "there, or generate tiny data with scripts/make_msrvtt_videos.py."
        )
    return BertTokenizer.from_pretrained(str(path), local_files_only=True)


def load_annotations(paths: list[str | Path]) -> dict[str, list[VideoCaptions]]:
    """Read MSR-VTT ``*_videodatainfo.json`` files into {split: [VideoCaptions]} in file order."""
    by_video: dict[str, VideoCaptions] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MSR-VTT annotations not found: {path} (config keys data.root / "
                "data.annotation_files)"
            )
        info = read_json(path)
        for key in ("videos", "sentences"):
            if not isinstance(info.get(key), list) or not info[key]:
                raise DataValidationError(path, f"no {key!r} list (or an empty one)")
        for i, video in enumerate(info["videos"]):
            if not isinstance(video, dict) or not {"video_id", "split"} <= set(video):
                raise DataValidationError(path, f"videos[{i}] lacks video_id / split", i)
            by_video[video["video_id"]] = VideoCaptions(video["video_id"], video["split"], [])
        for i, sentence in enumerate(info["sentences"]):
            if not isinstance(sentence, dict) or not {"video_id", "caption"} <= set(sentence):
                raise DataValidationError(path, f"sentences[{i}] lacks video_id / caption", i)
            if sentence["video_id"] not in by_video:
                raise DataValidationError(
                    path, f"sentences[{i}] names unknown video {sentence['video_id']!r}", i
                )
            by_video[sentence["video_id"]].captions.append(sentence["caption"])
    splits: dict[str, list[VideoCaptions]] = {}
    for item in by_video.values():
        splits.setdefault(item.split, []).append(item)
    sizes = {k: len(v) for k, v in splits.items()}
    if any(sizes.get(k) != n for k, n in STANDARD_SPLIT_SIZES.items()):
        log.info("MSR-VTT split sizes %s differ from the standard %s", sizes, STANDARD_SPLIT_SIZES)
    return splits


def read_json(path: Path) -> dict:
    """A JSON object from a file; malformed JSON is an error naming the file and line."""
    if path.stat().st_size == 0:
        raise DataValidationError(path, "empty file (0 bytes)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataValidationError(
            path, f"malformed JSON ({err.msg}, line {err.lineno} column {err.colno})", err.lineno
        ) from None
    except UnicodeDecodeError as err:
        raise DataValidationError(path, f"not a UTF-8 text file ({err})") from None
    if not isinstance(info, dict):
        raise DataValidationError(path, "expected a JSON object")
    return info


def check_video(path: Path) -> None:
    """Open the container and decode its first frame (a truncated or non-video file fails)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataValidationError(path, "no video stream")
            next(container.decode(video=0))
    except DataValidationError:
        raise
    except StopIteration:
        raise DataValidationError(path, "no decodable video frames") from None
    except Exception as err:  # noqa: BLE001 - av raises many error types
        raise DataValidationError(path, f"not a readable video ({err})") from err


def sample_frame_indices(total: int, num: int) -> list[int]:
    """``num`` indices spread uniformly over ``total`` frames (centre of each segment)."""
    if total < 1:
        raise ValueError("cannot sample frames from an empty video")
    return [min(total - 1, int((i + 0.5) * total / num)) for i in range(num)]


def decode_frames(path: str | Path, num_frames: int) -> np.ndarray:
    """Decode an mp4 with PyAV and return ``num_frames`` uniformly sampled RGB frames (F,H,W,3).

    When the container states its frame count, only the sampled frames are converted to RGB and
    kept (a 30 s MSR-VTT clip has ~900 frames); otherwise every frame is decoded first.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames
        if total > 0:
            wanted = sample_frame_indices(total, num_frames)
            kept: dict[int, np.ndarray] = {}
            last = None
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    kept[i] = last = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
            if last is None:
                raise ValueError(f"no video frames could be decoded from {path}")
            # the stated count can exceed the decodable frames: reuse the last decoded one
            return np.stack([kept.get(i, last) for i in wanted])
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"no video frames could be decoded from {path}")
    return np.stack([frames[i] for i in sample_frame_indices(len(frames), num_frames)])


def frames_to_tensor(frames: np.ndarray, img_res: int, train: bool) -> Tensor:
    """(F,H,W,3) uint8 -> (F,3,R,R) float: shorter side to R, crop (random when training,
    centre otherwise), ImageNet normalisation (Video Swin's pre-training statistics)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    scale = img_res / min(h, w)
    size = (max(img_res, round(h * scale)), max(img_res, round(w * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = size
    if train:
        top, left = random.randint(0, h - img_res), random.randint(0, w - img_res)
    else:
        top, left = (h - img_res) // 2, (w - img_res) // 2
    x = x[..., top : top + img_res, left : left + img_res]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class CaptionMasker:
    """SwinBERT's masked-token captioning inputs for one caption (see the module docstring)."""

    def __init__(
        self, tokenizer, max_text_len: int = 50, mask_prob: float = 0.5, max_masked_tokens: int = 45
    ) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.mask_prob = mask_prob
        self.max_masked_tokens = max_masked_tokens

    def __call__(self, caption: str, rng: random.Random | None = None) -> dict[str, Tensor]:
        rng = rng or random
        tok = self.tokenizer
        words = tok.tokenize(caption)[: self.max_text_len - 2]
        tokens = [tok.cls_token, *words, tok.sep_token]
        text_len = len(tokens)
        num_masked = min(max(round(self.mask_prob * text_len), 1), self.max_masked_tokens)
        candidates = list(range(1, text_len))
        rng.shuffle(candidates)
        masked = sorted(candidates[:num_masked])
        ids = tok.convert_tokens_to_ids(tokens)
        targets = [ids[i] for i in masked]
        for i in masked:
            if rng.random() <= 0.8:
                ids[i] = tok.mask_token_id
            elif rng.random() <= 0.5:
                ids[i] = rng.randrange(len(tok))
        input_ids = torch.full((self.max_text_len,), tok.pad_token_id, dtype=torch.long)
        input_ids[:text_len] = torch.tensor(ids)
        masked_pos = torch.zeros(self.max_text_len, dtype=torch.bool)
        masked_pos[masked] = True
        masked_ids = torch.full((self.max_masked_tokens,), -1, dtype=torch.long)
        masked_ids[: len(targets)] = torch.tensor(targets)
        return {
            "input_ids": input_ids,
            "text_len": torch.tensor(text_len),
            "masked_pos": masked_pos,
            "masked_ids": masked_ids,
        }


class MSRVTTDataset(Dataset):
    """Training: one item per (video, caption) pair. Evaluation: one item per video."""

    def __init__(
        self,
        videos: list[VideoCaptions],
        video_paths: dict[str, Path],
        *,
        num_frames: int,
        img_res: int,
        train: bool,
        masker: CaptionMasker | None = None,
    ) -> None:
        if train and masker is None:
            raise ValueError("a training MSRVTTDataset needs a CaptionMasker")
        self.videos, self.video_paths = videos, video_paths
        self.num_frames, self.img_res, self.train, self.masker = num_frames, img_res, train, masker
        if train:
            self.items = [(v, c) for v in videos for c in v.captions]
        else:
            self.items = [(v, None) for v in videos]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        video, caption = self.items[index]
        frames = decode_frames(self.video_paths[video.video_id], self.num_frames)
        item = {
            "video_id": video.video_id,
            "frames": frames_to_tensor(frames, self.img_res, self.train),
            "references": video.captions,
        }
        if caption is not None:
            item.update(self.masker(caption))
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep ids and reference captions as lists."""
    batch: dict = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return batch


class MSRVTTDataModule(L.LightningDataModule):
    """MSR-VTT train / validate / test loaders (splits from the json ``split`` field)."""

    def __init__(
        self,
        root: str,
        tokenizer_path: str,
        annotation_files: tuple[str, ...] = (
            "train_val_videodatainfo.json",
            "test_videodatainfo.json",
        ),
        video_dirs: tuple[str, ...] = ("TrainValVideo", "TestVideo"),
        video_ext: str = ".mp4",
        num_frames: int = 32,
        img_res: int = 224,
        max_text_len: int = 50,
        mask_prob: float = 0.5,
        max_masked_tokens: int = 45,
        batch_size: int = 2,
        eval_batch_size: int = 4,
        num_workers: int = 4,
        limit_eval_videos: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.tokenizer_path = tokenizer_path
        self.annotation_files = list(annotation_files)
        self.video_dirs = list(video_dirs)
        self.video_ext = video_ext
        self.num_frames, self.img_res = num_frames, img_res
        self.max_text_len, self.mask_prob, self.max_masked_tokens = (
            max_text_len,
            mask_prob,
            max_masked_tokens,
        )
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.limit_eval_videos = limit_eval_videos
        self.splits: dict[str, list[VideoCaptions]] | None = None

    def _video_paths(self, videos: list[VideoCaptions]) -> dict[str, Path]:
        paths, missing = {}, []
        for v in videos:
            found = [self.root / d / f"{v.video_id}{self.video_ext}" for d in self.video_dirs]
            found = [p for p in found if p.is_file()]
            if found:
                paths[v.video_id] = found[0]
            else:
                missing.append(v.video_id)
        if missing:
            raise FileNotFoundError(
                f"MSR-VTT: {len(missing)} video files missing (e.g. {missing[0]}{self.video_ext}) "
                f"under {self.root} / {self.video_dirs} (config keys data.root, data.video_dirs)"
            )
        for path in paths.values():  # before training: a broken video fails now, not mid-epoch
            check_video(path)
        return paths

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.splits = load_annotations([self.root / f for f in self.annotation_files])
        masker = CaptionMasker(
            self.tokenizer, self.max_text_len, self.mask_prob, self.max_masked_tokens
        )

        def dataset(split: str, train: bool) -> MSRVTTDataset:
            videos = self.splits.get(split, [])
            if not videos:
                raise ValueError(
                    f"MSR-VTT: no videos with split={split!r} in {self.annotation_files}"
                )
            if not train and self.limit_eval_videos:
                videos = videos[: self.limit_eval_videos]
            return MSRVTTDataset(
                videos,
                self._video_paths(videos),
                num_frames=self.num_frames,
                img_res=self.img_res,
                train=train,
                masker=masker if train else None,
            )

        self.train_set = dataset("train", True)
        self.val_set = dataset("validate", False)
        self.test_set = dataset("test", False)

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # order, crops and caption masking fixed by (seed, epoch, index): resuming is exact
        return DataLoader(
            SeededItems(self.train_set),
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(
                len(self.train_set), item_seeds=True, epoch=current_epoch(self)
            ),
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
