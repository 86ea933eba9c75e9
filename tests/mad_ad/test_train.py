"""End to end: the real Hydra config (task=mad_ad), shrunk to a tiny LLaMA on synthetic MAD files:
both stages train, then CIDEr / ROUGE-L / R@5/16 come out on val and test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mad_testing import minilm_dir
from omegaconf import DictConfig

from tasks.common.runtime.pipeline import train
from tasks.common.runtime.schemas import register_schemas
from tasks.mad_ad.module import MadADModule
from tasks.mad_ad.synthetic import QUIRK_COUNTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    register_schemas()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose(
            "train.yaml",
            overrides=[
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


def test_train_both_stages_and_evaluate(tmp_path, monkeypatch, tiny_llama, mad_dir):
    monkeypatch.chdir(tmp_path)
    stages: list[int] = []
    set_stage = MadADModule.set_stage

    def spy(self, stage):
        stages.append(stage)
        set_stage(self, stage)

    monkeypatch.setattr(MadADModule, "set_stage", spy)
    cfg = compose_train(
        tmp_path,
        [
            "experiment=mad_ad_tiny",
            "mask=multilayer",
            "logger=csv",
            "callbacks.progress_bar=null",
            "test=true",
            f"data.root={mad_dir}",
            f"model.llm_path={tiny_llama}",
            "model.visual_dim=16",
            "model.audio_dim=16",
            "model.dim=32",
            "model.num_queries=4",
            "data.batch_size=8",
            "data.limit_train=16",
            "trainer.max_epochs=2",
            "trainer.check_val_every_n_epoch=2",
            "data.eval_batch_size=32",
            "module.max_new_tokens=4",
            f"module.bertscore_model={minilm_dir()}",
            "module.bertscore_layers=6",
        ],
    )
    record = train(cfg)
    assert stages == [1, 2]  # epoch 0 alignment, epoch 1 bias / gate / AV tuning
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "mad_ad"
    for split in ("val", "test"):
        for name in ("CIDEr", "ROUGE_L", "R@5_16", "loss", "gflops_per_ad"):
            assert f"{split}/{name}" in record["metrics"], (split, name)
    assert 0.0 <= record["metrics"]["val/R@5_16"] <= 100.0
    assert saved["params"]["params/mask"] > 0
    # the synthetic csv has the released files' quirks: counted per rule in results.json
    rules = saved["data_report"]["annotations"]["rules"]
    assert {rule: rules[rule]["count"] for rule in rules} == QUIRK_COUNTS
    assert saved["data_report"]["annotations"]["file"].endswith("mad-v2-ad-named.csv")
    assert saved["params"]["params/trainable"] < saved["params"]["params/total"]
    lines = (tmp_path / "run" / "predictions" / "val_epoch001.jsonl").read_text().splitlines()
    assert len(lines) == 32 and "prediction" in json.loads(lines[0])
    # checkpoints keep the tuned weights and leave out the frozen LLaMA
    ckpt = torch.load(saved["best"]["ckpt"], map_location="cpu", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert "net.adapter_prompts" in keys and "net.llm.model.layers.0.self_attn.gate" in keys
    assert not any(k.endswith("base.weight") or "embed_tokens" in k for k in keys)


def test_missing_llama_and_mad_files_stop_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(tmp_path, ["task=mad_ad", "logger=csv"])
    start = time.time()
    with pytest.raises(Exception) as error:
        train(cfg)
    message = str(error.value)
    for key in (
        "model.llm_path",
        "data.visual_features",
        "data.audio_features",
        "data.annotations",
    ):
        assert key in message
    assert "make_mad_data.py" in message and time.time() - start < 30
    # one line per path (Hydra's wrapper printed repr(error): literal \n on one line), and the
    # per-machine keys to set
    assert "\\n" not in message and message.count("\n  data.") >= 3
    assert "paths.llama_dir" in message and "paths.mad_dir" in message
