"""End to end: the real Hydra config (experiment=ave_tiny), shrunk to a one-block ViT-Tiny,
trains on the generated official-layout AVE, writes results.json with accuracy and the
supplement's parameter counts, and resumes exactly; the paper experiments compose with the
official hyper-parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_cfg, run_cfg

TINY = [
    "experiment=ave_tiny",
    "logger=csv",
    "callbacks.progress_bar=null",
    "model.vit_depth=1",  # one ViT-Tiny block: the same code path, CPU-test sized
]


def _tiny(root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={root}", *extra]


def test_train_ma_avt_writes_accuracy_and_parameters(tmp_path: Path, small_ave: Path) -> None:
    out = tmp_path / "run"
    record = run_cfg(compose_cfg(_tiny(small_ave), output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "ave" and saved["row"] == "ma_avt-tiny"
    metrics = saved["metrics"]
    assert {"val/acc", "test/acc", "train/total", "train/fg", "train/contrastive"} <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 100.0
    params = record["params"]
    # the supplement's rule: the contrastive projectors train but are not counted
    assert params["params/report_projector"] > 0
    assert (
        params["params/report_total"] == params["params/total"] - params["params/report_projector"]
    )
    assert params["params/report_trainable"] < params["params/trainable"]
    assert saved["best"]["metric"] == "val/acc"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lavish", "lavish_large", "mbt"])
def test_train_other_models(tmp_path: Path, small_ave: Path, model: str) -> None:
    out = tmp_path / "run"
    run_cfg(compose_cfg(_tiny(small_ave, f"model={model}"), output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["row"] == f"{model}-tiny"
    assert "test/acc" in saved["metrics"] and saved["params"]["params/report_trainable"] > 0


def test_stamp_extension_trains_its_generators(tmp_path: Path, small_ave: Path) -> None:
    out = tmp_path / "run"
    record = run_cfg(compose_cfg(_tiny(small_ave, "mask=multilayer", "test=false"), output_dir=out))
    assert record["status"] == "ok" and record["mask"] == "multilayer"
    assert record["params"]["params/mask"] > 0
    assert record["params"]["params/report_stamp"] == record["params"]["params/mask"]


@pytest.mark.slow
def test_ave_resume_mid_epoch_is_exact(tmp_path: Path, small_ave: Path) -> None:
    """Interrupted inside epoch 3 and resumed with ckpt_path=last: the same metrics as an
    uninterrupted run (the pattern of tests/robustness/test_resume.py)."""
    from tests.robustness.test_resume import assert_same_metrics, interrupted_then_resumed

    overrides = _tiny(
        small_ave, "trainer.max_epochs=3", "test=false", "data.batch_size=2"
    )  # 2 steps an epoch
    full, resumed = interrupted_then_resumed(overrides, tmp_path, step=5)
    assert_same_metrics(full, resumed)


@pytest.mark.parametrize("experiment", ["ave_t7", "ave_t8", "ave_t9"])
def test_paper_experiments_compose_with_the_official_recipe(
    experiment: str, tmp_path: Path
) -> None:
    cfg = compose_cfg([f"experiment={experiment}", "trainer=gpu"], output_dir=tmp_path)
    assert cfg.table == f"AVE-T{experiment[-1]}" and cfg.task_name == "ave"
    assert cfg.mask.type == "none" and cfg.test is True
    opt = cfg.module.optimizer
    assert opt._target_ == "torch.optim.Adam" and (opt.lr, opt.weight_decay) == (1e-4, 0.0)
    assert cfg.module.scheduler is None  # the official per-iteration 'cte' schedule
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 256
    assert cfg.trainer.max_epochs == 50 and cfg.data.drop_last is True
    assert cfg.trainer.accelerator == "gpu"
    params = cfg.hydra.sweeper.params
    if experiment == "ave_t7":
        assert params["model"] == "lavish,ma_avt"
        assert params["model.vit"] == "tiny,small,base,large"
        assert cfg.model.require_weights is True
        assert cfg.model.vit_checkpoint.endswith("vit_base_patch16_224_in21k.safetensors")
    elif experiment == "ave_t8":
        assert params["model.num_tokens"] == "2,5,10,15" and cfg.model.vit == "base"
        assert cfg.row == "tokens-5" and cfg.model.name == "ma_avt"
    else:
        assert params["model"] == "ma_avt,lavish,mbt" and params["model.vit"] == "base,large"
        assert cfg.train is False and cfg.module.throughput_batch > 0


def test_paper_configs_refuse_to_start_without_weights(tmp_path: Path, small_ave: Path) -> None:
    from hydra.errors import InstantiationException

    from stamp import MaskConfig
    from tasks.common.runtime.pipeline import instantiate

    cfg = compose_cfg(
        ["experiment=ave_t7", "model.vit=tiny", f"model.vit_checkpoint={tmp_path}/absent.pth"],
        output_dir=tmp_path,
    )
    with pytest.raises((InstantiationException, FileNotFoundError, ValueError)) as err:
        instantiate(cfg.model, mask=MaskConfig(type="none"))
    assert "absent.pth" in str(err.value)


def test_throughput_is_logged_on_the_test_split(tmp_path: Path, small_ave: Path) -> None:
    overrides = _tiny(
        small_ave,
        "train=false",
        "module.throughput_batch=2",
        "module.throughput_steps=1",
        "module.throughput_warmup=0",
        "++trainer.limit_test_batches=1",
    )
    record = run_cfg(compose_cfg(overrides, output_dir=tmp_path / "run"))
    assert record["status"] == "ok" and record["metrics"]["test/samples_per_s"] > 0
    torch.manual_seed(0)
