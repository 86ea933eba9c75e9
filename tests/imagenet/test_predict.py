"""predict.py / tasks.common.launch.predict on ImageNet: one image file -> its top classes, equal to
the validation forward of that image (the same loader and evaluation transform)."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.common.launch.predict import Predictor, predict
from tasks.common.runtime.checkpoints import with_checkpoint_config
from tests.helpers import compose_cfg, run_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from scripts.make_imagenet_folder import make_imagenet_folder

    tmp = tmp_path_factory.mktemp("imagenet_predict")
    root = make_imagenet_folder(
        tmp / "imagenet", num_classes=4, train_per_class=4, val_per_class=3, size=40
    )
    overrides = [
        "experiment=imagenet_tiny",
        "mask=multilayer",
        f"data.root={root}",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=1",
        "data.batch_size=4",
        "model.depth=1",
    ]
    record = run_cfg(compose_cfg(overrides, tmp / "run"))
    return root, record


@pytest.mark.slow
def test_image_class_equals_the_validation_forward(trained, tmp_path):
    root, record = trained
    predictor = Predictor.from_checkpoint(record["best"]["ckpt"])
    predictor.datamodule.setup("validate")
    val = predictor.datamodule.val_set
    correct = 0
    for i, (path, label) in enumerate(val.samples):
        out = predictor.predict(image=path, top_k=4)
        with torch.no_grad():
            probs = predictor.net(val[i][0][None]).softmax(-1)[0]
        top = out["classes"][0]
        assert top["index"] == int(probs.argmax())
        assert [c["probability"] for c in out["classes"]] == probs.sort(descending=True)[0].tolist()
        assert top["name"] == val.classes[top["index"]]
        correct += top["index"] == label
    assert 100.0 * correct / len(val) == pytest.approx(record["metrics"]["val/top1"], abs=1e-4)
    # the command's job: prediction.json and the mask picture
    ckpt = record["best"]["ckpt"]
    argv = with_checkpoint_config([f"ckpt_path={ckpt}", f"input.image={path}"], "predict")
    cfg = compose_cfg(argv, tmp_path, config_name="predict")
    run_cfg(cfg, fn=lambda c: predict(c, tmp_path))
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert saved["task"] == "imagenet" and len(saved["classes"]) == 4
    assert (tmp_path / "mask.png").stat().st_size > 1000
