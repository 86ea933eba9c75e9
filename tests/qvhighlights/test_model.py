"""QD-DETR + STAMP: Hungarian matcher vs. brute force, losses, padding invariance, STAMP
placement, and a tiny model overfitting a few queries of synthetic features."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from stamp import MaskConfig, MaskGenerator, record_attention
from tasks.qvhighlights.data import QVHighlightsDataModule, collate
from tasks.qvhighlights.losses import QDDETRLoss
from tasks.qvhighlights.matcher import HungarianMatcher, matching_cost
from tasks.qvhighlights.metrics import eval_submission
from tasks.qvhighlights.model import QDDETR
from tasks.qvhighlights.submission import postprocess_windows, submission_rows
from tasks.qvhighlights.synthetic import write_synthetic_features

ANN = Path(__file__).resolve().parents[2] / "data" / "qvhighlights"
TINY = dict(hidden_dim=32, num_heads=4, ffn_dim=64, max_v_l=75, max_q_l=32)
INPUTS = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")


def tiny_model(mask: str = "multilayer", **kw) -> QDDETR:
    return QDDETR(12, 6, mask=MaskConfig(type=mask, depth=2), **{**TINY, **kw})


def random_batch(B: int = 3, lv=(20, 15, 9), lt=(7, 5, 3)) -> dict:
    g = torch.Generator().manual_seed(0)
    vid_mask = torch.zeros(B, max(lv))
    txt_mask = torch.zeros(B, max(lt))
    for i in range(B):
        vid_mask[i, : lv[i]] = 1
        txt_mask[i, : lt[i]] = 1
    return {
        "src_vid": torch.randn(B, max(lv), 14, generator=g) * vid_mask[..., None],
        "src_vid_mask": vid_mask,
        "src_txt": torch.randn(B, max(lt), 6, generator=g) * txt_mask[..., None],
        "src_txt_mask": txt_mask,
    }


@pytest.mark.parametrize("seed", range(5))
def test_matcher_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, Q = 3, 5
    logits = torch.randn(B, Q, 2, generator=g)
    spans = torch.rand(B, Q, 2, generator=g) * 0.5 + 0.1
    targets = [torch.rand(n, 2, generator=g) * 0.5 + 0.1 for n in (1, 3, 2)]
    matcher = HungarianMatcher()
    for b, (rows, cols) in enumerate(matcher(logits, spans, targets)):
        cost = matching_cost(logits[b], spans[b], targets[b], 4, 10, 1)
        assert sorted(cols.tolist()) == list(range(len(targets[b])))
        got = cost[rows, cols].sum()
        best = min(
            sum(cost[q, t] for t, q in enumerate(perm))
            for perm in itertools.permutations(range(Q), len(targets[b]))
        )
        assert got == pytest.approx(float(best), abs=1e-5)


def test_forward_shapes_losses_and_no_padding_leak():
    torch.manual_seed(0)
    # the corrected T2V mask (the official one lets padding of other samples in: see
    # test_official_equivalence.py)
    model = tiny_model(official_padding_bug=False).eval()
    batch = random_batch()
    with torch.no_grad():
        out = model(**{k: batch[k] for k in INPUTS})
        # item 2 alone (no padding) gives the same outputs as inside the padded batch
        single = {
            k: v[
                2:3,
                : int(
                    batch[
                        k.replace("src_vid", "src_vid_mask")
                        .replace("src_txt", "src_txt_mask")
                        .replace("_mask_mask", "_mask")
                    ][2].sum()
                ),
            ]
            for k, v in batch.items()
        }
        alone = model(**single, with_negative=False)
    torch.testing.assert_close(alone["pred_spans"], out["pred_spans"][2:3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        alone["saliency_scores"], out["saliency_scores"][2:3, :9], atol=1e-5, rtol=1e-4
    )
    assert out["pred_logits"].shape == (3, 10, 2) and len(out["aux_outputs"]) == 1
    assert out["saliency_scores_neg"].shape == out["saliency_scores"].shape

    model.train()
    out = model(**{k: batch[k] for k in INPUTS})
    targets = {
        "span_labels": [
            torch.tensor([[0.3, 0.2]]),
            torch.tensor([[0.2, 0.1], [0.7, 0.2]]),
            torch.tensor([[0.5, 0.5]]),
        ],
        "saliency_pos_labels": torch.tensor([[3, 4], [1, 2], [0, 1]]),
        "saliency_neg_labels": torch.tensor([[10, 11], [8, 9], [5, 6]]),
        "saliency_all_labels": torch.cat([torch.full((3, 5), 8.0), torch.zeros(3, 15)], 1),
    }
    losses = QDDETRLoss()(out, targets)
    expected = {"loss_span", "loss_giou", "loss_label", "loss_saliency", "loss_span_0", "loss"}
    assert expected <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(torch.isfinite(g).all()) for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize(
    ("layers", "n_generators"), [(["t2v", "self"], 4), (["t2v"], 2), (["self"], 2), ([], 0)]
)
def test_stamp_layers_place_the_generators(layers, n_generators):
    model = tiny_model(stamp_layers=layers)
    gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert len(gens) == n_generators
    assert {g.n_max for g in gens} <= {32, 76}  # text keys (T2V) / [global, 75 clips] (self)
    batch = random_batch()
    with record_attention(model) as records:
        model(**{k: batch[k] for k in INPUTS}, with_negative=False)
    with_mask = {r["name"].split(".")[0] for r in records if r["mask"] is not None}
    expected = {"t2v_layers": "t2v" in layers, "encoder": "self" in layers}
    assert with_mask == {name for name, on in expected.items() if on}


def test_unknown_stamp_group_and_long_query_fail_clearly():
    with pytest.raises(ValueError, match="stamp_layers"):
        tiny_model(stamp_layers=["decoder"])
    batch = random_batch(lt=(40, 5, 3))
    with pytest.raises(ValueError, match="max_q_l=32"):
        tiny_model()(**{k: batch[k] for k in INPUTS})


def test_postprocess_clamps_and_rounds_to_clips():
    w = postprocess_windows(torch.tensor([[-3.0, 5.1], [149.0, 170.0], [3.0, 5.0]]))
    assert w.tolist() == [[0.0, 6.0], [148.0, 150.0], [4.0, 4.0]]  # round half to even


def test_tiny_model_overfits_a_few_queries(tmp_path):
    files = [ANN / "highlight_train_release.jsonl"]
    write_synthetic_features(
        files, tmp_path, {"slowfast_features": 16, "clip_features": 8}, text_dim=8, seed=0, limit=8
    )
    dm = QVHighlightsDataModule(tmp_path / "annotations", tmp_path, 24, 8, num_workers=0)
    ds = dm.split("train")
    rows = ds.rows
    torch.manual_seed(0)
    model = QDDETR(
        24, 8, mask=MaskConfig(type="multilayer", depth=2), dropout=0.0, input_dropout=0.0, **TINY
    )
    criterion = QDDETRLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)

    def r1_at_05() -> float:
        model.eval()
        batch = collate([ds[i] for i in range(len(ds))])
        with torch.no_grad():
            out = model(**{k: batch[k] for k in INPUTS}, with_negative=False)
        sub = submission_rows(
            batch["meta"],
            out["pred_logits"],
            out["pred_spans"],
            out["saliency_scores"],
            batch["src_vid_mask"],
        )
        model.train()
        return eval_submission(sub, rows)["brief"]["MR-full-R1@0.5"]

    before = r1_at_05()
    losses = []
    for _ in range(150):
        batch = collate([ds[i] for i in range(len(ds))])
        loss = criterion(model(**{k: batch[k] for k in INPUTS}), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    after = r1_at_05()
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert after >= 75.0 and after >= before + 50  # chance: 0-25 on these 8 queries


def test_sdpa_backend_matches_eager_and_sdpa_mul_fails_at_construction():
    from stamp import AttentionConfig

    torch.manual_seed(0)
    add = MaskConfig(type="multilayer", depth=2, fusion="add")
    eager = QDDETR(12, 6, mask=add, **TINY).eval()
    sdpa = QDDETR(12, 6, mask=add, attention=AttentionConfig(backend="sdpa"), **TINY).eval()
    sdpa.load_state_dict(eager.state_dict())
    batch = random_batch()
    with torch.no_grad():
        a = eager(**{k: batch[k] for k in INPUTS})
        b = sdpa(**{k: batch[k] for k in INPUTS})
    torch.testing.assert_close(a["pred_spans"], b["pred_spans"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a["saliency_scores"], b["saliency_scores"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="sdpa cannot fuse a multiplicative mask"):
        QDDETR(
            12,
            6,
            mask=MaskConfig(type="multilayer", depth=2),
            attention=AttentionConfig(backend="sdpa"),
            **TINY,
        )


@pytest.mark.parametrize(
    "mask", ["none", "global", "multilayer", "sparse", "extra_linear", "extra_layers"]
)
def test_every_mask_type_builds_and_runs(mask):
    from stamp import mask_parameter_count

    model = tiny_model(mask)
    batch = random_batch()
    out = model(**{k: batch[k] for k in INPUTS})
    assert torch.isfinite(out["pred_spans"]).all() and torch.isfinite(out["saliency_scores"]).all()
    assert (mask_parameter_count(model) > 0) == (mask != "none")
