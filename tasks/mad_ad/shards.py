"""MAD-v2 audio description as streamed tar shards (tasks/common/runtime/shards.py).

    python scripts/make_shards.py mad --root <mad> --out <shards>        # train/ val/ test/
    python train.py task=mad_ad data._target_=tasks.mad_ad.shards.MadADShardsDataModule \
        data.shards=<shards> model.llm_path=<llama>

The converter reads the official files exactly as ``MadADDataModule`` does (feature h5 files +
AD csv, split by movie) and stores, per AD, the two feature windows the model sees (the
``tokens_per_modality`` vectors around the AD's centre, zero-padded, with their padding masks)
and the AD's csv fields: ``visual.npy``, ``audio.npy``, ``visual_pad.npy``, ``audio_pad.npy``,
``json``. A training epoch then streams a few KB per AD instead of random reads into
multi-GB h5 files (MADv2's features are about 2.4 TB). Tokenisation stays in the loader (the
tokenizer is the model's). The window size and rate are fixed at conversion and checked against
the config.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from tasks.common.runtime.shards import (
    ShardedDataset,
    ShardIndex,
    ShardWriter,
    distributed_rank,
    sharded_loader,
)
from tasks.mad_ad.data import (
    AD_PROMPT,
    FeatureStore,
    collate,
    encode_example,
    load_ads,
    load_tokenizer,
    movie_list,
    resolve,
    resolve_features,
    split_moments,
)

SPLITS = ("train", "val", "test")
DECODE = wds.autodecode.Decoder([wds.autodecode.basichandlers])


def convert_mad(
    out: str | Path,
    *,
    visual_features: str,
    audio_features: str,
    annotations: str,
    root: str | None = None,
    val_movies: Sequence[str] | str | None = ("3034_IDES_OF_MARCH", "3074_THE_ROOMMATE"),
    test_movies: Sequence[str] | str | None = None,
    columns: Mapping[str, str] | None = None,
    tokens_per_modality: int = 25,
    fps: float = 5.0,
    samples_per_shard: int = 1000,
    seed: int = 0,
) -> dict[str, Path]:
    """The MAD files (names relative to ``root`` unless absolute) -> ``<out>/<split>/`` shards."""
    visual_features, _ = resolve_features(root, visual_features, "visual_features")
    audio_features, _ = resolve_features(root, audio_features, "audio_features")
    annotations = resolve(root, annotations)
    if isinstance(test_movies, str):
        test_movies = resolve(root, test_movies)
    visual, audio = FeatureStore(visual_features), FeatureStore(audio_features)
    moments, report = load_ads(annotations, columns, visual, audio, fps)
    splits = split_moments(moments, movie_list(val_movies), movie_list(test_movies))
    written = {}
    for split in SPLITS:
        rows = list(splits[split])
        if not rows:
            continue
        if split == "train":
            random.Random(seed).shuffle(rows)  # every shard mixes movies
        meta = {
            "task": "mad_ad",
            "split": split,
            "tokens_per_modality": tokens_per_modality,
            "fps": fps,
            "annotations": Path(annotations).name,
            "data_report": report.as_dict(),
        }
        with ShardWriter(Path(out) / split, split, samples_per_shard, meta) as writer:
            for m in rows:
                center = 0.5 * (m.start + m.end)
                v, v_pad = visual.window(m.movie, center, tokens_per_modality, fps)
                a, a_pad = audio.window(m.movie, center, tokens_per_modality, fps)
                fields = {"movie": m.movie, "start": m.start, "end": m.end, "text": m.text}
                writer.write(  # encoded by webdataset: .npy files, json
                    {
                        "visual.npy": v.numpy(),
                        "audio.npy": a.numpy(),
                        "visual_pad.npy": v_pad.numpy(),
                        "audio_pad.npy": a_pad.numpy(),
                        "json": {**fields, "index": m.index},
                    }
                )
        written[split] = Path(out) / split
    return written


def decode_ad(
    sample: dict[str, Any], tokenizer: Any, prompt: str, max_text_tokens: int
) -> dict[str, Any]:
    """A raw shard sample (decoded by webdataset: .npy without pickles, json) as
    ``MadADDataset`` returns the same AD."""
    sample = DECODE(sample)
    info = sample["json"]
    ids, labels = encode_example(tokenizer, info["text"], prompt, max_text_tokens)
    pads = [torch.from_numpy(sample[f"{k}_pad.npy"]) for k in ("visual", "audio")]
    return {
        "visual": torch.from_numpy(sample["visual.npy"]),
        "audio": torch.from_numpy(sample["audio.npy"]),
        "padding_mask": torch.cat(pads),
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "movie": info["movie"],
        "start": info["start"],
        "index": info["index"],
        "text": info["text"],
    }


class MadADShardsDataModule(L.LightningDataModule):
    """Train / val / test ADs streamed from ``<shards>/<split>`` (local paths or fsspec URLs).

    Takes the task config's data keys; the file / split keys of the folder loader
    (``visual_features``, ``val_movies``, ...) were used by the converter and are ignored here.
    """

    def __init__(
        self,
        shards: str,
        tokenizer_path: str | None,
        *,
        prompt: str = AD_PROMPT,
        tokens_per_modality: int = 25,
        fps: float = 5.0,
        max_text_tokens: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle_buffer: int = 2000,
        seed: int | None = None,
        **_folder_keys: Any,
    ) -> None:
        super().__init__()
        if not tokenizer_path or not Path(tokenizer_path).exists():
            raise FileNotFoundError(
                f"model.llm_path (tokenizer) not found: {tokenizer_path!s}; set model.llm_path"
            )
        self.shards = str(shards).rstrip("/")
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        self.decode = partial(
            decode_ad, tokenizer=self.tokenizer, prompt=prompt, max_text_tokens=max_text_tokens
        )
        self.tokens, self.fps = tokens_per_modality, fps
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.sets: dict[str, ShardedDataset] = {}

    def _dataset(self, split: str) -> ShardedDataset:
        if split not in self.sets:
            location = f"{self.shards}/{split}"
            meta = ShardIndex.load(location).meta
            if (meta.get("tokens_per_modality"), meta.get("fps")) != (self.tokens, self.fps):
                raise ValueError(
                    f"{location} holds windows of {meta.get('tokens_per_modality')} tokens at "
                    f"{meta.get('fps')} fps; the config asks for {self.tokens} at {self.fps} "
                    "(convert again or set data.tokens_per_modality / data.fps)"
                )
            train = split == "train"
            self.sets[split] = ShardedDataset(
                location,
                self.decode,
                batch_size=self.batch_size if train else self.eval_batch_size,
                shuffle=train,
                seed=self.seed,
                buffer_size=self.shuffle_buffer,
            )
        return self.sets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
            self._dataset("val")

    def _loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        dataset.place(*distributed_rank(getattr(self, "trainer", None)))
        return sharded_loader(
            dataset,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
