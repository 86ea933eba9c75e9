"""The paper-table experiment files of the MAD task: they compose with the intended rows, and
(slow) each one trains a step and evaluates on the synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mad_testing import minilm_dir
from omegaconf import OmegaConf
from test_train import compose_train

from tasks.common.runtime.pipeline import train

EXPERIMENTS = {
    "mad_ad_t1a": ("T1a", "mad-v2-ad-named.csv", "mask: none,multilayer"),
    "mad_ad_t2": ("T2", "mad-v2-ad-unnamed.csv", "mask: none,sparse,global,multilayer"),
    "mad_ad_t3": ("T3", "mad-v2-ad-unnamed.csv", "mask: none,extra_linear_plain,extra_linear"),
    "mad_ad_t7": ("T7", "mad-v2-ad-unnamed.csv", "attention: eager,flex"),
    "mad_ad_s8": ("S8", "mad-v2-ad-unnamed.csv", "data.eval_audio: original,credits"),
    "mad_ad_fig1c": ("Fig1c", "mad-v2-ad-unnamed.csv", "model.encoder_sparsity: 0.0,0.25"),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_files_compose(tmp_path, name):
    table, annotations, sweep = EXPERIMENTS[name]
    cfg = compose_train(tmp_path, [f"experiment={name}"])
    assert (cfg.experiment, cfg.table, cfg.data.annotations) == (name, table, annotations)
    params = cfg.hydra.sweeper.params if "hydra" in cfg else None
    assert params is None or sweep.split(":")[0] in params


def test_table7_switches_only_stamps_kernel(tmp_path):
    rows = {
        backend: compose_train(tmp_path, ["experiment=mad_ad_t7", f"attention={backend}"])
        for backend in ("eager", "flex")
    }
    for backend, cfg in rows.items():
        assert cfg.row == backend and cfg.attention.backend == backend
    eager, flex = (OmegaConf.to_container(rows[b], resolve=True) for b in ("eager", "flex"))
    assert eager["model"] == flex["model"]  # LLM and adapter kernels held fixed
    assert eager["model"]["llm_attn_implementation"] == "sdpa"
    del eager["attention"], flex["attention"], eager["row"], flex["row"]
    assert eager == flex


def test_s8_and_fig1c_rows(tmp_path):
    s8 = compose_train(tmp_path, ["experiment=mad_ad_s8"])
    assert s8.data.eval_audio == "credits" and s8.row == "credits" and s8.mask.type == "multilayer"
    assert "mask_plot" in s8.callbacks
    fig = compose_train(tmp_path, ["experiment=mad_ad_fig1c", "model.encoder_sparsity=0.5"])
    assert fig.row == 0.5 and fig.mask.type == "none"


def test_table3_has_both_linear_controls_as_separate_rows(tmp_path):
    import yaml

    experiment = Path(__file__).resolve().parents[2] / "configs/experiment/mad_ad_t3.yaml"
    sweep = yaml.safe_load(experiment.read_text())["hydra"]["sweeper"]["params"]["mask"]
    sweep = sweep.split(",")
    assert sweep == ["none", "extra_linear_plain", "extra_linear", "extra_layers", "multilayer"]
    rows = {}
    for mask in sweep:
        run = compose_train(tmp_path, ["experiment=mad_ad_t3", f"mask={mask}"])
        rows[mask] = (run.row, str(run.mask.type), str(run.mask.linear_control))
    assert rows["extra_linear_plain"] == ("extra_linear", "extra_linear", "plain")  # the paper's
    assert rows["extra_linear"] == ("extra_linear-residual", "extra_linear", "residual")
    assert [rows[m][0] for m in ("none", "extra_layers", "multilayer")] == [
        "none",
        "extra_layers",
        "multilayer",
    ]
    # make_tables: the paper's numbers stand beside the plain form only
    from tasks.common.reporting.tables import load_paper

    paper = {r.id: r for r in load_paper()["T3"].rows}
    assert paper["extra_linear"].paper["C"] == (12.87, None)
    assert paper["extra_linear-residual"].paper == {}


def test_table3_controls_at_the_papers_sizes(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=mad_ad_t3", "mask=extra_layers"])
    assert cfg.model.extra_layers == 39 and cfg.mask.depth == 16 and cfg.model.dim == 768


TINY = [
    "logger=csv",
    "callbacks.progress_bar=null",
    "model.visual_dim=16",
    "model.audio_dim=16",
    "model.dim=32",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_queries=4",
    "model.adapter_layers=2",
    "model.adapter_dim=16",
    "model.adapter_depth=2",
    "model.adapter_heads=2",
    "model.lora_rank=4",
    "mask.depth=2",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "data.limit_train=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "module.stage1_epochs=1",
    "module.max_new_tokens=2",
    "module.bertscore_layers=6",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, extra",
    [
        ("mad_ad_t1a", ["mask=none"]),
        ("mad_ad_t2", ["mask=sparse"]),
        ("mad_ad_t3", ["mask=extra_layers"]),
        ("mad_ad_t3", ["mask=extra_linear_plain"]),
        ("mad_ad_t7", ["attention=flex", "attention.flex_cpu_training=eager"]),
        ("mad_ad_s8", ["callbacks.mask_plot.every_n_epochs=1"]),
        ("mad_ad_fig1c", ["model.encoder_sparsity=0.5"]),
    ],
)
def test_every_experiment_runs_a_step(tmp_path, monkeypatch, tiny_llama, mad_dir, name, extra):
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"experiment={name}",
        *TINY,
        *extra,
        f"data.root={mad_dir}",
        f"model.llm_path={tiny_llama}",
        f"module.bertscore_model={minilm_dir()}",
    ]
    record = train(compose_train(tmp_path, overrides))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "ok" and saved["table"] == EXPERIMENTS[name][0]
    assert {"val/CIDEr", "val/ROUGE_L", "val/R@5_16"} <= set(record["metrics"])
    if name == "mad_ad_s8":  # the figure: the first layer's mask of a validation sample
        assert list((tmp_path / "run" / "plots").glob("mask_epoch*.png"))
        assert saved["row"] == "credits"
    if "mask=extra_linear_plain" in extra:  # the paper's +Linear row, its plain stack trained
        assert saved["row"] == "extra_linear" and saved["params"]["params/mask"] > 0
