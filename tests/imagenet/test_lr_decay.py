"""MAE's layer-wise lr decay groups and per-step warm-up + cosine schedule."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from stamp import MaskConfig
from tasks.common.runtime.schedules import warmup_cosine
from tasks.imagenet.lr_decay import layer_decay_param_groups
from tasks.imagenet.model import StampViT
from tasks.imagenet.module import ImageNetModule
from tests.imagenet.conftest import TINY

DECAY = 0.65


def lr_and_decay_by_name(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.fixture
def model() -> StampViT:
    return StampViT(**TINY, mask=MaskConfig(type="multilayer", depth=1))


def test_layer_scales(model: StampViT) -> None:
    groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=DECAY)
    got = lr_and_decay_by_name(model, groups)
    assert len(got) == len(list(model.parameters()))  # every parameter in exactly one group
    depth = TINY["depth"]  # 2 blocks: embeddings 0.65^3, block 0 0.65^2, block 1 0.65, top 1
    expected_lr = {
        "cls_token": DECAY ** (depth + 1),
        "pos_embed": DECAY ** (depth + 1),
        "patch_embed.proj.weight": DECAY ** (depth + 1),
        "blocks.0.attn.qkv.weight": DECAY**2,
        "blocks.0.mask_generator.out.weight": DECAY**2,  # MAE's rule: inside block 0
        "blocks.1.mlp.fc2.bias": DECAY,
        "fc_norm.weight": 1.0,
        "head.weight": 1.0,
    }
    for name, lr in expected_lr.items():
        assert got[name][0] == pytest.approx(lr), name
    no_decay = [
        "cls_token",
        "pos_embed",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.1.mask_generator.out.bias",
        "head.bias",
    ]
    decay = [
        "patch_embed.proj.weight",
        "blocks.0.attn.proj.weight",
        "blocks.1.mask_generator.out.weight",
        "head.weight",
    ]
    assert all(got[n][1] == 0.0 for n in no_decay)
    assert all(got[n][1] == 0.05 for n in decay)


def test_group_names_unique_without_weight_decay(model: StampViT) -> None:
    """weight_decay 0 keeps the decay / no-decay split (LearningRateMonitor needs unique names)."""
    groups = layer_decay_param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=DECAY)
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)) and "layer_1_decay" in names
    assert all(g["weight_decay"] == 0.0 for g in groups)


def test_generators_at_full_lr_when_asked(model: StampViT) -> None:
    groups = layer_decay_param_groups(model, lr=2.0, layer_decay=DECAY, mask_layer_decay=False)
    got = lr_and_decay_by_name(model, groups)
    assert got["blocks.0.mask_generator.out.weight"][0] == pytest.approx(2.0)
    assert got["blocks.0.attn.qkv.weight"][0] == pytest.approx(2.0 * DECAY**2)


def mae_param_groups(model, weight_decay, layer_decay, no_weight_decay, mask_layer_decay=True):
    """MAE's util/lr_decay.py (param_groups_lrd + get_layer_id_for_vit), written out here as the
    reference: {parameter name: (lr_scale, weight_decay)}, and the group of each name."""
    num_layers = len(model.blocks) + 1
    got, group_of = {}, {}
    for name, param in model.named_parameters():
        no_decay = param.ndim == 1 or name in no_weight_decay
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks") and (mask_layer_decay or ".mask_generator." not in name):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers
        got[name] = (layer_decay ** (num_layers - layer), 0.0 if no_decay else weight_decay)
        group_of[name] = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
    return got, group_of


@pytest.mark.parametrize("mask_type", ["none", "global", "multilayer"])
@pytest.mark.parametrize("mask_layer_decay", [True, False])
def test_groups_follow_maes_lr_decay(mask_type, mask_layer_decay):
    """The same lr scale, weight decay and group membership as MAE's param_groups_lrd (with the
    blocks' generators moved to the top layer when mask_layer_decay is off)."""
    net = StampViT(**TINY, mask=MaskConfig(type=mask_type, depth=1))
    groups = layer_decay_param_groups(
        net,
        lr=3.0,
        weight_decay=0.05,
        layer_decay=DECAY,
        no_weight_decay=net.no_weight_decay(),
        mask_layer_decay=mask_layer_decay,
    )
    want, group_of = mae_param_groups(net, 0.05, DECAY, net.no_weight_decay(), mask_layer_decay)
    names = {id(p): n for n, p in net.named_parameters()}
    members = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    want_members: dict[str, list[str]] = {}
    for name, group in group_of.items():
        want_members.setdefault(group, []).append(name)
    assert members == {k: sorted(v) for k, v in want_members.items()}
    for group in groups:
        for param in group["params"]:
            scale, decay = want[names[id(param)]]
            assert group["lr_scale"] == pytest.approx(scale, rel=1e-12)
            assert group["lr"] == pytest.approx(3.0 * scale, rel=1e-12)
            assert group["weight_decay"] == decay


def mae_lr(epoch: float, lr: float, min_lr: float, warmup: float, epochs: float) -> float:
    """MAE's util/lr_sched.adjust_learning_rate (fractional epoch)."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (
        1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))
    )


def test_module_lr_blr_scaling_and_schedule(model: StampViT) -> None:
    """lr = blr x (batch x accumulation x devices) / 256; per-step curve = MAE's x lr_scale."""
    module = ImageNetModule(
        model,
        optimizer=partial(torch.optim.AdamW, weight_decay=0.05),
        scheduler=partial(warmup_cosine),
        blr=5e-4,
        layer_decay=DECAY,
        warmup_epochs=2,
        min_lr=1e-6,
    )
    steps_per_epoch, epochs = 10, 6
    module.trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=128),
        accumulate_grad_batches=4,
        world_size=1,
        estimated_stepping_batches=steps_per_epoch * epochs,
        max_epochs=epochs,
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    peak = 5e-4 * 512 / 256
    head = next(g for g in optimizer.param_groups if g["name"] == "layer_3_decay")
    block0 = next(g for g in optimizer.param_groups if g["name"] == "layer_1_decay")
    for step in range(steps_per_epoch * epochs):
        # MAE's curve at every step, warm-up included (lr 0 at the first step, as MAE)
        expected = mae_lr(step / steps_per_epoch, peak, 1e-6, 2, epochs)
        assert head["lr"] == pytest.approx(expected, rel=1e-9)
        assert block0["lr"] == pytest.approx(head["lr"] * DECAY**2)
        optimizer.step()
        scheduler.step()
