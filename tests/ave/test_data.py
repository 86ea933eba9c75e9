"""The AVE reader against the official one (MA-AVT ``datasets/ave.py`` ``AVE.__getitem__``,
written out below with pandas / glob / torchvision as it is there), the generated data's
layout, and the set-up checks: every bad file stops with its name, fixes are counted."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.io import read_image
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize

from tasks.ave.audio import NORM_MEAN, NORM_STD
from tasks.ave.data import (
    AVE_CATEGORIES,
    BACKGROUND,
    AVEDataModule,
    AVEDataset,
    check_ave,
    expected_labels,
    read_annotations,
    read_wav,
)
from tasks.common.runtime.data import DataValidationError
from tests.ave.test_audio import reference_kaldi_fbank


def official_file_name(data_dir: Path, mode: str, idx: int) -> str:
    """``self.raw_gt.iloc[self.lis[idx]][1]`` of the official reader."""
    with h5py.File(data_dir / f"{mode}_order.h5", "r") as hf:
        order = hf["order"][:]
    raw_gt = pd.read_csv(data_dir / "Annotations.txt", sep="&", header=None)
    return raw_gt.iloc[order[idx]][1]


def official_item(data_dir: Path, mode: str, idx: int) -> dict[str, torch.Tensor]:
    """``AVE(opt, mode)[idx]`` of the official reader (vis_encoder_type vit), the fbank by
    Kaldi's algorithm (torchaudio is not installed here; test_audio.py ties the two)."""
    with h5py.File(data_dir / "labels.h5", "r") as hf:
        labels = hf["avadataset"][:]
    with h5py.File(data_dir / f"{mode}_order.h5", "r") as hf:
        order = hf["order"][:]
    raw_gt = pd.read_csv(data_dir / "Annotations.txt", sep="&", header=None)
    real_idx = order[idx]
    file_name = raw_gt.iloc[real_idx][1]
    audio_folder = data_dir / "AVE_Dataset" / "raw_audio"
    video_folder = data_dir / "AVE_Dataset" / "video_frames"

    waveform = torch.from_numpy(read_wav(audio_folder / f"{file_name}.wav")[0])
    waveform = waveform - waveform.mean()
    total_audio = []
    for audio_sec in range(10):
        wave = waveform
        if wave.shape[1] > 16000 * 1.1:
            sample_indx = np.linspace(0, wave.shape[1] - 16000 * 1.1, num=10, dtype=int)
            wave = wave[:, sample_indx[audio_sec] : sample_indx[audio_sec] + 16000]
        fbank = reference_kaldi_fbank(wave[0].double()).float()
        fbank = (fbank - NORM_MEAN) / (NORM_STD * 2)
        p = 224 - fbank.shape[0]
        fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank) if p > 0 else fbank[:224]
        total_audio.append(fbank)

    normalize = Compose(
        [
            Resize([224, 224], interpolation=InterpolationMode.BICUBIC),
            Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    total_num_frames = len(glob.glob(str(video_folder / file_name) + "/*.jpg"))
    sample_indx = np.linspace(1, total_num_frames, num=10, dtype=int)
    total_img = [
        normalize(read_image(str(video_folder / file_name / f"{i:06d}.jpg")) / 255)
        for i in sample_indx
    ]
    return {
        "audio_spec": torch.stack(total_audio),
        "image": torch.stack(total_img),
        "target": torch.from_numpy(labels[real_idx]),
        "file_name": file_name,
    }


def test_layout_of_the_generated_data(tiny_ave: Path, tiny_ave_no_header: Path) -> None:
    lines = (tiny_ave / "Annotations.txt").read_text().splitlines()
    assert lines[0] == "Category&VideoID&Quality&StartTime&EndTime"
    assert (tiny_ave_no_header / "Annotations.txt").read_text().splitlines() == lines[1:]
    with h5py.File(tiny_ave / "labels.h5") as f:
        assert list(f) == ["avadataset"] and f["avadataset"].shape == (16, 10, 29)
    sizes = []
    for split in ("train", "val", "test"):
        with h5py.File(tiny_ave / f"{split}_order.h5") as f:
            assert list(f) == ["order"] and f["order"].dtype == np.int64
            sizes.append(len(f["order"]))
    assert sizes == [8, 4, 4]
    rows, header = read_annotations(tiny_ave / "Annotations.txt")
    assert header and len(rows) == 16 and {r.category for r in rows} == set(AVE_CATEGORIES[:4])
    first = rows[0].video_id
    assert len(first) == 11
    assert (tiny_ave / "AVE_Dataset" / "raw_audio" / f"{first}.wav").is_file()
    assert (tiny_ave / "AVE_Dataset" / "video_frames" / first / "000001.jpg").is_file()


def test_category_order_is_the_official_one() -> None:
    """Class c of labels.h5 = the c-th category in order of first appearance in the official
    Annotations.txt (LAVISH's copy: Church bell, Male speech, Bark, ...); 28 = background."""
    assert len(AVE_CATEGORIES) == 28 and BACKGROUND == 28
    assert AVE_CATEGORIES[:3] == ("Church bell", "Male speech, man speaking", "Bark")
    assert AVE_CATEGORIES[-1] == "Mandolin" and AVE_CATEGORIES[19] == "Baby cry, infant cry"


@pytest.mark.parametrize("split,idx", [("train", 0), ("val", 3), ("test", 1)])
def test_items_equal_the_official_reader(tiny_ave_no_header: Path, split: str, idx: int) -> None:
    """Header-less Annotations.txt (LAVISH's copy, which the official reader assumes)."""
    index = check_ave(tiny_ave_no_header)
    ours = AVEDataset(index, split)[idx]
    ref = official_item(tiny_ave_no_header, split, idx)
    assert index.annotations[int(ours["index"])].video_id == ref["file_name"]
    assert ours["audio"].shape == (10, 224, 224) and ours["frames"].shape == (10, 3, 224, 224)
    torch.testing.assert_close(ours["audio"], ref["audio_spec"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["frames"], ref["image"])
    torch.testing.assert_close(ours["labels"], ref["target"])


def test_header_line_is_skipped_where_the_official_reader_is_one_row_off(tiny_ave: Path) -> None:
    """The AVE zip's Annotations.txt: pandas header=None makes the header row 0, so the
    official reader pairs labels.h5 row r with the video of annotation row r - 1."""
    index = check_ave(tiny_ave)
    assert index.report.header_line
    item = AVEDataset(index, "train")[0]
    row = int(item["index"])
    official = official_file_name(tiny_ave, "train", 0)
    assert official != index.annotations[row].video_id
    assert official == (index.annotations[row - 1].video_id if row else "VideoID")
    assert np.array_equal(
        item["labels"].argmax(-1).numpy(), expected_labels(index.annotations[row])
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_annotations_offset_from_labels_stop(tiny_ave: Path, tmp_path: Path) -> None:
    root = _copy(tiny_ave, tmp_path / "ave")
    lines = (root / "Annotations.txt").read_text().splitlines()
    shifted = [lines[0], *lines[2:], lines[1]]  # rows rotated by one against labels.h5
    (root / "Annotations.txt").write_text("\n".join(shifted) + "\n")
    with pytest.raises(DataValidationError, match="not row-aligned") as err:
        check_ave(root)
    assert "Annotations.txt" in str(err.value)


def test_one_disagreeing_label_row_is_counted(tiny_ave: Path, tmp_path: Path) -> None:
    root = _copy(tiny_ave, tmp_path / "ave")
    lines = (root / "Annotations.txt").read_text().splitlines()
    cat, vid, q, start, end = lines[3].split("&")
    lines[3] = "&".join([cat, vid, q, str(int(start)), str(int(end) - 1)])
    (root / "Annotations.txt").write_text("\n".join(lines) + "\n")
    assert check_ave(root).report.label_rows_disagreeing == [2]


def test_missing_video_is_named_or_dropped(tiny_ave: Path, tmp_path: Path) -> None:
    root = _copy(tiny_ave, tmp_path / "ave")
    index = check_ave(root)
    row = int(index.splits["val"][0])
    video = index.annotations[row].video_id
    (root / "AVE_Dataset" / "raw_audio" / f"{video}.wav").unlink()
    with pytest.raises(DataValidationError, match=f"{video}.wav") as err:
        check_ave(root)
    assert "on_missing=drop" in str(err.value)
    dropped = check_ave(root, on_missing="drop")
    assert dropped.report.dropped_missing == [video] and dropped.report.videos["val"] == 3


@pytest.mark.parametrize(
    "damage,match",
    [
        ("labels_key", "no 'avadataset' dataset"),
        ("labels_shape", r"shape \(16, 10, 28\), expected \(N, 10, 29\)"),
        ("order_range", r"order\[0\] = 16 is outside the 16 rows"),
        ("wav", "not a decodable wav"),
        ("jpg", "truncated JPEG"),
        ("frames_gap", "missing frame"),
        ("category", "unknown category"),
    ],
)
def test_bad_files_stop_with_their_name(
    tiny_ave: Path, tmp_path: Path, damage: str, match: str
) -> None:
    root = _copy(tiny_ave, tmp_path / "ave")
    index = check_ave(root)
    video = index.annotations[int(index.splits["train"][0])].video_id
    frames = root / "AVE_Dataset" / "video_frames" / video
    expected_file = {
        "labels_key": "labels.h5",
        "labels_shape": "labels.h5",
        "order_range": "test_order.h5",
        "wav": f"{video}.wav",
        "jpg": "000001.jpg",
        "frames_gap": f"{video}/",
        "category": "Annotations.txt",
    }[damage]
    if damage == "labels_key":
        with h5py.File(root / "labels.h5", "w") as f:
            f.create_dataset("labels", data=index.labels)
    elif damage == "labels_shape":
        with h5py.File(root / "labels.h5", "w") as f:
            f.create_dataset("avadataset", data=index.labels[:, :, :28])
    elif damage == "order_range":
        with h5py.File(root / "test_order.h5", "w") as f:
            f.create_dataset("order", data=np.array([16, 0], dtype=np.int64))
    elif damage == "wav":
        (root / "AVE_Dataset" / "raw_audio" / f"{video}.wav").write_bytes(b"RIFF0000garbage")
    elif damage == "jpg":
        data = (frames / "000001.jpg").read_bytes()
        (frames / "000001.jpg").write_bytes(data[: len(data) // 2])
    elif damage == "frames_gap":  # frames renumbered from 0: the official %06d from 1 misses
        last = sorted(frames.glob("*.jpg"))[-1]
        last.rename(frames / "000000.jpg")
    elif damage == "category":
        text = (root / "Annotations.txt").read_text().replace("Church bell", "Church bells", 1)
        (root / "Annotations.txt").write_text(text)
    with pytest.raises(DataValidationError, match=match) as err:
        check_ave(root)
    assert expected_file in str(err.value)


def test_grey_frames_are_read_as_rgb_and_counted(tiny_ave: Path, tmp_path: Path) -> None:
    root = _copy(tiny_ave, tmp_path / "ave")
    index = check_ave(root)
    video = index.annotations[int(index.splits["test"][0])].video_id
    path = root / "AVE_Dataset" / "video_frames" / video / "000001.jpg"
    Image.open(path).convert("L").save(path)
    index = check_ave(root)
    assert index.report.grey_frames == 1
    frames = AVEDataset(index, "test")[0]["frames"]
    assert frames.shape == (10, 3, 224, 224)
    torch.testing.assert_close(frames[0, 0] * 0.229 + 0.485, frames[0, 1] * 0.224 + 0.456)


def test_train_order_depends_on_seed_and_epoch_only(tiny_ave: Path) -> None:
    """The training order is a function of (seed, epoch): a resumed run replays it."""
    dm = AVEDataModule(str(tiny_ave), batch_size=4, num_workers=0, check_media=False)
    dm.setup()

    def order(epoch: int) -> list[int]:
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1) == order(1) and order(0) != order(1)
    assert sorted(order(0)) == list(range(8))
    assert dm.report["videos"] == {"train": 8, "val": 4, "test": 4}
