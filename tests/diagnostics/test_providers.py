"""The tasks that label their keys for the relevance diagnostics: the demo (event / decoy / noise
/ padding tokens), QVHighlights (clips inside / outside the ground-truth windows) and AVE (event /
background segments) give codes consistent with how their data is made and annotated, laid out
as the keys of the layers they describe."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stamp import MaskConfig, record_attention
from stamp.diagnostics import MaskStatistics, align_key_relevance, relevance_sums
from tasks.common.runtime.mask_stats import batch_key_relevance, key_categories

ROOT = Path(__file__).resolve().parents[2]
QVH_ANN = ROOT / "data" / "qvhighlights"


def nearest(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Max-abs distance of each row of x to its nearest prototype."""
    return (x[:, None] - prototypes[None]).abs().amax(-1).min(1).values


def test_demo_codes_follow_the_generated_tokens() -> None:
    from tasks.demo import data as demo

    k, num_classes = 3, 8
    # noise 0: noise tokens are exactly 0, decoys exactly a prototype, events prototype + salience
    t = demo.make_demo_split(40, seed=5, num_classes=num_classes, candidates=k, noise=0.0)
    gen = torch.Generator().manual_seed(5)  # make_demo_split's prototypes and salience
    p_vis = torch.randn(num_classes, 32, generator=gen)
    torch.randn(num_classes, 16, generator=gen)
    s_vis = 2.0 * torch.randn(32, generator=gen)
    codes, tokens, pad = t["visual_relevance"], t["visual"], t["visual_pad"]
    assert torch.equal(codes == demo.PADDING, pad)
    assert ((codes == demo.LABEL_EVENT).sum(1) == 1).all()
    assert ((codes == demo.OTHER_EVENT).sum(1) == k - 1).all()
    assert (tokens[codes == demo.NOISE] == 0).all()
    decoys = tokens[codes == demo.DECOY]
    assert len(decoys) and (nearest(decoys, p_vis) < 1e-5).all()
    label_events = tokens[codes == demo.LABEL_EVENT]  # one per clip, in clip order
    torch.testing.assert_close(label_events, p_vis[t["label"]] + s_vis)
    others = tokens[codes == demo.OTHER_EVENT] - s_vis
    assert (nearest(others, p_vis) < 1e-5).all()
    # a batch lays the codes out as DemoClassifier's keys: [CLS], visual, audio
    batch = demo.collate([demo.DemoDataset(t)[i] for i in range(4)])
    keys = batch_key_relevance(batch)
    assert keys.shape == (4, 1 + tokens.shape[1] + t["audio"].shape[1])
    assert (keys[:, 0] == demo.CLS).all()
    assert torch.equal(keys[:, 1 : 1 + tokens.shape[1]], codes[:4])
    assert torch.equal(keys[:, 1 + tokens.shape[1] :], t["audio_relevance"][:4])
    assert key_categories(demo.DemoDataModule()) is demo.KEY_CATEGORIES


def test_qvhighlights_clip_codes_are_the_annotated_clips() -> None:
    from tasks.qvhighlights.data import IN_WINDOW, OUTSIDE, clip_relevance
    from tasks.qvhighlights.metrics import load_jsonl

    rows = load_jsonl(QVH_ANN / "highlight_val_release.jsonl")
    for row in rows:  # windows on clip boundaries: exactly the annotated relevant_clip_ids
        n = int(row["duration"] / 2)
        codes = clip_relevance(row["relevant_windows"], n, 2.0)
        inside = set(torch.nonzero(codes == IN_WINDOW).flatten().tolist())
        assert inside == {c for c in row["relevant_clip_ids"] if c < n}, row["qid"]
        assert set(codes.tolist()) <= {IN_WINDOW, OUTSIDE}
    # a window off the clip grid: a clip is inside when its centre (1, 3, 5, 7, 9 s) is
    inside = [OUTSIDE, IN_WINDOW, IN_WINDOW, IN_WINDOW, OUTSIDE]
    assert clip_relevance([[2.5, 7.5]], 5, 2.0).tolist() == inside


@pytest.fixture(scope="module")
def qvh_synthetic(tmp_path_factory) -> Path:
    from tasks.qvhighlights.synthetic import write_synthetic_features

    out = tmp_path_factory.mktemp("qvh")
    files = [QVH_ANN / f"highlight_{s}_release.jsonl" for s in ("train", "val", "test")]
    write_synthetic_features(
        files, out, {"slowfast_features": 12, "clip_features": 8}, text_dim=6, seed=3, limit=6
    )
    return out


