"""End to end: the real Hydra config (task=qvhighlights and its experiment files), shrunk to a
tiny QD-DETR on synthetic features generated for the first queries of the real annotations."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tasks.qvhighlights.metrics import load_jsonl
from tasks.qvhighlights.synthetic import write_synthetic_features
from tests.helpers import compose_cfg, run_cfg

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"
N_QUERIES = 16


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qvh_features")
    files = [ANN / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
    write_synthetic_features(
        files,
        root,
        {"slowfast_features": 16, "clip_features": 8},
        text_dim=8,
        seed=0,
        limit=N_QUERIES,
    )
    return root


def tiny(root: Path) -> list[str]:
    return [
        f"data.annotation_dir={root / 'annotations'}",
        f"data.feature_dir={root}",
        "data.v_feat_dim=24",
        "data.t_feat_dim=8",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "model.hidden_dim=32",
        "model.num_heads=4",
        "model.ffn_dim=64",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "+trainer.limit_train_batches=1",
    ]


def test_train_validate_test_end_to_end(features: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_cfg(
        ["task=qvhighlights", "mask=multilayer", "test=true", *tiny(features)], output_dir=out
    )
    assert cfg.mask.depth == 32 and cfg.monitor.metric == "val/MR-full-mAP"
    record = run_cfg(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "qvhighlights"
    brief = {"MR-full-mAP", "MR-full-R1@0.7", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"}
    assert {f"val/{k}" for k in brief} <= set(saved["metrics"])
    assert record["params"]["params/mask"] > 0
    preds = load_jsonl(out / "predictions" / "hl_val_submission_e000.jsonl")
    assert len(preds) == N_QUERIES
    windows = preds[0]["pred_relevant_windows"]
    assert len(windows) == 10 and all(w[0] % 2 == 0 and w[1] % 2 == 0 for w in windows)
    assert [w[2] for w in windows] == sorted((w[2] for w in windows), reverse=True)
    metrics = json.loads((out / "predictions" / "hl_val_submission_e000_metrics.json").read_text())
    assert metrics["brief"]["MR-full-mAP"] == pytest.approx(saved["metrics"]["val/MR-full-mAP"])
    check_submission(out, saved["metrics"]["val/MR-full-mAP"])

    # eval.py on the best checkpoint reproduces the final validation metrics
    from tasks.common.runtime.pipeline import evaluate

    eval_overrides = [o for o in tiny(features) if not o.startswith(("callbacks", "+trainer"))]
    ckpt = saved["best"]["ckpt"]
    eval_cfg = compose_cfg(
        ["task=qvhighlights", "mask=multilayer", f"ckpt_path={ckpt}", *eval_overrides],
        output_dir=tmp_path / "eval",
        config_name="eval",
    )
    evaluated = run_cfg(eval_cfg, fn=evaluate)
    assert evaluated["metrics"]["val/MR-full-mAP"] == pytest.approx(
        saved["metrics"]["val/MR-full-mAP"]
    )
    assert not (tmp_path / "eval" / "hl_submission.zip").exists()

    # eval.py split=test writes the test-server submission into its run directory
    test_cfg = compose_cfg(
        [
            "task=qvhighlights",
            "mask=multilayer",
            f"ckpt_path={ckpt}",
            "split=test",
            *eval_overrides,
        ],
        output_dir=tmp_path / "eval_test",
        config_name="eval",
    )
    tested = run_cfg(test_cfg, fn=evaluate)
    assert tested["split"] == "test" and tested["metrics"]["test/num_queries"] == N_QUERIES
    check_submission(tmp_path / "eval_test", saved["metrics"]["val/MR-full-mAP"])


def check_submission(run_dir: Path, val_mr_map: float) -> None:
    """The files of the QVHighlights test server: two jsonl files, zipped without a folder."""
    val_rows = load_jsonl(run_dir / "hl_val_submission.jsonl")
    test_rows = load_jsonl(run_dir / "hl_test_submission.jsonl")
    assert len(val_rows) == len(test_rows) == N_QUERIES
    gt_test = load_jsonl(ANN / "highlight_test_release.jsonl")[:N_QUERIES]
    assert [r["qid"] for r in test_rows] == [r["qid"] for r in gt_test]
    assert "pred_saliency_scores" in test_rows[0] and "pred_relevant_windows" in test_rows[0]
    with zipfile.ZipFile(run_dir / "hl_submission.zip") as zf:
        assert sorted(zf.namelist()) == ["hl_test_submission.jsonl", "hl_val_submission.jsonl"]
        assert (
            zf.read("hl_val_submission.jsonl") == (run_dir / "hl_val_submission.jsonl").read_bytes()
        )
    # the val half is the model's val predictions: the same metrics as its validation
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["val/MR-full-mAP"] == pytest.approx(val_mr_map)


@pytest.mark.parametrize(
    ("experiment", "overrides", "table", "row"),
    [
        ("qvhighlights_t1", ["mask=multilayer", "seed=1"], "T1b", "multilayer"),
        ("qvhighlights_t1", ["mask=none", "seed=2"], "T1b", "none"),
        ("qvhighlights_s4", ["variant=depth2-add"], "S4", "depth2-add"),
        ("qvhighlights_s4", ["variant=none", "seed=1"], "S4", "none"),
        ("qvhighlights_s4", ["variant=depth2-mul", "layers=t2v"], "S4", "depth2-mul-t2v"),
    ],
)
def test_experiment_files_run_one_step(features, tmp_path, experiment, overrides, table, row):
    out = tmp_path / "run"
    cfg = compose_cfg([f"experiment={experiment}", *overrides, *tiny(features)], output_dir=out)
    assert cfg.task_name == "qvhighlights"
    run_cfg(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert (saved["status"], saved["table"], saved["row"]) == ("ok", table, row)
    assert saved["experiment"] == experiment
    # T1b's QD-DETR row is the test split: every T1 run writes the server submission
    assert (out / "hl_submission.zip").exists() == (experiment == "qvhighlights_t1")


def test_experiment_sweeps_cover_the_paper(tmp_path: Path) -> None:
    t1 = compose_cfg(["experiment=qvhighlights_t1"], output_dir=tmp_path)
    assert t1.hydra.sweeper.params.mask == "none,multilayer"
    assert len(str(t1.hydra.sweeper.params.seed).split(",")) >= 3
    s4 = compose_cfg(["experiment=qvhighlights_s4"], output_dir=tmp_path)
    variants = str(s4.hydra.sweeper.params.variant).split(",")
    assert str(s4.hydra.sweeper.params.seed) == "0,1,2"
    expected = {f"depth{d}-{f}" for d in (2, 4, 8, 16, 32, 64) for f in ("mul", "add")}
    assert len(variants) == 13 and set(variants) == expected | {"none"}  # 13 x 3 seeds = 39 runs
    for variant in ("none", "depth2-add", "depth64-mul"):  # (composing all 13 takes 11 s)
        point = compose_cfg(["experiment=qvhighlights_s4", f"variant={variant}"], tmp_path)
        assert point.row == variant
        assert str(point.mask.type) == ("none" if variant == "none" else "multilayer")
        if variant != "none":
            assert f"depth{point.mask.depth}-{point.mask.fusion}" == variant
    # a direct override is labelled by the mask that runs
    assert compose_cfg(["experiment=qvhighlights_s4", "mask.depth=8"], tmp_path).row == "depth8-mul"
    synth = compose_cfg(["experiment=qvhighlights_synthetic"], output_dir=tmp_path)
    assert synth.data.v_feat_dim == 96 and synth.model.vid_dim == 96


def test_s4_cross_attention_only_variant_masks_the_t2v_layers_only(tmp_path: Path) -> None:
    """Fig. S4's caption and the rebuttal's N table (75 x 32): STAMP in the cross-attention only
    (`layers=t2v`), labelled apart from the default (both groups); the baseline row is shared."""
    from hydra.utils import instantiate

    from stamp.mask import mask_parameter_count
    from tasks.common.runtime.pipeline import core_configs

    counts = {}
    for layers in ("both", "t2v"):
        cfg = compose_cfg(
            ["experiment=qvhighlights_s4", f"layers={layers}", "variant=depth2-mul"], tmp_path
        )
        assert list(cfg.model.stamp_layers) == {"both": ["t2v", "self"], "t2v": ["t2v"]}[layers]
        assert cfg.row == {"both": "depth2-mul", "t2v": "depth2-mul-t2v"}[layers]
        mask, attention = core_configs(cfg)
        net = instantiate(cfg.model, mask=mask, attention=attention)
        counts[layers] = mask_parameter_count(net)
        if layers == "t2v":
            assert mask_parameter_count(net.encoder) == 0  # the self-attention group runs full
            assert mask_parameter_count(net.t2v_layers) == counts["t2v"] > 0
    assert 0 < counts["t2v"] < counts["both"]
    none = compose_cfg(["experiment=qvhighlights_s4", "layers=t2v", "variant=none"], tmp_path)
    assert none.row == "none"
