"""MAD-v2 csv files as distributed, read as AutoAD-II reads them: negative starts clamped, empty
texts and ADs outside the movie's features dropped, each counted per rule and reported once per
file; malformed rows refused naming file and line; MAD's current and MAD-v1 feature file names."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tasks.common.runtime.data import DataValidationError
from tasks.mad_ad.data import (
    MAD_V1_VISUAL_FILE,
    MAD_VISUAL_FILE,
    QUIRK_RULES,
    MadADDataModule,
    feature_span_s,
    read_ad_csv,
)
from tasks.mad_ad.synthetic import QUIRK_COUNTS, write_synthetic_mad

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _datamodule(root: Path, tiny_llama: Path, visual: str = MAD_VISUAL_FILE, **kwargs):
    return MadADDataModule(
        visual,
        "openl3_audio_features_5hz.h5",
        kwargs.pop("annotations", "mad-v2-ad-named.csv"),
        str(tiny_llama),
        root=str(root),
        test_movies="test_movies.txt",
        num_workers=0,
        batch_size=4,
        **kwargs,
    )


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_feature_span_is_autoad_iis_whole_seconds():
    # AutoAD-II: avail = floor(min(movie_duration * 5, frames)); keep start, end <= avail // 5
    assert feature_span_s(612, 5.0) == 122  # 612 frames = 122.4 s -> 122
    assert feature_span_s(612, 5.0, duration=100.3) == 100  # floor(501.5) = 501 -> 100
    assert feature_span_s(612, 5.0, duration=500.0) == 122  # the features bound it
    assert feature_span_s(4, 5.0) == 0


def test_generated_csv_has_every_quirk(mad_dir):
    rows = _rows(mad_dir / "mad-v2-ad-named.csv")
    assert list(rows[0]) == ["movie", "start", "end", "text", "movie_duration"]
    assert sum(float(r["start"]) < 0 for r in rows) == QUIRK_COUNTS["negative_start"]
    assert sum(not r["text"].strip() for r in rows) == QUIRK_COUNTS["empty_text"]
    past = [r for r in rows if float(r["end"]) > float(r["movie_duration"]) or float(r["end"]) < 0]
    assert len(past) == QUIRK_COUNTS["outside_features"]


def test_read_csv_clamps_negative_starts_and_drops_empty_texts(mad_dir):
    path = mad_dir / "mad-v2-ad-named.csv"
    rows = _rows(path)
    moments, report = read_ad_csv(path)
    assert report.rows == len(rows)
    assert report.counts["negative_start"] == QUIRK_COUNTS["negative_start"]
    assert report.counts["empty_text"] == QUIRK_COUNTS["empty_text"]
    assert report.counts["outside_features"] == 0  # needs the features (load_ads)
    assert len(moments) == len(rows) - QUIRK_COUNTS["empty_text"] == report.kept
    assert min(m.start for m in moments) == 0.0 and all(m.text for m in moments)
    # the csv lines of the clamped rows are recorded (header = line 1)
    lines = report.examples["negative_start"]
    assert [float(rows[line - 2]["start"]) < 0 for line in lines] == [True] * len(lines)


def test_datamodule_reports_every_rule_once(mad_dir, tiny_llama, caplog):
    with caplog.at_level(logging.INFO, logger="tasks.mad_ad.data"):
        dm = _datamodule(mad_dir, tiny_llama)
    report = dm.data_report["annotations"]
    assert {rule: report["rules"][rule]["count"] for rule in QUIRK_RULES} == QUIRK_COUNTS
    assert report["rules"]["negative_start"]["rule"].startswith("start < 0 clamped to 0")
    rows = _rows(mad_dir / "mad-v2-ad-named.csv")
    # 3 + 2 + 3 rule hits on 7 rows, 5 dropped: the AD ending before 0 s is clamped, then dropped
    assert report["rows"] == len(rows) and report["kept"] == len(rows) - 5
    assert sum(len(v) for v in dm.splits.values()) == report["kept"]
    kept = [m for split in dm.splits.values() for m in split]
    assert all(m.start >= 0 and m.end <= m.duration for m in kept)
    messages = [r.getMessage() for r in caplog.records if "AutoAD-II" in r.getMessage()]
    assert len(messages) == 1 and caplog.records[0].levelno >= logging.INFO
    assert "negative_start 3" in messages[0] and "outside_features 3" in messages[0]
    # a dropped AD never reaches a batch; a clamped one does, with its window at the start
    batch = next(iter(dm.train_dataloader()))
    assert batch["visual"].shape[0] == 4


def test_clean_csv_reports_zero(tmp_path, tiny_llama, caplog):
    write_synthetic_mad(tmp_path, train_movies=1, test_movies=1, ads_per_movie=4, dim=8)
    with caplog.at_level(logging.INFO, logger="tasks.mad_ad.data"):
        dm = _datamodule(tmp_path, tiny_llama)
    counts = {k: v["count"] for k, v in dm.data_report["annotations"]["rules"].items()}
    assert counts == dict.fromkeys(QUIRK_RULES, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"start": "abc"}, r"start / end are not numbers \(start='abc'\)"),
        ({"end": "nan"}, r"not a finite time \(end='nan'\)"),
        ({"start": "9.0", "end": "3.0"}, "bad AD window start=9.0, end=3.0"),
        ("short", "2 of 4 columns missing"),
    ],
)
def test_malformed_rows_still_stop_naming_file_and_line(tmp_path, bad, message):
    path = tmp_path / "ad.csv"
    rows = [["movie", "start", "end", "text"], ["m1", "1.0", "3.0", "He runs."]]
    if bad == "short":
        rows.append(["m1", "4.0"])
    else:
        row = {"movie": "m1", "start": "4.0", "end": "6.0", "text": "He sits.", **bad}
        rows.append([row[k] for k in rows[0]])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataValidationError, match=rf"{path}, row 3: .*{message}"):
        read_ad_csv(path)


def test_csv_movie_without_features_is_refused(tmp_path, tiny_llama):
    write_synthetic_mad(tmp_path, train_movies=1, test_movies=1, ads_per_movie=4, dim=8)
    path = tmp_path / "mad-v2-ad-named.csv"
    path.write_text(path.read_text() + "no_such_movie,1.0,2.0,He runs.\n")
    with pytest.raises(DataValidationError, match="no features for movie 'no_such_movie'"):
        _datamodule(tmp_path, tiny_llama)


def test_official_b32_name_is_the_default_and_mad_v1_name_is_accepted(tmp_path, tiny_llama, caplog):
    from tasks.common.runtime.schemas import register_schemas

    register_schemas()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["task=mad_ad"])
    assert cfg.data.visual_features == MAD_VISUAL_FILE == "CLIP_B32_frames_features_5fps.h5"

    write_synthetic_mad(tmp_path, train_movies=1, test_movies=1, ads_per_movie=4, dim=8)
    assert (tmp_path / MAD_VISUAL_FILE).is_file()
    assert _datamodule(tmp_path, tiny_llama).visual.path == str(tmp_path / MAD_VISUAL_FILE)
    # a download with MAD-v1's name: the default name falls back to it, with a note
    shutil.move(tmp_path / MAD_VISUAL_FILE, tmp_path / MAD_V1_VISUAL_FILE)
    with caplog.at_level(logging.WARNING, logger="tasks.mad_ad.data"):
        dm = _datamodule(tmp_path, tiny_llama)
    assert dm.visual.path == str(tmp_path / MAD_V1_VISUAL_FILE)
    (note,) = dm.data_report["notes"]
    assert f"{MAD_VISUAL_FILE} not found, using {MAD_V1_VISUAL_FILE}" in note
    assert note in caplog.text
    # the MAD-v1 name given explicitly: read as given, with a note
    dm = _datamodule(tmp_path, tiny_llama, visual=MAD_V1_VISUAL_FILE)
    assert "MAD-v1's name" in dm.data_report["notes"][0]
