"""Runs that must not count as results: a diverged run (NaN / inf loss) ends as
``status: diverged`` at its step, an empty training split stops at start-up, a full disk ends
with a failure record and no partial checkpoint, and make_tables never averages any of them."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import tempfile

import pytest

import tasks.common.runtime.checkpoints as checkpoints
import tasks.common.runtime.pipeline as pipeline
from tasks.common.reporting.tables import load_records, make_tables
from tasks.common.runtime.callbacks import RunDiverged
from tasks.common.runtime.pipeline import run_job, train
from tasks.common.runtime.results import load_results, write_json
from tests.helpers import compose_cfg, run_cfg
from tests.robustness.conftest import DEMO

ONE_EPOCH = [*DEMO, "trainer.max_epochs=2", "data.num_train=32", "data.num_val=16"]


def _job(cfg):
    return run_cfg(cfg, fn=lambda c: run_job(c, train))


def test_huge_learning_rate_ends_as_diverged_at_its_step(tmp_path):
    """module.optimizer.lr=1e12 used to end ``ok`` with a NaN loss."""
    cfg = compose_cfg([*ONE_EPOCH, "module.optimizer.lr=1e12"], tmp_path)
    with pytest.raises(RunDiverged, match=r"diverged at step \d+: .*loss = nan") as info:
        _job(cfg)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "diverged"
    diverged = record["diverged"]
    assert diverged["step"] == info.value.step and diverged["step"] >= 1
    assert "loss" in diverged["quantity"] and diverged["value"] in ("nan", "inf", "-inf")
    # the first step's loss was finite: it is among the last finite values
    last = diverged["last_finite"]
    assert last and all(math.isfinite(v) for v in last.values())
    assert "train/step_loss" in diverged["last_finite"]


def test_diverged_run_never_replaces_a_finished_runs_results(demo_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    before = (run / "results.json").read_bytes()
    path = pipeline.write_failure_record({"status": "diverged", "error": "x"}, run)
    assert path.name == "results.failed.json" and (run / "results.json").read_bytes() == before


def test_make_tables_skips_and_lists_diverged_runs(tmp_path):
    """A diverged seed is not averaged with the healthy ones; the table says it was left out."""
    base = {"kind": "train", "task": "demo", "mask": "multilayer", "experiment": "demo_seeds"}
    base |= {"table": "demo", "row": "multilayer"}
    for seed, status, acc in ((0, "ok", 0.8), (1, "ok", 0.6), (2, "diverged", float("nan"))):
        write_json(
            tmp_path / f"s{seed}" / "results.json",
            {**base, "seed": seed, "status": status, "metrics": {"val/acc": acc}},
        )
    tables = make_tables(load_records([tmp_path]))
    text = "\n".join(t.markdown for t in tables)
    assert "diverged runs left out: 1 (s2)" in text
    assert "| multilayer | 0.7000 ± 0.1414 (2) |" in text  # mean of the two ok seeds only
    assert "nan" not in text.lower().replace("n/a", "")


def test_zero_training_items_is_a_startup_error(tmp_path):
    """data.num_train=0 used to end ``ok`` with an untrained model's metrics."""
    with pytest.raises(ValueError, match="the training split has no items"):
        run_cfg(compose_cfg([*DEMO, "data.num_train=0"], tmp_path))
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def _disk_full_after(limit: int):
    def write(checkpoint, file) -> None:
        file.write(b"\0" * limit)  # part of the file reached the disk, then it was full
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_disk_full_leaves_no_partial_checkpoint_and_a_failure_record(tmp_path, monkeypatch):
    """Used to leave a 0-byte best-epoch001.ckpt and no results file, and temp files in /tmp."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # anything written to "/tmp"
    monkeypatch.setattr(checkpoints, "write_checkpoint_file", _disk_full_after(1000))
    run = tmp_path / "run"
    with pytest.raises(OSError, match="no space left on the device writing checkpoint") as info:
        _job(compose_cfg(ONE_EPOCH, run))
    assert info.value.errno == errno.ENOSPC
    assert not [p.name for p in (run / "checkpoints").iterdir()]  # no partial, no temporary
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"] + str(
        record.get("traceback")
    )
    assert not list(scratch.iterdir())


def test_disk_full_for_the_failure_record_too_gives_a_clear_message(
    tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.setattr(checkpoints, "write_checkpoint_file", _disk_full_after(10))

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "write_json", full)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError):
        _job(compose_cfg(ONE_EPOCH, tmp_path))
    assert "could not write the failure record" in caplog.text
    assert "the disk is full, free space on it" in caplog.text
    assert "failure record could not be written" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_run_files_follow_the_users_umask(tmp_path):
    """results.json and the checkpoints used to be 0600 (mkstemp's mode)."""
    previous = os.umask(0o022)
    try:
        run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=1", "data.num_train=16"], tmp_path))
    finally:
        os.umask(previous)
    files = [tmp_path / "results.json", *(tmp_path / "checkpoints").glob("*.ckpt")]
    assert len(files) >= 3  # results, best, last
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_results_with_wrong_field_types_are_skipped_naming_the_file(tmp_path, caplog):
    """make_tables used to crash with a traceback naming no file."""
    good = {"status": "ok", "task": "demo", "mask": "none", "metrics": {"val/acc": 0.5}}
    write_json(tmp_path / "good" / "results.json", good)
    write_json(tmp_path / "bad" / "results.json", {**good, "metrics": "0.9"})
    write_json(tmp_path / "worse" / "results.json", {**good, "metrics": {"val/acc": "high"}})
    with caplog.at_level(logging.WARNING):
        records = load_results([tmp_path])
    assert [r["run_dir"] for r in records] == [str(tmp_path / "good")]
    assert f'{tmp_path / "bad" / "results.json"}: metrics is "0.9", not object' in caplog.text
    assert 'metrics.val/acc is "high", not a number' in caplog.text
    make_tables(load_records([tmp_path]))  # no crash


def test_checkpoint_is_written_beside_its_final_name(tmp_path, monkeypatch):
    """A kill -9 during a checkpoint write used to leave ~1 MB temporary files in /tmp
    (fsspec's transaction); the temporary file is now in the checkpoint's own directory, under a
    hidden name, and becomes the final file by an atomic rename."""
    import tasks.common.runtime.results as results

    seen = []
    real = results.atomic_temp

    def spy(path):
        fd, tmp = real(path)
        seen.append(tmp)
        return fd, tmp

    monkeypatch.setattr(results, "atomic_temp", spy)
    run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=1", "data.num_train=16"], tmp_path))
    folder = tmp_path / "checkpoints"
    ckpts = [name for name in seen if ".ckpt." in name]
    assert ckpts and all(os.path.dirname(name) == str(folder) for name in ckpts)
    assert all(os.path.basename(name).startswith(".") and name.endswith(".tmp") for name in ckpts)
    assert sorted(p.name for p in folder.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]


def test_a_non_finite_monitored_metric_is_a_divergence_other_metrics_are_not():
    from types import SimpleNamespace

    import torch

    from tasks.common.runtime.callbacks import StopOnDivergence

    guard = StopOnDivergence(monitor="val/acc")
    trainer = SimpleNamespace(global_step=7, sanity_checking=False, callback_metrics={})
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 0)
    trainer.callback_metrics = {"val/acc": torch.tensor(0.25), "val/cider": torch.tensor(math.nan)}
    guard.on_validation_end(trainer, None)  # an undefined other metric is not a divergence
    trainer.callback_metrics = {"val/acc": torch.tensor(math.inf)}
    with pytest.raises(RunDiverged, match="diverged at step 7: val/acc = inf") as info:
        guard.on_validation_end(trainer, None)
    assert info.value.last_finite == {"train/step_loss": 0.5, "val/acc": 0.25}
    trainer.sanity_checking = True  # the sanity check's metrics are not the run's
    StopOnDivergence(monitor="val/acc").on_validation_end(trainer, None)
