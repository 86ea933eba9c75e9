"""Bad data is found at set-up, before the first training step, with one error naming the file,
the row and the problem: every row's dimensions, NaN / Inf, empty and truncated files, malformed
JSON (with its line), undecodable images and videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.common.runtime.data import DataValidationError
from tests.helpers import compose_cfg, qvh_overrides, run_cfg

# ----------------------------------------------------------------------------- QVHighlights


@pytest.fixture
def qvh(qvh_features, tmp_path) -> Path:
    """A private copy of the synthetic QVHighlights data, to corrupt."""
    return Path(shutil.copytree(qvh_features, tmp_path / "qvh"))


def _rows(root: Path, split: str) -> list[dict]:
    path = root / "annotations" / f"highlight_{split}_release.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _datamodule(root: Path):
    from tasks.qvhighlights.data import QVHighlightsDataModule

    return QVHighlightsDataModule(
        annotation_dir=str(root / "annotations"),
        feature_dir=str(root),
        v_feat_dim=24,
        t_feat_dim=8,
        num_workers=0,
    )


def _rewrite_npz(path: Path, key: str, change) -> None:
    with np.load(path) as f:
        arr = f[key].copy()
    change(arr)
    np.savez(path, **{key: arr})


def test_nan_in_validation_features_stops_training_before_it_starts(qvh, tmp_path):
    vid = _rows(qvh, "val")[-1]["vid"]  # the last row: every row is checked, not row 0 only
    bad = qvh / "clip_features" / f"{vid}.npz"
    _rewrite_npz(bad, "features", lambda a: a.__setitem__((3, 1), np.nan))
    out = tmp_path / "run"
    cfg = compose_cfg([*qvh_overrides(qvh), "trainer.max_epochs=1"], out)
    with pytest.raises(DataValidationError) as info:
        run_cfg(cfg)
    assert str(info.value) == f"{bad}, row 3: features contain NaN values (first at row 3)"
    assert not (out / "checkpoints").exists()  # not one training step ran


def test_inf_in_text_features_names_the_file(qvh):
    qid = _rows(qvh, "train")[5]["qid"]
    bad = qvh / "clip_text_features" / f"qid{qid}.npz"
    _rewrite_npz(bad, "last_hidden_state", lambda a: a.__setitem__((0, 0), np.inf))
    with pytest.raises(DataValidationError, match=f"{bad}, row 0: features contain Inf"):
        _datamodule(qvh).setup("fit")


def test_wrong_dimension_in_a_later_row_names_the_row(qvh):
    rows = _rows(qvh, "val")
    vid = rows[-1]["vid"]
    path = qvh / "slowfast_features" / f"{vid}.npz"
    with np.load(path) as f:
        arr = f["features"]
    np.savez(path, features=np.concatenate([arr, arr[:, :2]], axis=1))  # 18 columns, not 16
    lines = [i + 1 for i, r in enumerate(rows) if r["vid"] == vid]
    ann = qvh / "annotations" / "highlight_val_release.jsonl"
    with pytest.raises(DataValidationError, match="video dim 26") as info:
        _datamodule(qvh).setup("fit")
    assert str(info.value).startswith(f"{ann}, row {lines[0]}: ")


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda b: b[: len(b) // 2], "not a readable npz file|truncated or corrupt npz"),
        (lambda b: b"", r"empty file \(0 bytes\)"),
        (lambda b: b"\x00garbage" * 10, "not a readable npz file"),
    ],
)
def test_truncated_or_empty_feature_file(qvh, corrupt, message):
    vid = _rows(qvh, "train")[2]["vid"]
    bad = qvh / "clip_features" / f"{vid}.npz"
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(DataValidationError, match=message) as info:
        _datamodule(qvh).setup("fit")
    assert str(info.value).startswith(str(bad))


def test_malformed_and_empty_annotation_files(qvh):
    ann = qvh / "annotations" / "highlight_val_release.jsonl"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")  # truncated line 3
    with pytest.raises(ValueError, match=f"{ann}, line 3: malformed JSON"):
        _datamodule(qvh).setup("fit")
    ann.write_text("")
    with pytest.raises(DataValidationError, match=r"empty file\)|no annotation rows"):
        _datamodule(qvh).setup("fit")
    ann.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=f"{ann}: not a UTF-8 text file"):
        _datamodule(qvh).setup("fit")


# ----------------------------------------------------------------------------- ImageNet


@pytest.fixture
def image_folder(tmp_path) -> Path:
    from scripts.make_imagenet_folder import make_imagenet_folder

    return make_imagenet_folder(
        tmp_path / "imagenet", num_classes=2, train_per_class=2, val_per_class=2, size=40
    )


def _imagenet(root: Path):
    from tasks.imagenet.data import ImageNetDataModule

    return ImageNetDataModule(str(root), num_classes=2, img_size=32, num_workers=0)


def test_truncated_and_undecodable_images(image_folder):
    _imagenet(image_folder).setup("fit")  # the intact folder passes
    val = sorted((image_folder / "val").rglob("*.JPEG"))
    val[0].write_bytes(val[0].read_bytes()[:-200])
    with pytest.raises(DataValidationError, match="truncated JPEG") as info:
        _imagenet(image_folder).setup("fit")
    assert str(info.value).startswith(str(val[0]))
    train = sorted((image_folder / "train").rglob("*.JPEG"))
    train[1].write_bytes(b"not an image at all")
    with pytest.raises(DataValidationError, match="not a decodable image") as info:
        _imagenet(image_folder).setup("fit")
    assert str(info.value).startswith(str(train[1]))


# ----------------------------------------------------------------------------- MSR-VTT


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory) -> Path:
    from scripts.make_msrvtt_videos import make_dataset

    return make_dataset(tmp_path_factory.mktemp("msrvtt") / "tiny")


def test_msrvtt_malformed_json_names_file_and_line(msrvtt_root, tmp_path):
    from tasks.msrvtt.data import load_annotations

    path = tmp_path / "train_val_videodatainfo.json"
    text = (msrvtt_root / "train_val_videodatainfo.json").read_text()
    path.write_text(text[: len(text) // 2])  # truncated download
    line = text[: len(text) // 2].count("\n") + 1
    with pytest.raises(DataValidationError, match=rf"{path}, row {line}: malformed JSON"):
        load_annotations([path])
    path.write_text("")
    with pytest.raises(DataValidationError, match="empty file"):
        load_annotations([path])
    info = json.loads(text)
    info["sentences"][4].pop("caption")
    path.write_text(json.dumps(info))
    with pytest.raises(DataValidationError, match=r"row 4: sentences\[4\] lacks video_id"):
        load_annotations([path])


def test_msrvtt_truncated_video_is_found_at_setup(msrvtt_root, tmp_path):
    from tasks.msrvtt.data import MSRVTTDataModule

    root = Path(shutil.copytree(msrvtt_root, tmp_path / "msrvtt"))
    video = root / "TrainValVideo" / "video5.mp4"  # a validation video
    video.write_bytes(video.read_bytes()[:300])
    dm = MSRVTTDataModule(str(root), tokenizer_path=str(root), num_frames=2, img_res=32)
    with pytest.raises(DataValidationError) as info:
        dm.setup("fit")
    assert str(info.value).startswith(f"{video}: ")


# ----------------------------------------------------------------------------- MAD


@pytest.fixture(scope="module")
def mad_files(tmp_path_factory) -> dict:
    from tasks.mad_ad.synthetic import write_synthetic_mad

    return write_synthetic_mad(
        tmp_path_factory.mktemp("mad"), train_movies=1, test_movies=1, ads_per_movie=4, dim=8
    )


def test_mad_nan_features_and_bad_csv_rows(mad_files, tmp_path):
    import h5py

    from tasks.mad_ad.data import FeatureStore, read_ad_csv

    h5 = Path(shutil.copy(mad_files["visual"], tmp_path / "visual.h5"))
    with h5py.File(h5, "r") as f:
        movies = list(f.keys())
    assert FeatureStore(h5).validate(movies) == 8
    with h5py.File(h5, "r+") as f:
        f[movies[-1]][7, 2] = np.nan
    with pytest.raises(DataValidationError, match=rf"{h5}, row 7: movie '{movies[-1]}': NaN"):
        FeatureStore(h5).validate(movies)
    with pytest.raises(DataValidationError, match="no features for movie 'absent'"):
        FeatureStore(mad_files["audio"]).validate(["absent"])
    h5.write_bytes(h5.read_bytes()[:500])
    with pytest.raises(DataValidationError, match="not a readable HDF5 file"):
        FeatureStore(h5).validate(movies)

    csv = tmp_path / "ad.csv"
    lines = Path(mad_files["named"]).read_text().splitlines()
    movie, _, end, text = lines[3].split(",", 3)
    csv.write_text("\n".join([*lines[:3], f"{movie},abc,{end},{text}", *lines[4:]]) + "\n")
    with pytest.raises(DataValidationError, match=rf"{csv}, row 4: start / end are not numbers"):
        read_ad_csv(csv)
    csv.write_text(lines[0] + "\n")
    with pytest.raises(DataValidationError, match="no AD rows"):
        read_ad_csv(csv)


def test_spurious_ast_error_of_threaded_npz_reads_is_retried(qvh, monkeypatch):
    """CPython 3.11 (gh-106905): numpy's header parser run from the preload threads can raise a
    spurious SystemError; it is not a bad file, and a second read succeeds."""
    import tasks.qvhighlights.data as qdata

    vid = _rows(qvh, "train")[0]["vid"]
    path = qvh / "clip_features" / f"{vid}.npz"
    calls, read = [], qdata._read_npz

    def flaky(p, key):
        calls.append(p)
        if len(calls) < 3:
            raise SystemError("AST constructor recursion depth mismatch (before=36, after=33)")
        return read(p, key)

    monkeypatch.setattr(qdata, "_read_npz", flaky)
    arr = qdata.load_npz_array(path, "features", "data.feature_dir")
    assert len(calls) == 3 and arr.shape == (arr.shape[0], 8)


def test_feature_family_cut_short_names_the_files_and_lengths(qvh):
    """One feature type cut to 10 of the video's clips (an extraction that stopped early) used
    to train silently with targets past the end of the features."""
    rows = _rows(qvh, "train")
    vid = rows[3]["vid"]
    short = qvh / "clip_features" / f"{vid}.npz"
    with np.load(short) as f:
        full = f["features"]
    np.savez(short, features=full[:10])
    with pytest.raises(DataValidationError) as info:
        _datamodule(qvh).setup("fit")
    message = str(info.value)
    ann = qvh / "annotations" / "highlight_train_release.jsonl"
    assert message.startswith(f"{ann}, row {[r['vid'] for r in rows].index(vid) + 1}: vid {vid}")
    assert f"{short}: 10 clips" in message and "data.clip_tolerance=2" in message
    assert f"{qvh / 'slowfast_features' / vid}.npz: " in message


def test_features_shorter_than_the_duration_are_refused(qvh):
    rows = _rows(qvh, "val")
    vid = rows[0]["vid"]
    for family in ("slowfast_features", "clip_features"):
        path = qvh / family / f"{vid}.npz"
        with np.load(path) as f:
            full = f["features"]
        np.savez(path, features=full[:20])  # both types agree, but cover 40 s of the video
    with pytest.raises(DataValidationError, match=r"have 20 clips of 2 s, but the video lasts"):
        _datamodule(qvh).setup("fit")


def test_one_clip_of_difference_between_families_is_the_stated_tolerance(qvh):
    """SlowFast and CLIP files of one video may differ by a clip (rounding of the last partial
    clip); within data.clip_tolerance the types are cut to the shortest, as in QD-DETR."""
    vid = _rows(qvh, "train")[1]["vid"]
    path = qvh / "clip_features" / f"{vid}.npz"
    with np.load(path) as f:
        full = f["features"]
    np.savez(path, features=full[:-1])
    dm = _datamodule(qvh)
    dm.setup("fit")
    lengths = dm.store.lengths[vid]
    assert 1 <= max(lengths) - min(lengths) <= 2  # accepted, not refused
    assert len(dm.store.video(vid)) == min(lengths)


def test_window_past_the_duration_is_refused(qvh):
    ann = qvh / "annotations" / "highlight_val_release.jsonl"
    rows = _rows(qvh, "val")
    rows[2]["relevant_windows"] = [[10, rows[2]["duration"] + 4]]
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataValidationError) as info:
        _datamodule(qvh).setup("fit")
    assert str(info.value).startswith(f"{ann}, row 3: qid {rows[2]['qid']}")
    assert "is not inside the video [0, " in str(info.value)
