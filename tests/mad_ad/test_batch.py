"""Effective batch 256 (paper A.4) on any device count: accumulation derived in the config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from test_train import compose_train

from tasks.common.runtime.schemas import device_count, effective_accumulation
from tasks.mad_ad.module import MadADModule


@pytest.mark.parametrize(
    "overrides, accumulation, devices",
    [
        (["trainer=gpu", "trainer.devices=1"], 8, 1),
        (["trainer=gpu", "trainer.devices=8"], 1, 8),
        (["trainer=gpu", "trainer.devices=4", "data.batch_size=16"], 4, 4),
        (["trainer=multinode", "trainer.devices=8", "data.batch_size=8"], 2, 8),
        (["trainer=ddp_cpu"], 4, 2),
    ],
)
def test_effective_batch_is_256_on_any_device_count(tmp_path, overrides, accumulation, devices):
    cfg = compose_train(tmp_path, ["experiment=mad_ad_t1a", *overrides])
    plan = OmegaConf.to_container(cfg.module.batch_plan, resolve=True)
    assert cfg.trainer.accumulate_grad_batches == accumulation
    assert plan["devices"] == devices and plan["accumulate_grad_batches"] == accumulation
    assert plan["per_device"] * devices * plan["num_nodes"] * accumulation == 256
    # the resolved config (written to results.json) carries the plan
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["module"]["batch_plan"]["effective_batch"] == 256


def test_an_indivisible_batch_stops_with_the_numbers(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=mad_ad_t1a", "trainer=gpu", "data.batch_size=48"])
    with pytest.raises(Exception, match="256 is not a multiple of per-device batch 48"):
        OmegaConf.to_container(cfg.trainer, resolve=True)


def test_device_count_forms():
    assert [device_count(d) for d in (1, 8, "2", "0,1,3", [0, 1], "1,")] == [1, 8, 2, 3, 2, 1]
    assert effective_accumulation(None, 7, 3) == 1
    assert effective_accumulation(256, 32, 2, 2) == 2


def test_module_checks_the_plan_against_the_trainer(tiny_llama):
    from functools import partial

    import torch
    from mad_testing import make_model

    plan = {"effective_batch": 256, "per_device": 32, "devices": 2, "num_nodes": 1}
    module = MadADModule(
        make_model(tiny_llama), optimizer=partial(torch.optim.AdamW), batch_plan=plan
    )
    module._trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=4)
    module.check_effective_batch()
    assert module.effective_batch["actual"] == 256
    module._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=4)
    with pytest.raises(ValueError, match="effective batch 128"):
        module.check_effective_batch()
