"""predict.py / tasks.common.launch.predict on QVHighlights: one video's feature files + one query's
features -> the windows and saliency that the evaluation writes for that query (the model's own
batch forward and the evaluation's post-processing), exactly; the JSON and the mask picture are
written into the run directory, which is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.common.launch.predict import Predictor, predict
from tasks.common.runtime.checkpoints import with_checkpoint_config
from tasks.common.runtime.pipeline import RunExistsError
from tasks.qvhighlights.metrics import load_jsonl
from tasks.qvhighlights.synthetic import write_synthetic_features
from tests.helpers import compose_cfg, qvh_overrides, run_cfg

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"
TYPES = ("slowfast_features", "clip_features")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str, Path]:
    """(feature root, checkpoint, run dir) of a one-epoch tiny QD-DETR + STAMP run whose
    validation predicted one query a batch (eval_batch_size=1: no padding from other items)."""
    root = tmp_path_factory.mktemp("qvh_predict")
    files = [ANN / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
    write_synthetic_features(files, root, {TYPES[0]: 16, TYPES[1]: 8}, text_dim=8, seed=0, limit=8)
    out = root / "run"
    overrides = [*qvh_overrides(root, eval_batch_size=1), "trainer.max_epochs=1"]
    record = run_cfg(compose_cfg(overrides, out))
    return root, record["best"]["ckpt"], out


def features_of(root: Path, row: dict) -> dict:
    return {
        "video_features": [str(root / t / f"{row['vid']}.npz") for t in TYPES],
        "query_features": str(root / "clip_text_features" / f"qid{row['qid']}.npz"),
    }


def test_prediction_equals_the_evaluation_row(trained):
    root, ckpt, run = trained
    evaluated = load_jsonl(run / "predictions" / "hl_val_submission_e000.jsonl")
    gt = {r["qid"]: r for r in load_jsonl(root / "annotations" / "highlight_val_release.jsonl")}
    predictor = Predictor.from_checkpoint(ckpt)
    for row in evaluated[:4]:
        duration = gt[row["qid"]]["duration"]
        out = predictor.predict(**features_of(root, row), qid=row["qid"], duration=duration)
        assert out["windows"] == row["pred_relevant_windows"]  # exactly
        assert out["saliency"] == row["pred_saliency_scores"]
        assert len(out["saliency"]) == out["num_clips"]
        scores = [w[2] for w in out["windows"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 10
    # by video id and query id under data.feature_dir: the same reading
    row = evaluated[0]
    by_id = predictor.predict(vid=row["vid"], qid=row["qid"], duration=gt[row["qid"]]["duration"])
    assert by_id["windows"] == row["pred_relevant_windows"]
    # without a duration: clips x clip length
    default = predictor.predict(**features_of(root, row))
    assert default["duration"] == default["num_clips"] * 2.0


def test_predict_writes_json_and_mask_picture_once(trained, tmp_path):
    root, ckpt, run = trained
    row = load_jsonl(run / "predictions" / "hl_val_submission_e000.jsonl")[1]
    inputs = features_of(root, row)
    argv = with_checkpoint_config(
        [
            f"ckpt_path={ckpt}",
            f"input.video_features=[{','.join(inputs['video_features'])}]",
            f"input.query_features={inputs['query_features']}",
            "input.query='a man walks his dog'",
        ],
        "predict",
    )
    cfg = compose_cfg(argv, tmp_path, config_name="predict")
    out = run_cfg(cfg, fn=lambda c: predict(c, tmp_path))
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert saved["windows"] == out["windows"] and saved["query"] == "a man walks his dog"
    assert saved["task"] == "qvhighlights" and saved["checkpoint_config"]["mismatch"] == {}
    picture = tmp_path / "mask.png"
    assert saved["mask_picture"] == str(picture) and picture.stat().st_size > 1000
    with pytest.raises(RunExistsError, match="holds a finished prediction"):
        run_cfg(cfg, fn=lambda c: predict(c, tmp_path))


def test_wrong_inputs_are_clear_errors(trained, tmp_path):
    root, ckpt, run = trained
    row = load_jsonl(run / "predictions" / "hl_val_submission_e000.jsonl")[0]
    predictor = Predictor.from_checkpoint(ckpt)
    inputs = features_of(root, row)
    with pytest.raises(ValueError, match=r"1 files given, the model reads 2 feature types"):
        predictor.predict(**{**inputs, "video_features": inputs["video_features"][:1]})
    with pytest.raises(FileNotFoundError, match="qid-1.npz not found"):
        predictor.predict(**{**inputs, "query_features": str(root / "qid-1.npz")})
    with pytest.raises(ValueError, match="give input.query_features"):
        predictor.predict(video_features=inputs["video_features"])
    with pytest.raises(RuntimeError, match="predict"):
        Predictor.from_checkpoint(ckpt).mask_picture(tmp_path / "m.png")


@pytest.mark.slow
def test_predict_command_line(trained, tmp_path):
    from tests.helpers import run_script

    root, ckpt, run = trained
    row = load_jsonl(run / "predictions" / "hl_val_submission_e000.jsonl")[0]
    inputs = features_of(root, row)
    done = run_script(
        [
            "predict.py",
            f"ckpt_path={ckpt}",
            f"input.video_features=[{','.join(inputs['video_features'])}]",
            f"input.query_features={inputs['query_features']}",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "prediction.json").read_text())
    assert len(saved["windows"]) == 10 and (tmp_path / "mask.png").is_file()
