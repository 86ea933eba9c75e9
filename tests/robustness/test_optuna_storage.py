"""The documented Optuna study storage (``hydra.sweeper.storage=sqlite:///<dir>/optuna.db``):
a study is created in the file, interrupted (the sweep process killed in its second trial) and
resumed by the same command; the resumed sweep continues the trial count and keeps the finished
trials. Used to stop before the first trial with an AssertionError in optuna's
``get_current_version`` (optuna 2.10 beside SQLAlchemy 2)."""

from __future__ import annotations

import pytest

from tests.helpers import DEMO_TINY, run_script

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_sqlalchemy_works_with_the_locked_optuna(tmp_path):
    """The pair in requirements.lock: a study in a SQLite file, written and read back."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=storage)
    assert [t.number for t in again.trials] == [0, 1]
    assert again.best_value == max(t.value for t in study.trials)


@pytest.mark.slow
def test_optuna_study_in_sqlite_is_interrupted_and_resumed(tmp_path):
    db = tmp_path / "optuna.db"
    storage = f"sqlite:///{db}"
    sweep = [
        "train.py",
        "-m",
        "experiment=demo_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=demo",
        *DEMO_TINY,
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    killed = run_script(
        [
            *sweep,
            "hydra.sweeper.n_trials=3",
            "+callbacks.kill._target_=tests.robustness.faults.KillAtJob",
            "+callbacks.kill.job=1",
            f"paths.log_dir={tmp_path / 'first'}",
        ]
    )
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    first = optuna.load_study(study_name="demo", storage=storage).trials
    done = [t for t in first if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in done] == [0] and len(first) == 2  # trial 1 was running

    resumed = run_script([*sweep, "hydra.sweeper.n_trials=2", f"paths.log_dir={tmp_path / 'b'}"])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    trials = optuna.load_study(study_name="demo", storage=storage).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]  # the count goes on
    assert trials[0].value == done[0].value and trials[0].params == done[0].params  # kept
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, 2, 3]
