"""No code from a checkpoint: every entry point that reads a user-supplied checkpoint or weights
file (eval.py, train.py ckpt_path=<file> / last, Lightning's own load inside fit, the plots,
scripts/plot_mask_stats.py, stamp.load, the ImageNet pretrained weights) refuses a crafted
pickle whose object runs a shell command, with a message that says why, and the command never
runs (its marker file is never written)."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import stamp
from tasks.common.runtime.checkpoints import (
    SafeCheckpointIO,
    UnsafeCheckpointError,
    read_checkpoint,
    safe_load,
)
from tasks.common.runtime.pipeline import evaluate, run_job, train
from tests.helpers import ROOT, compose_cfg, run_cfg
from tests.robustness.conftest import DEMO

EVAL = [o for o in DEMO if not o.startswith("callbacks")]
REFUSED = r"refused: it holds a pickled Python object \(posix\.system\).*could run code"


class ShellCommand:
    """Unpickling this object runs ``touch <marker>`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the crafted checkpoint ran its command"


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file with every key of a Lightning checkpoint, plus the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": "2.6.0",
            "epoch": 0,
            "global_step": 0,
            "payload": ShellCommand(marker),
        },
        path,
    )
    return path


def test_the_crafted_file_does_run_code_when_loaded_unsafely(tmp_path):
    """The test's payload is real: an unrestricted unpickle writes the marker."""
    file = crafted_checkpoint(tmp_path / "evil.ckpt", tmp_path / "ran")
    torch.load(file, weights_only=False)
    assert (tmp_path / "ran").exists()


def test_read_checkpoint_refuses_a_crafted_checkpoint_and_a_plain_pickle(tmp_path, marker):
    file = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED) as info:
        read_checkpoint(file)
    assert str(file) in str(info.value)
    plain = tmp_path / "evil.pkl"  # not torch.save's format: the fallback used to unpickle it
    plain.write_bytes(pickle.dumps({"state_dict": ShellCommand(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=r"refused: .*pickle opcode"):
        read_checkpoint(plain)


def test_eval_refuses_a_crafted_checkpoint(tmp_path, marker):
    file = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    run = tmp_path / "eval"
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        run_cfg(compose_cfg([*EVAL, f"ckpt_path={file}"], run, config_name="eval"), evaluate)
    assert not (run / "results.json").exists()


@pytest.mark.parametrize("how", ["file", "last"])
def test_train_refuses_a_crafted_checkpoint(tmp_path, marker, how):
    run = tmp_path / "run"
    file = crafted_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    ckpt = "ckpt_path=last" if how == "last" else f"ckpt_path={file}"
    cfg = compose_cfg([*DEMO, "trainer.max_epochs=1", ckpt], run)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        run_cfg(cfg, fn=lambda c: run_job(c, train))


def test_lightnings_own_load_inside_fit_is_safe(demo_run, tmp_path, marker, monkeypatch):
    """Even with the pre-check skipped, Trainer.fit(ckpt_path=...) reads through
    SafeCheckpointIO (weights only), never Lightning's unrestricted load."""
    import tasks.common.runtime.pipeline as pipeline

    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        SafeCheckpointIO().load_checkpoint(crafted_checkpoint(tmp_path / "a.ckpt", marker))
    monkeypatch.setattr(pipeline, "check_checkpoint_config", lambda *a, **k: {"checked": False})
    file = crafted_checkpoint(tmp_path / "b.ckpt", marker)
    cfg = compose_cfg([*DEMO, "trainer.max_epochs=1", f"ckpt_path={file}"], tmp_path / "run")
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        run_cfg(cfg)
    # and a real checkpoint still resumes through it
    checkpoint = SafeCheckpointIO().load_checkpoint(demo_run[0] / "checkpoints" / "last.ckpt")
    assert checkpoint["epoch"] == 1 and checkpoint["state_dict"]


def _run_with_crafted_best(demo_run, tmp_path, marker) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(demo_run[0], run)
    evil = crafted_checkpoint(run / "checkpoints" / "evil.ckpt", marker)
    return run, evil


def test_plots_refuse_a_crafted_checkpoint(demo_run, tmp_path, marker):
    from tasks.common.reporting.plots import load_run

    run, evil = _run_with_crafted_best(demo_run, tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        load_run(run, str(evil))


def test_plot_mask_stats_script_refuses_a_crafted_checkpoint(demo_run, tmp_path, marker):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pms", ROOT / "scripts" / "plot_mask_stats.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, evil = _run_with_crafted_best(demo_run, tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        script.main([str(evil), "--out", str(tmp_path / "plots")])


def test_stamp_load_refuses_crafted_weights(tmp_path, marker):
    from tests.inject.models import FAMILIES

    model = stamp.inject(FAMILIES["bert"].build("eager"))
    stamp.save(model, tmp_path / "adapter")  # safetensors only; the first format's .pt fallback:
    config = json.loads((tmp_path / "adapter" / "stamp_config.json").read_text())
    legacy = json.dumps({**config, "format": "stamp-inject/1"})
    (tmp_path / "adapter" / "stamp_config.json").write_text(legacy)
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save({"w": ShellCommand(marker)}, tmp_path / "adapter" / "stamp_model.pt")
    with pytest.raises(ValueError, match="is a torch.save \\(pickle\\) file.*could run code"):
        stamp.load(FAMILIES["bert"].build("eager"), tmp_path / "adapter")


def test_imagenet_pretrained_weights_are_read_weights_only(tmp_path, marker):
    """MAE's training checkpoints pickle an argparse.Namespace beside the weights: allowed;
    anything that runs code is refused."""
    from tasks.imagenet.model import _read_state_dict

    good = tmp_path / "mae.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-3)}, good)
    assert torch.equal(_read_state_dict(good)["w"], torch.ones(2))
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": ShellCommand(marker)}, evil)
    with pytest.raises((pickle.UnpicklingError, RuntimeError, ValueError), match="posix.system"):
        _read_state_dict(evil)


def test_a_torch_saved_dict_is_not_a_lightning_checkpoint(tmp_path):
    """Used to fail with KeyError: 'pytorch-lightning_version'."""
    file = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, file)
    message = r"not a PyTorch Lightning checkpoint: no state_dict / pytorch-lightning_version"
    with pytest.raises(ValueError, match=message) as info:
        run_cfg(
            compose_cfg([*EVAL, f"ckpt_path={file}"], tmp_path / "e", config_name="eval"), evaluate
        )
    assert str(file) in str(info.value) and "encoder.weight" in str(info.value)
    assert safe_load(file)["encoder.weight"].shape == (2,)  # a plain state dict reads fine


UNSAFE = re.compile(r"weights_only\s*=\s*False")


def test_no_unrestricted_torch_load_in_the_tree():
    """No code path loads with weights_only=False (tests that build their own trusted files
    are the only exception, listed here)."""
    allowed = {
        "tests/robustness/test_safe_loading.py",  # proves the payload above
        "tests/inject/test_inject.py",  # a whole model pickled in memory by the test itself
    }
    found = []
    for folder in ("stamp", "tasks", "scripts", "hydra_plugins", "tests"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            for number, line in enumerate(file.read_text().splitlines(), 1):
                if UNSAFE.search(line) and rel not in allowed:
                    found.append(f"{rel}:{number}: {line.strip()}")
    for file in ("train.py", "eval.py"):
        assert not UNSAFE.search((ROOT / file).read_text())
    assert not found, "\n".join(found)
