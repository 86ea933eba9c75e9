"""Task code of Fig. S8 (credits audio at evaluation) and Fig. 1(c) (encoder sparsity knob)."""

from __future__ import annotations

import h5py
import pytest
import torch
from mad_testing import TINY_AV, make_model

from tasks.mad_ad.data import MadADDataModule
from tasks.mad_ad.model import SPARSE_NEG, sparse_attention_bias


def datamodule(mad_dir, tiny_llama, **kwargs) -> MadADDataModule:
    return MadADDataModule(
        "CLIP_frames_features_5fps.h5",
        "openl3_audio_features_5hz.h5",
        "mad-v2-ad-unnamed.csv",
        str(tiny_llama),
        root=str(mad_dir),
        test_movies="test_movies.txt",
        num_workers=0,
        batch_size=4,
        tokens_per_modality=TINY_AV["tokens_per_modality"],
        **kwargs,
    )


def test_credits_audio_replaces_only_the_evaluation_audio(mad_dir, tiny_llama):
    s = TINY_AV["tokens_per_modality"]
    aligned = datamodule(mad_dir, tiny_llama)
    credits = datamodule(mad_dir, tiny_llama, eval_audio="credits")
    val_a, val_c = aligned.dataset("val"), credits.dataset("val")
    with h5py.File(mad_dir / "openl3_audio_features_5hz.h5") as audio:
        for i in (0, len(val_c) - 1):
            a, c = val_a[i], val_c[i]
            last = torch.from_numpy(audio[c["movie"]][-s:]).float()
            assert torch.equal(c["audio"], last)  # the movie's last S audio tokens
            assert torch.equal(c["visual"], a["visual"])  # the video is unchanged
            assert not torch.equal(c["audio"], a["audio"])
    # training reads the aligned audio whatever eval_audio says
    assert torch.equal(credits.dataset("train")[0]["audio"], aligned.dataset("train")[0]["audio"])
    with pytest.raises(ValueError, match="eval_audio"):
        datamodule(mad_dir, tiny_llama, eval_audio="music")


def test_sparse_attention_bias_removes_the_asked_fraction():
    n = 50
    assert sparse_attention_bias(n, 0.0) is None
    for sparsity in (0.25, 0.9):
        bias = sparse_attention_bias(n, sparsity)
        removed = bias == SPARSE_NEG
        assert removed.sum() == round(sparsity * n * (n - 1))
        assert not removed.diagonal().any()  # every token keeps itself
        assert torch.equal(bias, sparse_attention_bias(n, sparsity))  # fixed pattern
    with pytest.raises(ValueError, match="encoder_sparsity"):
        sparse_attention_bias(n, 1.0)


def test_encoder_sparsity_changes_the_av_encoding(tiny_llama):
    torch.manual_seed(0)
    dense = make_model(tiny_llama, mask="none")
    torch.manual_seed(0)
    sparse = make_model(tiny_llama, mask="none", encoder_sparsity=0.75)
    assert sparse.av_encoder.sparse_bias is not None and dense.av_encoder.sparse_bias is None
    s, d = TINY_AV["tokens_per_modality"], TINY_AV["visual_dim"]
    visual, audio = torch.randn(2, s, d), torch.randn(2, s, d)
    with torch.no_grad():
        out_dense = dense.av_encoder(visual, audio)
        out_sparse = sparse.av_encoder(visual, audio)
        # reference: the same encoder fed the bias by hand
        encoder = dense.av_encoder
        x = torch.cat(
            [
                encoder.visual_proj(visual) + encoder.position + encoder.modality[0],
                encoder.audio_proj(audio) + encoder.position + encoder.modality[1],
            ],
            dim=1,
        )
        by_hand = encoder.encoder(x, attn_bias=sparse_attention_bias(2 * s, 0.75))
    assert torch.allclose(out_sparse, by_hand, atol=1e-6)
    assert not torch.allclose(out_sparse, out_dense, atol=1e-4)
