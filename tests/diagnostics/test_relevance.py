"""Where the mask puts its weight: the relevance statistics against hand-computed values."""

from __future__ import annotations

import logging

import pytest
import torch

from stamp import MaskConfig, StampEncoder
from stamp.diagnostics import (
    KeyCategories,
    MaskStatistics,
    align_key_relevance,
    relevance_statistics,
    relevance_sums,
)

CATS = KeyCategories(names=("a", "b", "pad"), relevant=("a",), irrelevant=("b",))
MASK = torch.tensor([[[2.0, 1.0, 0.0, 9.0], [4.0, 3.0, -1.0, 9.0]]])  # (1, 2 queries, 4 keys)
PROBS = torch.tensor([[[[0.5, 0.25, 0.25, 0.0], [0.2, 0.3, 0.5, 0.0]]]])  # (1, 1 head, 2, 4)
UNIFORM = torch.tensor([[[[1 / 3, 1 / 3, 1 / 3, 0.0]] * 2]])
CODES = torch.tensor([[0, 1, 1, 2]])  # key 0 is "a", keys 1-2 "b", key 3 padding


def stats(mask=MASK, probs=PROBS, unmasked=UNIFORM, codes=CODES, query_valid=None):
    return relevance_statistics(relevance_sums(mask, probs, unmasked, codes, 3, query_valid), CATS)


def test_hand_computed_values() -> None:
    s = stats()
    assert s["M_relevant"] == s["M_a"] == pytest.approx((2 + 4) / 2)
    assert s["M_irrelevant"] == s["M_b"] == pytest.approx((1 + 0 + 3 - 1) / 4)
    assert s["M_pad"] == pytest.approx(9.0)  # M on padded keys is reported, not grouped
    assert s["attn_relevant"] == pytest.approx((0.5 + 0.2) / 2)
    assert s["attn_irrelevant"] == pytest.approx((0.25 + 0.25 + 0.3 + 0.5) / 4)
    assert s["attn_relevant_noM"] == pytest.approx(1 / 3)
    assert s["attn_irrelevant_noM"] == pytest.approx(1 / 3)
    assert s["share_relevant"] == pytest.approx((0.5 + 0.2) / 2)
    assert s["share_irrelevant"] == pytest.approx((0.5 + 0.8) / 2)
    assert s["share_irrelevant_noM"] == pytest.approx(2 / 3)
    assert s["attn_pad"] == 0.0 and s["share_pad_noM"] == 0.0


def test_invalid_queries_do_not_count() -> None:
    s = stats(query_valid=torch.tensor([[True, False]]))
    assert s["M_relevant"] == pytest.approx(2.0) and s["M_irrelevant"] == pytest.approx(0.5)
    assert s["attn_relevant"] == pytest.approx(0.5) and s["share_irrelevant"] == pytest.approx(0.5)


def test_per_head_masks_and_pooling_weigh_every_entry() -> None:
    # two heads: head 0 sees MASK, head 1 the negated mask -> M per category averages to 0
    per_head = torch.stack([MASK, -MASK], dim=1)
    probs = PROBS.expand(1, 2, 2, 4)
    s = stats(per_head, probs, UNIFORM.expand(1, 2, 2, 4))
    assert s["M_relevant"] == pytest.approx(0.0) and s["M_irrelevant"] == pytest.approx(0.0)
    assert s["attn_relevant"] == pytest.approx(0.35)
    # pooled over two calls: the means of all entries, not the mean of the two calls' means
    first = relevance_sums(MASK, PROBS, UNIFORM, CODES, 3)
    second = relevance_sums(MASK, PROBS, UNIFORM, torch.tensor([[1, 1, 1, 2]]), 3)
    pooled = {k: first[k] + second[k] for k in first}
    s = relevance_statistics(pooled, CATS)
    assert s["M_relevant"] == pytest.approx(3.0)  # the second call has no "a" key
    assert s["M_irrelevant"] == pytest.approx((1 + 0 + 3 - 1 + 2 + 1 + 0 + 4 + 3 - 1) / 10)
    assert s["share_relevant"] == pytest.approx((0.5 + 0.2) / 4)  # 4 rows, 2 without an "a"


def test_a_group_without_keys_is_none_and_codes_are_checked() -> None:
    s = stats(codes=torch.tensor([[1, 1, 1, 2]]))
    assert s["M_relevant"] is None and s["attn_relevant_noM"] is None
    assert s["share_relevant"] == 0.0
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\)"):
        stats(codes=torch.tensor([[0, 1, 3, 2]]))


def test_alignment_to_a_layer() -> None:
    codes = torch.tensor([[0, 1, 2], [1, 1, 0]])
    assert torch.equal(align_key_relevance(codes, 2, 3), codes)
    assert align_key_relevance(codes, 2, 4) is None  # another sequence (e.g. text keys)
    assert align_key_relevance(codes, 3, 3) is None
    # AVE: (B, T, 1) segment codes for a ViT over B x T sequences of any length
    segments = torch.tensor([[[0], [1]], [[1], [0]]])
    aligned = align_key_relevance(segments, 4, 5)
    assert aligned.shape == (4, 5) and aligned[:, 0].tolist() == [0, 1, 1, 0]
    assert (aligned == aligned[:, :1]).all()
    with pytest.raises(ValueError, match="key_relevance must be"):
        align_key_relevance(torch.tensor([0, 1]), 1, 2)


def test_categories_are_validated() -> None:
    with pytest.raises(ValueError, match="must be distinct"):
        KeyCategories(names=("a", "relevant"), relevant=("a",), irrelevant=("relevant",))
    with pytest.raises(ValueError, match="KeyCategories.irrelevant must name"):
        KeyCategories(names=("a", "b"), relevant=("a",), irrelevant=("c",))
    with pytest.raises(ValueError, match="relevant and irrelevant"):
        KeyCategories(names=("a", "b"), relevant=("a", "b"), irrelevant=("b",))


def test_mask_statistics_of_an_encoder(caplog) -> None:
    torch.manual_seed(0)
    x, pad = torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    codes = torch.tensor([[0, 1, 0, 1, 2, 2], [1, 1, 0, 0, 1, 1]])
    for init in ("identity", "kaiming"):
        enc = StampEncoder(2, 16, 4, 32, n_max=6, mask=MaskConfig(depth=2, init=init)).eval()
        st = MaskStatistics(enc)
        st.set_key_relevance(codes, CATS)
        st.start()
        with torch.no_grad():
            enc(x, key_padding_mask=pad)
        st.stop()
        for row in st.summary().values():
            if init == "identity":  # M == 1: the same attention with and without it
                assert row["M_relevant"] == pytest.approx(1.0)
                assert row["attn_relevant"] == pytest.approx(row["attn_relevant_noM"])
            else:
                assert row["attn_relevant"] != pytest.approx(row["attn_relevant_noM"])
            shares = row["share_a"] + row["share_b"] + row["share_pad"]
            assert shares == pytest.approx(1.0) and row["share_pad"] == pytest.approx(0.0)
    # codes that fit no layer: a warning, and no relevance keys
    st = MaskStatistics(enc)
    st.set_key_relevance(codes[:, :5], CATS)
    st.start()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        enc(x, key_padding_mask=pad)
    st.stop()
    assert "does not fit its attention" in caplog.text
    assert not any(k.startswith("M_") for row in st.summary().values() for k in row)
    with pytest.raises(ValueError, match="needs its KeyCategories"):
        st.set_key_relevance(codes, None)
