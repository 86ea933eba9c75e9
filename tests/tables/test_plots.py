"""Figures from tiny demo runs: attention histograms and mask heatmaps (Figs. S5-S9), the depth
sweep (Fig. S4) and the validation callback's mask heatmap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.common.reporting.plots import attention_weights, modality_boundaries, pick_layers
from tests.helpers import DEMO_TINY, compose_cfg, run_cfg

PNG = b"\x89PNG\r\n\x1a\n"
TINY = [*DEMO_TINY, "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"]


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict[str, Path]:
    """Two one-epoch demo runs: full attention, and multi-layer STAMP with the mask callback."""
    root = tmp_path_factory.mktemp("demo_runs")
    runs = {}
    for mask, extra in [("none", []), ("multilayer", ["callbacks=mask_plot"])]:
        out = root / mask
        record = run_cfg(compose_cfg([*TINY, f"mask={mask}", *extra], out))
        assert record["status"] == "ok"
        runs[mask] = out
    return runs


def test_mask_callback_writes_a_heatmap_per_validation(demo_runs):
    assert is_png(demo_runs["multilayer"] / "plots" / "mask_epoch000.png")
    assert not (demo_runs["none"] / "plots").exists()
    # the best checkpoint's re-validation after fit shows epoch 0's weights: no mask_epoch001
    assert sorted(p.name for p in (demo_runs["multilayer"] / "plots").iterdir()) == [
        "mask_epoch000.png"
    ]


def test_plot_attention_script_writes_histograms_and_the_mask_heatmap(demo_runs, tmp_path):
    from scripts.plot_attention import main

    stamp, full = demo_runs["multilayer"], demo_runs["none"]
    assert main([str(stamp), str(full), "--out", str(tmp_path), "--batch-size", "8"]) == 0
    assert is_png(tmp_path / "attention_hist.png")
    assert is_png(tmp_path / f"mask_{stamp.name}.png")
    assert not (tmp_path / f"mask_{full.name}.png").exists()  # full attention has no mask


def test_plot_depth_sweep_script_writes_a_png(demo_runs, tmp_path):
    from scripts.plot_depth_sweep import main

    assert main([str(d) for d in demo_runs.values()] + ["--out", str(tmp_path)]) == 0
    assert is_png(tmp_path / "depth_sweep.png")


def test_attention_weights_leave_padding_out():
    attn = torch.rand(2, 3, 5, 5).softmax(-1)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    weights = attention_weights({"attn": attn, "key_padding_mask": pad})
    assert weights.numel() == 3 * (25 + 9)  # heads x valid (query, key) pairs
    assert torch.equal(weights[:75].sort().values, attn[0].flatten().sort().values)


def test_layers_and_modality_boundaries():
    from tasks.demo.model import DemoClassifier

    assert pick_layers(12) == [0, 6, 11] and pick_layers(12, [0, 7, -1]) == [0, 7, 11]
    with pytest.raises(ValueError, match="out of range"):
        pick_layers(2, [5])
    net = DemoClassifier(
        visual_dim=4,
        audio_dim=4,
        max_visual=6,
        max_audio=5,
        num_classes=2,
        dim=8,
        num_layers=1,
        num_heads=2,
        ffn_dim=8,
    )
    assert modality_boundaries(net) == [1, 7]


def test_plot_mask_stats_script_from_a_checkpoint(demo_runs, tmp_path, monkeypatch):
    import json

    from scripts.plot_mask_stats import main
    from stamp.diagnostics import STAT_NAMES
    from tasks.common.reporting import plots

    titles: list[list[str]] = []
    save = plots._save

    def spy(fig, path):
        titles.append([ax.get_title() for ax in fig.axes])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    stamp = demo_runs["multilayer"]
    ckpt = stamp / "checkpoints" / "last.ckpt"
    assert main([str(ckpt), "--out", str(tmp_path), "--batch-size", "8"]) == 0
    assert is_png(tmp_path / "mask_layers.png") and is_png(tmp_path / "mask_stats.png")
    stats = json.loads((tmp_path / "mask_stats.json").read_text())
    assert list(stats) == ["encoder.layers.0.attn", "encoder.layers.1.attn"]
    trained = json.loads((stamp / "results.json").read_text())["mask_stats"]
    for layer, row in stats.items():
        assert set(STAT_NAMES) <= set(row)
        assert row["grad_norm_first"] == trained[layer]["grad_norm_first"] > 0
        # the demo labels its keys: where the mask puts its weight, plotted in a second row
        assert row["M_relevant"] is not None and row["attn_irrelevant_noM"] is not None
    assert "mean M on the keys of each category" in titles[-1]
    assert "attention per (query, key): relevant vs irrelevant" in titles[-1]
    # full attention: nothing to plot, a clear non-zero exit
    assert main([str(demo_runs["none"]), "--out", str(tmp_path / "none")]) == 1
