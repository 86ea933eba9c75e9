"""The two-stage protocol: exactly the stage's parameter groups change in an optimizer step."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from mad_testing import TINY_AV, make_model
from test_model import example_batch, features

from tasks.mad_ad.module import MadADModule, ad_metrics


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before, params) -> list[bool]:
    return [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]


def test_each_stage_updates_only_its_groups(tiny_llama):
    torch.manual_seed(0)
    net = make_model(tiny_llama)
    module = MadADModule(net, optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.05))
    optimizer = module.configure_optimizers()
    visual, audio = features(2)
    batch = {
        **example_batch(net, ["Tony opens the door.", "She leaves."]),
        "visual": visual,
        "audio": audio,
        "padding_mask": torch.zeros(2, 2 * TINY_AV["tokens_per_modality"], dtype=torch.bool),
    }
    with torch.no_grad():
        for layer in net.adapted:
            layer.gate.fill_(0.3)  # let gradients reach the prompts in one step
    groups = {name: net.groups[name] for name in ("adapter", "bias", "norm", "lora", "gate", "av")}
    frozen = [p for n, p in net.named_parameters() if f"{n}" in net.llm_frozen_names]
    for stage, trained in (
        (1, {"adapter", "gate", "av"}),
        (2, {"bias", "norm", "lora", "gate", "av"}),
    ):
        module.set_stage(stage)
        before = {name: snapshot(params) for name, params in groups.items()}
        before_frozen = snapshot(frozen)
        optimizer.zero_grad()
        module._loss(batch).backward()
        module.on_after_backward()
        optimizer.step()
        for name, params in groups.items():
            moved = changed(before[name], params)
            assert all(moved) if name in trained else not any(moved), (stage, name)
        assert not any(changed(before_frozen, frozen))


def test_ad_metrics_group_movies_in_temporal_order():
    from tasks.common.runtime.caption_metrics import CaptionMetrics

    class RecordingRecall:
        def compute(self, movies):
            self.movies = movies
            return {"R@5_16": 50.0}

    outputs = [
        {"index": 0, "movie": "b", "start": 9.0, "reference": "he sits", "prediction": "he sits"},
        {"index": 1, "movie": "a", "start": 5.0, "reference": "she runs", "prediction": "x"},
        {"index": 2, "movie": "a", "start": 1.0, "reference": "she opens", "prediction": "y"},
    ]
    recall = RecordingRecall()
    captions = CaptionMetrics(["ROUGE_L"], tokenize="simple", rouge="hf")
    scores = ad_metrics(outputs, captions, recall)
    assert recall.movies == {
        "a": (["y", "x"], ["she opens", "she runs"]),
        "b": (["he sits"], ["he sits"]),
    }
    assert scores["R@5_16"] == 50.0
    assert scores["ROUGE_L"] == pytest.approx(100 / 3)  # one exact match out of three
