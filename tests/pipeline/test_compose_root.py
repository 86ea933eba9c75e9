"""Scripts that compose the config (profile_compute, plots) resolve paths as train.py does:
$STAMP_ROOT, else the current directory, so nothing is written into the repository from
elsewhere."""

from __future__ import annotations

from pathlib import Path

from tasks.common.runtime.compose import ROOT, compose_config


def test_compose_config_roots_at_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("STAMP_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["task=demo"])
    assert Path(cfg.paths.root_dir) == tmp_path
    assert Path(cfg.paths.log_dir).resolve().is_relative_to(tmp_path.resolve())
    assert Path(cfg.paths.repo_dir).resolve() == ROOT  # shipped files still come from the repo


def test_stamp_root_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("STAMP_ROOT", str(tmp_path / "elsewhere"))
    cfg = compose_config(["task=demo"], tmp_path / "run")
    assert cfg.paths.root_dir == str(tmp_path / "elsewhere")