def test_qvhighlights_batch_labels_the_encoder_keys_only(qvh_synthetic) -> None:
    from tasks.qvhighlights import data as qvh
    from tasks.qvhighlights.model import QDDETR

    dm = qvh.QVHighlightsDataModule(
        annotation_dir=qvh_synthetic / "annotations",
        feature_dir=qvh_synthetic,
        v_feat_dim=20,
        t_feat_dim=6,
        num_workers=0,
        eval_batch_size=6,
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    codes = batch_key_relevance(batch)
    valid = batch["src_vid_mask"].bool()
    assert codes.shape == (6, 1 + valid.shape[1]) and (codes[:, 0] == qvh.GLOBAL_KEY).all()
    assert torch.equal(codes[:, 1:] == qvh.PADDING_KEY, ~valid)
    for i, meta in enumerate(batch["meta"]):
        inside = torch.nonzero(codes[i, 1:] == qvh.IN_WINDOW).flatten().tolist()
        assert inside == sorted(c for c in meta["relevant_clip_ids"] if c < int(valid[i].sum()))
    assert key_categories(dm) is qvh.KEY_CATEGORIES

    torch.manual_seed(0)
    model = QDDETR(20, 6, hidden_dim=16, num_heads=2, ffn_dim=32, mask=MaskConfig(depth=2))
    stats = MaskStatistics(model.eval())
    stats.set_key_relevance(codes, qvh.KEY_CATEGORIES)
    stats.start()
    with torch.no_grad():
        model(*(batch[k] for k in ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")), False)
    stats.stop()
    summary = stats.summary()
    labelled = [name for name, row in summary.items() if "M_relevant" in row]
    assert labelled == [n for n in summary if n.startswith("encoder.")] and labelled
    assert not any("M_relevant" in row for n, row in summary.items() if n.startswith("t2v"))
    for name in labelled:
        row = summary[name]
        assert row["share_global"] + row["share_in_window"] + row["share_outside"] == (
            pytest.approx(1.0)
        )


def test_ave_codes_are_the_annotated_segments(tmp_path) -> None:
    from scripts.make_ave_data import make_dataset
    from tasks.ave import data as ave

    root = make_dataset(tmp_path / "ave", videos=4, split=(2, 1, 1))
    dm = ave.AVEDataModule(str(root), batch_size=2, num_workers=0, check_media=False)
    dm.setup("fit")
    rows = ave.read_annotations(root / "Annotations.txt")[0]
    data = dm.sets["train"]
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    codes = batch_key_relevance(batch)
    assert codes.shape == (2, 10, 1)
    for i, row in enumerate(data.rows):
        a = rows[int(row)]
        expected = [
            ave.EVENT_SEGMENT if int(a.start) <= t < int(a.end) else ave.BACKGROUND_SEGMENT
            for t in range(10)
        ]
        assert codes[i, :, 0].tolist() == expected
    assert key_categories(dm) is ave.KEY_CATEGORIES


def test_ave_vit_layers_get_the_segment_codes() -> None:
    from tasks.ave import data as ave
    from tasks.ave.models import build_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(
            {"name": "mbt", "vit": "tiny", "vit_depth": 2, "img_size": 32},
            mask_cfg=MaskConfig(type="multilayer", depth=2, init="kaiming"),
        ).eval()
    B, T = 2, 3
    labels = F.one_hot(torch.tensor([[3, 28, 5], [28, 7, 28]]), 29).float()
    codes = ave.segment_relevance(labels.flatten(0, 1)).reshape(B, T, 1)
    audio, frames = torch.randn(B, T, 32, 32), torch.randn(B, T, 3, 32, 32)
    stats = MaskStatistics(model)
    stats.set_key_relevance(codes, ave.KEY_CATEGORIES)
    stats.start()
    with torch.no_grad(), record_attention(model) as records:
        model(audio, frames)
    stats.stop()
    summary = stats.summary()
    assert summary and all("M_event" in row for row in summary.values())
    # pooled over both streams' calls of a block, each of B x T sequences in (video, segment)
    # order: the same numbers from the recorded attention with explicitly expanded codes
    name = next(iter(summary))
    calls = [r for r in records if r["name"] == name]
    assert len(calls) == 1 and calls[0]["attn"].shape[0] == B * T  # MBT: one ViT per stream
    rec = calls[0]
    n_keys = rec["attn"].shape[-1]
    rows = (labels.argmax(-1).flatten() == 28).long()  # 1 = background, per (video, segment)
    explicit = rows[:, None].expand(B * T, n_keys)
    assert torch.equal(align_key_relevance(codes, B * T, n_keys), explicit)
    sums = relevance_sums(rec["mask"], rec["attn"], rec["attn_unmasked"], explicit, 2)
    assert summary[name]["M_background"] == pytest.approx(float(sums["M"][1] / sums["M_count"][1]))
