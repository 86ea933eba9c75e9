"""Finished runs are never overwritten, results files are written atomically and read
defensively, and the small start-up checks (max_epochs=0, precision, mask depth vs memory)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from hydra.utils import instantiate

import tasks.common.runtime.pipeline as pipeline
from tasks.common.runtime.pipeline import RunExistsError, run_job, train
from tasks.common.runtime.results import load_results, write_json
from tests.helpers import compose_cfg, run_cfg
from tests.robustness.conftest import DEMO


def _copy_run(demo_run, dest):
    shutil.copytree(demo_run[0], dest)
    return dest


def _snapshot(run) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("resume", [[], ["ckpt_path=last"]])
def test_rerun_into_a_finished_run_stops_and_writes_nothing(demo_run, tmp_path, resume):
    """A re-run (or ``ckpt_path=last``, which the refusal used to advise) into a finished run is
    refused; nothing in the directory changes, not even a failure record."""
    run = _copy_run(demo_run, tmp_path / "run")
    before = _snapshot(run)
    cfg = compose_cfg([*DEMO, "trainer.max_epochs=2", *resume], run)
    with pytest.raises(RunExistsError, match="holds a finished run .*has nothing to resume") as e:
        run_cfg(cfg, fn=lambda c: run_job(c, train))
    assert f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}" in str(e.value)  # train further
    assert _snapshot(run) == before


def test_failure_record_does_not_replace_finished_results(demo_run, tmp_path):
    run = _copy_run(demo_run, tmp_path / "run")
    before = (run / "results.json").read_bytes()
    path = pipeline.write_failure_record({"status": "failed", "error": "X"}, run)
    assert path == run / "results.failed.json"
    assert (run / "results.json").read_bytes() == before


def test_interrupted_run_is_not_restarted_from_scratch(demo_run, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(demo_run[0] / "checkpoints" / "last.ckpt", run / "checkpoints")
    with pytest.raises(RunExistsError, match="interrupted run .*ckpt_path=last"):
        run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=2"], run))


def test_finished_run_trains_further_from_its_checkpoint_in_a_new_directory(demo_run, tmp_path):
    """What the refusal advises: a new directory started from the finished run's last.ckpt
    continues at its epoch (2 -> 3) and leaves the finished run as it was."""
    run = _copy_run(demo_run, tmp_path / "run")
    before = _snapshot(run)
    last = run / "checkpoints" / "last.ckpt"
    record = run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path))
    assert record["status"] == "ok" and record["epochs"] == 3
    assert record["resumed_from"] == str(last)
    assert _snapshot(run) == before


def test_sweep_rerun_skips_finished_jobs(demo_run, tmp_path, monkeypatch):
    run = _copy_run(demo_run, tmp_path / "run")
    before = (run / "results.json").read_bytes()
    monkeypatch.setattr(pipeline, "is_multirun", lambda: True)
    monkeypatch.setattr(pipeline, "build", lambda *a: pytest.fail("a finished job was re-run"))
    for resume in ([], ["ckpt_path=last"]):  # resuming a sweep skips its finished jobs too
        record = run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=2", *resume], run))
        assert record["skipped"] and record["metrics"] == demo_run[1]["metrics"]
        assert (run / "results.json").read_bytes() == before
    # the same directory with another config is not a finished job of this sweep
    with pytest.raises(RunExistsError, match="with another config"):
        run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=3"], run))


def test_results_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(path, {"status": "ok", "metrics": {"a": 1.0}})

    def killed(*args):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"status": "failed"})
    assert json.loads(path.read_text())["status"] == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_load_results_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps({"status": "ok", "task": "demo"}))
    for name, text in (("empty", ""), ("truncated", '{"status": "o'), ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        records = load_results([tmp_path])
    assert [r["task"] for r in records] == ["demo"]
    for name in ("empty", "truncated", "list"):
        assert str(tmp_path / name / "results.json") in caplog.text
    from tasks.common.reporting.tables import load_records  # what make_tables reads through

    assert [r["task"] for r in load_records([tmp_path])] == ["demo"]


def test_max_epochs_zero_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="trainer.max_epochs=0 trains nothing"):
        run_cfg(compose_cfg([*DEMO, "trainer.max_epochs=0"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_precision_actually_used_is_recorded(tmp_path):
    record = run_cfg(
        compose_cfg(
            [*DEMO, "trainer.max_epochs=1", "trainer.precision=16-mixed", "data.num_train=16"],
            tmp_path,
        )
    )
    assert record["precision_requested"] == "16-mixed"
    assert record["precision"] == "bf16-mixed"  # Lightning's CPU fallback, not what was asked
    assert json.loads((tmp_path / "results.json").read_text())["precision"] == "bf16-mixed"


def test_mask_depth_checked_against_memory(tmp_path, monkeypatch, caplog):
    cfg = compose_cfg([*DEMO, "mask.depth=100"], tmp_path)
    mask, attention = pipeline.core_configs(cfg)
    net = instantiate(cfg.model, mask=mask, attention=attention)
    need, params, deepest = pipeline.memory_estimate(net, batch_size=16)
    # 2 generators of 99 hidden 32x32 layers + a 32 -> 49 output (24 + 24 tokens and a CLS)
    width, n_max = 32, 49
    assert params == 2 * (99 * (width * width + width) + width * n_max + n_max) and deepest == 100
    acts = 2 * 16 * n_max * (2 * width * 99 + n_max)
    assert need == 16 * params + 4 * acts
    with caplog.at_level(logging.WARNING):
        pipeline.check_mask_memory(cfg, net)
    assert "mask.depth=100 is beyond the paper's depths" in caplog.text
    monkeypatch.setattr(pipeline, "available_memory", lambda cfg: (need, "RAM"))
    with pytest.raises(MemoryError, match=r"mask.depth=100: the mask generators need about"):
        pipeline.check_mask_memory(cfg, net)


def test_too_deep_generator_stops_before_the_model_is_built(tmp_path, monkeypatch):
    """mask.depth=1000: the estimate comes from a model on the meta device (nothing allocated)."""
    monkeypatch.setattr(pipeline, "available_memory", lambda cfg: (2**30, "RAM"))
    monkeypatch.setattr(pipeline, "build", lambda *a: pytest.fail("the model was built"))
    cfg = compose_cfg([*DEMO, "mask.depth=1000", "model.dim=512"], tmp_path)
    # 2 generators of 999 hidden 512 x 512 layers and a 512 -> 49 output: 524,836,962
    # parameters x 16 bytes + activations 4 x 2 x 16 x 49 x (2 x 512 x 999 + 49) = 13.8 GiB
    with pytest.raises(MemoryError) as info:
        run_cfg(cfg)
    assert str(info.value).startswith("mask.depth=1000: the mask generators need about 13.8 GiB")
    assert "524,836,962 parameters" in str(info.value) and "1.0 GiB of RAM" in str(info.value)


def test_prediction_epoch_is_the_evaluated_checkpoints(demo_run):
    import lightning as L
    from lightning.pytorch.trainer.states import TrainerFn

    from tasks.common.runtime.module import TaskModule

    module = TaskModule(torch.nn.Linear(2, 2), optimizer=torch.optim.SGD)
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False)
    module.trainer = trainer
    trainer.fit_loop.epoch_progress.current.completed = 10  # after fit: current_epoch == 10
    best = torch.load(demo_run[1]["best"]["ckpt"], map_location="cpu", weights_only=True)
    module.on_load_checkpoint(best)
    trainer.state.fn = TrainerFn.VALIDATING
    assert trainer.current_epoch == 10 and module.weights_epoch == best["epoch"]
    trainer.state.fn = TrainerFn.FITTING
    assert module.weights_epoch == 10


@pytest.mark.slow
def test_resuming_a_sweep_skips_finished_jobs(tmp_path):
    """The same multirun command into the same sweep directory with ckpt_path=last: the finished
    job is left as it is, the unfinished one (results lost) runs again."""
    from tests.helpers import run_script

    sweep = tmp_path / "sweep"
    args = [
        "train.py",
        "-m",
        *DEMO,
        "mask=none,multilayer",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_script(args, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    done, lost = sweep / "0_none", sweep / "1_multilayer"
    before = (done / "results.json").read_bytes()
    (lost / "results.json").unlink()  # as if the job had been killed before it finished
    (lost / "checkpoints" / "last.ckpt").unlink()
    again = run_script([*args, "ckpt_path=last"], timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert (done / "results.json").read_bytes() == before
    assert json.loads((lost / "results.json").read_text())["status"] == "ok"
    assert "finished before (results.json status ok): skipped" in again.stdout + again.stderr
