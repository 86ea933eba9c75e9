"""QVHighlights data: the synthetic layout round-trips through the reader, with the original's
normalisation, truncation, tef and labels; missing / malformed files stop with their path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.qvhighlights.data import (
    FeatureStore,
    QVHighlightsDataModule,
    collate,
    saliency_labels,
    temporal_endpoint_feature,
)
from tasks.qvhighlights.metrics import load_jsonl
from tasks.qvhighlights.spans import span_cxw_to_xx
from tasks.qvhighlights.synthetic import write_synthetic_features

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"
DIMS = {"slowfast_features": 12, "clip_features": 8}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("qvh")
    files = [ANN / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
    summary = write_synthetic_features(files, out, DIMS, text_dim=6, seed=3, limit=12)
    return out, summary


def datamodule(root: Path, **kw) -> QVHighlightsDataModule:
    args = dict(
        annotation_dir=root / "annotations",
        feature_dir=root,
        v_feat_dim=20,
        t_feat_dim=6,
        num_workers=0,
        batch_size=4,
        eval_batch_size=5,
    )
    return QVHighlightsDataModule(**{**args, **kw})


def test_layout_and_subset_annotations(synthetic):
    root, summary = synthetic
    assert summary["v_feat_dim"] == 20 and summary["queries"] == 36
    val = load_jsonl(root / "annotations" / "highlight_val_release.jsonl")
    assert val == load_jsonl(ANN / "highlight_val_release.jsonl")[:12]
    with np.load(root / "clip_features" / f"{val[0]['vid']}.npz") as f:
        assert f["features"].shape[1] == 8
    with np.load(root / "clip_text_features" / f"qid{val[0]['qid']}.npz") as f:
        assert f["last_hidden_state"].shape[1] == 6


def test_reader_round_trip(synthetic):
    root, _ = synthetic
    dm = datamodule(root)
    ds = dm.split("val")
    item = ds[0]
    meta = item["meta"]
    parts = []
    for t in DIMS:
        with np.load(root / t / f"{meta['vid']}.npz") as f:
            x = f["features"][:75]
        parts.append(x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5))
    n = min(len(p) for p in parts)
    expected = np.concatenate(
        [np.concatenate([p[:n] for p in parts], 1), temporal_endpoint_feature(n)], 1
    )
    np.testing.assert_allclose(item["video_feat"].numpy(), expected, rtol=1e-6)
    assert n == min(75, int(meta["duration"] / 2))
    with np.load(root / "clip_text_features" / f"qid{meta['qid']}.npz") as f:
        q = f["last_hidden_state"][:32]
    np.testing.assert_allclose(
        item["query_feat"].numpy(), q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-5), rtol=1e-6
    )
    # span labels: normalised (center, width) of the GT windows
    xx = span_cxw_to_xx(item["span_labels"]) * n * 2
    assert len(meta["relevant_windows"]) <= 5
    np.testing.assert_allclose(sorted(xx.tolist()), sorted(meta["relevant_windows"]), atol=1e-4)
    assert item["saliency_all_labels"].shape == (n,)


def test_tef_and_collate_masks(synthetic):
    tef = temporal_endpoint_feature(4)
    np.testing.assert_allclose(tef, [[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]])
    root, _ = synthetic
    ds = datamodule(root).split("train")
    batch = collate([ds[i] for i in range(3)])
    lengths = [len(ds[i]["video_feat"]) for i in range(3)]
    assert batch["src_vid"].shape[:2] == (3, max(lengths))
    assert batch["src_vid_mask"].sum(1).tolist() == lengths
    assert batch["saliency_pos_labels"].shape == (3, 2)
    assert batch["src_txt"].shape[1] <= 32  # query tokens cut to max_q_l


def test_saliency_labels_follow_the_original():
    import random

    pos, neg, scores = saliency_labels(
        [2, 3, 4], [[1, 1, 1], [4, 4, 4], [0, 0, 1]], 6, random.Random(0)
    )
    assert pos[0] == 3 and neg[0] == 4  # hard: highest / lowest summed score
    assert pos[1] in (2, 3, 4) and neg[1] in (0, 1, 5)  # easy: any relevant / any other clip
    assert scores.tolist() == [0, 0, 3, 12, 1, 0]


def test_test_split_has_no_labels(synthetic):
    root, _ = synthetic
    item = datamodule(root).split("test")[0]
    assert "span_labels" not in item and item["video_feat"].shape[1] == 22


def test_missing_and_malformed_files_name_the_path(synthetic, tmp_path):
    root, _ = synthetic
    store = FeatureStore([root / "slowfast_features"], root / "clip_text_features")
    with pytest.raises(FileNotFoundError, match=r"nope\.npz.*data\.feature_dir"):
        store.video("nope")
    bad = tmp_path / "slowfast_features"
    bad.mkdir()
    np.savez(bad / "v.npz", feats=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"v\.npz: expected key 'features'"):
        FeatureStore([bad], tmp_path).video("v")
    np.savez(bad / "w.npz", features=np.zeros(3))
    with pytest.raises(ValueError, match=r"w\.npz: expected a 2-d array"):
        FeatureStore([bad], tmp_path).video("w")
    (bad / "x.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"x\.npz: not a readable npz"):
        FeatureStore([bad], tmp_path).video("x")
    with pytest.raises(ValueError, match="data.v_feat_dim=99"):
        datamodule(root, v_feat_dim=99).split("val")


def test_truncates_to_max_lengths(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "t").mkdir()
    np.savez(tmp_path / "v" / "a.npz", features=np.ones((90, 3)))
    np.savez(tmp_path / "t" / "qid1.npz", last_hidden_state=np.ones((40, 2)))
    store = FeatureStore([tmp_path / "v"], tmp_path / "t")
    assert store.video("a").shape == (75, 3) and store.text(1).shape == (32, 2)
    assert torch.allclose(
        torch.from_numpy(store.video("a")).norm(dim=1), torch.tensor(1.0), atol=1e-4
    )


def test_missing_annotations_name_the_config_keys(tmp_path):
    dm = datamodule(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"highlight_val_release\.jsonl.*data\.val_file"):
        dm.split("val")
