"""MAD-v2 readers: csv columns, movie splits, feature windows, prompt / label encoding, collate."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch

from tasks.mad_ad.data import (
    AD_PROMPT,
    IGNORE_INDEX,
    FeatureStore,
    MadADDataModule,
    check_paths,
    collate,
    encode_example,
    encode_prompt,
    load_tokenizer,
    read_ad_csv,
    split_moments,
    window_start,
)
from tasks.mad_ad.synthetic import VAL_MOVIES


def test_prompt_is_the_papers_alpaca_template():
    assert AD_PROMPT.startswith("Below is an instruction that describes a task.")
    assert AD_PROMPT.endswith("### Instruction:\nGenerate caption of this video.\n\n### Response:")


def test_read_csv_with_renamed_columns(tmp_path):
    path = tmp_path / "ads.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(
            [["imdbid", "t0", "t1", "sentence"], ["m1", "1.5", "3", " He runs. "]]
        )
    columns = {"movie": "imdbid", "start": "t0", "end": "t1", "text": "sentence"}
    (ad,), report = read_ad_csv(path, columns)
    assert (ad.movie, ad.start, ad.end, ad.text, ad.index) == ("m1", 1.5, 3.0, "He runs.", 0)
    with pytest.raises(ValueError, match="data.columns"):
        read_ad_csv(path)


def test_window_is_centred_and_kept_inside_the_movie():
    assert window_start(10.0, 1000, 25, 5.0) == 50 - 12
    assert window_start(0.5, 1000, 25, 5.0) == 0
    assert window_start(199.9, 1000, 25, 5.0) == 1000 - 25
    assert window_start(1.0, 10, 25, 5.0) == 0  # shorter than a window: padded


def test_feature_window_pads_short_movies(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("short", data=np.arange(30, dtype=np.float32).reshape(10, 3))
        f.create_dataset("long", data=np.arange(300, dtype=np.float32).reshape(100, 3))
    store = FeatureStore(path)
    feats, pad = store.window("short", 1.0, 25, 5.0)
    assert feats.shape == (25, 3) and pad.sum() == 15 and not pad[:10].any()
    assert torch.equal(feats[:10], torch.arange(30.0).reshape(10, 3))
    feats, pad = store.window("long", 10.0, 25, 5.0)
    assert not pad.any() and feats[0, 0].item() == 3 * (50 - 12)
    with pytest.raises(KeyError, match="nope"):
        store.window("nope", 1.0, 25, 5.0)


def test_labels_cover_the_response_and_eos_only(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    ids, labels = encode_example(tok, "Tony opens the door.", AD_PROMPT, 64)
    prefix = encode_prompt(tok)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels[: len(prefix)] == [IGNORE_INDEX] * len(prefix)
    assert labels[len(prefix) :] == ids[len(prefix) :]
    assert tok.decode(ids[len(prefix) : -1]) == "Tony opens the door."
    short_ids, _ = encode_example(tok, "Tony opens the door.", AD_PROMPT, 2)
    assert len(short_ids) == len(prefix) + 3  # 2 text tokens + EOS


def test_collate_pads_right(tiny_llama):
    batch = [
        {
            "visual": torch.zeros(5, 4),
            "audio": torch.zeros(5, 4),
            "padding_mask": torch.zeros(10, dtype=torch.bool),
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "movie": "m",
            "start": float(i),
            "index": i,
            "text": "t",
        }
        for i, (ids, labels) in enumerate([([1, 5, 6], [-100, 5, 6]), ([1, 7], [-100, 7])])
    ]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert out["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["visual"].shape == (2, 5, 4) and out["index"] == [0, 1]


def test_datamodule_splits_by_movie(tiny_llama, mad_dir):
    dm = MadADDataModule(
        "CLIP_B32_frames_features_5fps.h5",
        "openl3_audio_features_5hz.h5",
        "mad-v2-ad-unnamed.csv",
        str(tiny_llama),
        root=str(mad_dir),
        test_movies="test_movies.txt",
        num_workers=0,
        batch_size=4,
    )
    splits = dm.splits
    assert {m.movie for m in splits["val"]} == set(VAL_MOVIES)
    assert {m.movie for m in splits["test"]} == {"synthetic_test_00"}
    assert {m.movie for m in splits["train"]} == {"synthetic_train_00"}
    assert [m.start for m in splits["val"][:16]] == sorted(m.start for m in splits["val"][:16])
    batch = next(iter(dm.val_dataloader()))
    assert batch["visual"].shape == (4, 25, 16) and batch["padding_mask"].shape == (4, 50)
    assert batch["movie"][0] == VAL_MOVIES[0]


def test_split_rejects_overlapping_movies():
    with pytest.raises(ValueError, match="both val and test"):
        split_moments([], ["a"], ["a"])


def test_missing_paths_are_listed_with_their_keys(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        check_paths({"data.visual_features": str(tmp_path / "x.h5"), "model.llm_path": None})
    assert "data.visual_features" in str(error.value) and "model.llm_path=None  (not set)" in str(
        error.value
    )
