"""MSR-VTT data: official json layout, mp4 decoding, SwinBERT's caption masking."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tasks.msrvtt.data import (
    CaptionMasker,
    MSRVTTDataModule,
    decode_frames,
    frames_to_tensor,
    load_annotations,
    load_tokenizer,
    sample_frame_indices,
)
from tests.msrvtt.conftest import IMG_RES, NUM_FRAMES


def test_generated_files_follow_the_official_layout(tiny_data):
    info = json.loads((tiny_data / "train_val_videodatainfo.json").read_text())
    assert set(info) == {"info", "videos", "sentences"}
    assert {"video_id", "split", "id"} <= set(info["videos"][0])
    assert {"caption", "video_id", "sen_id"} <= set(info["sentences"][0])
    splits = load_annotations(
        [tiny_data / "train_val_videodatainfo.json", tiny_data / "test_videodatainfo.json"]
    )
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "validate": 2, "test": 2}
    assert all(len(v.captions) == 3 for vs in splits.values() for v in vs)
    assert (tiny_data / "TestVideo" / f"{splits['test'][0].video_id}.mp4").is_file()


def test_uniform_frame_sampling_and_decoding(tiny_data):
    assert sample_frame_indices(64, 32) == list(range(1, 64, 2))
    assert sample_frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    frames = decode_frames(tiny_data / "TrainValVideo" / "video0.mp4", NUM_FRAMES)
    assert frames.shape == (NUM_FRAMES, 48, 64, 3) and frames.dtype.name == "uint8"
    # the generated square moves: the sampled frames differ
    assert abs(frames[0].astype(int) - frames[-1].astype(int)).max() > 50
    x = frames_to_tensor(frames, IMG_RES, train=False)
    assert x.shape == (NUM_FRAMES, 3, IMG_RES, IMG_RES)
    assert torch.equal(x, frames_to_tensor(frames, IMG_RES, train=False))  # centre crop


def test_caption_masking_follows_swinbert(tiny_data):
    tok = load_tokenizer(tiny_data)
    masker = CaptionMasker(tok, max_text_len=12, mask_prob=0.5, max_masked_tokens=4)
    caption = "a red block slides left slowly"  # 6 words -> [CLS] + 6 + [SEP] = 8 tokens
    original = tok.convert_tokens_to_ids(["[CLS]", *caption.split(), "[SEP]"])
    for seed in range(20):
        out = masker(caption, random.Random(seed))
        assert int(out["text_len"]) == 8
        positions = out["masked_pos"].nonzero().flatten().tolist()
        assert len(positions) == min(max(round(0.5 * 8), 1), 4) == 4
        assert all(1 <= p <= 7 for p in positions)  # never [CLS]; [SEP] may be masked
        targets = out["masked_ids"][out["masked_ids"] != -1].tolist()
        assert targets == [original[p] for p in positions]
        ids = out["input_ids"].tolist()
        assert all(ids[i] == original[i] for i in range(8) if i not in positions)
        assert ids[8:] == [tok.pad_token_id] * 4
    # the 80 / 10 / 10 rule: most masked inputs become [MASK]
    rng = random.Random(0)
    outs = [masker(caption, rng) for _ in range(200)]
    share = sum((o["input_ids"][o["masked_pos"]] == tok.mask_token_id).float().mean() for o in outs)
    assert 0.7 < float(share) / 200 < 0.9


def test_datamodule_batches(tiny_data):
    dm = MSRVTTDataModule(
        str(tiny_data),
        str(tiny_data),
        num_frames=NUM_FRAMES,
        img_res=IMG_RES,
        max_text_len=12,
        max_masked_tokens=4,
        batch_size=3,
        eval_batch_size=2,
        num_workers=0,
    )
    dm.setup()
    assert len(dm.train_set) == 4 * 3  # one item per (video, caption) pair
    assert len(dm.val_set) == 2 and len(dm.test_set) == 2  # one item per video
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (3, NUM_FRAMES, 3, IMG_RES, IMG_RES)
    assert batch["input_ids"].shape == batch["masked_pos"].shape == (3, 12)
    assert batch["masked_ids"].shape == (3, 4)
    val = next(iter(dm.val_dataloader()))
    assert val["video_id"] == ["video4", "video5"] and len(val["references"][0]) == 3


def test_missing_files_name_the_config_key(tmp_path, tiny_data):
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_annotations([tmp_path / "train_val_videodatainfo.json"])
    dm = MSRVTTDataModule(str(tiny_data), str(tiny_data), video_dirs=("Elsewhere",))
    with pytest.raises(FileNotFoundError, match="data.video_dirs"):
        dm.setup()
