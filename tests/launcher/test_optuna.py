"""hydra/sweeper=stamp_optuna and experiment=demo_optuna: the search space, and (slow) a short
study whose best trial is the best job of the sweep summary."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import DEMO_TINY, compose_cfg, run_script

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_demo_optuna_searches_lr_and_depth():
    cfg = compose_cfg(["experiment=demo_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert dict(sweeper.params) == {
        "module.optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
        "mask.depth": "range(1, 4)",
    }
    assert sweeper.direction == "maximize" and cfg.monitor.mode == "max"
    assert sweeper.max_failure_rate > 0  # a failed trial does not end the study
    assert cfg.mask.type == "multilayer" and cfg.experiment == "demo_optuna"


@pytest.mark.slow
def test_optuna_study_best_trial_is_the_best_job(tmp_path):
    proc = run_script(
        [
            "train.py",
            "-m",
            "experiment=demo_optuna",
            "hydra.sweeper.n_trials=3",
            *DEMO_TINY,
            "trainer.max_epochs=2",
            "callbacks.progress_bar.refresh_rate=0",
            f"paths.log_dir={tmp_path}",
        ]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = next(tmp_path.rglob("optimization_results.yaml")).parent
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    records = json.loads((sweep / "summary.json").read_text())
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    accs = [r["metrics"]["val/acc"] for r in records]
    assert best["best_value"] == pytest.approx(max(accs))
    winner = records[accs.index(max(accs))]["config"]
    assert best["best_params"]["mask.depth"] == winner["mask"]["depth"] in (1, 2, 3)
    lr = best["best_params"]["module.optimizer.lr"]
    assert 1e-4 <= lr <= 1e-2 and lr == pytest.approx(winner["module"]["optimizer"]["lr"])
