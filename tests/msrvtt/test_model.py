"""SwinBERT model: BERT weights load into the STAMP layers unchanged, Video Swin tokens, the
masked-token head, and decoding consistent with training."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from stamp import MaskConfig
from tasks.msrvtt.model import VideoSwinBackbone, caption_video_layout, layout_bias
from tests.msrvtt.conftest import IMG_RES, MAX_TEXT, N_VIDEO, NUM_FRAMES, TINY_BACKBONE, TINY_BERT


def _frames(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, NUM_FRAMES, 3, IMG_RES, IMG_RES, generator=g)


def test_encoder_equals_hf_bert_with_the_same_weights(tiny_data, make_model, tmp_path):
    """A saved HF BERT folder loads into our StampEncoderLayers: same outputs as HF's encoder."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, **TINY_BERT["config"])
    hf = BertForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path / "bert")
    model = make_model("none", bert={"path": str(tmp_path / "bert"), "config": None}).eval()
    torch.testing.assert_close(
        model.embeddings.word_embeddings.weight, hf.bert.embeddings.word_embeddings.weight
    )
    torch.testing.assert_close(model.head.decoder.weight, hf.cls.predictions.decoder.weight)
    assert model.head.decoder.weight is not model.embeddings.word_embeddings.weight  # untied
    x = torch.randn(2, MAX_TEXT + N_VIDEO, cfg.hidden_size)
    bias = layout_bias(caption_video_layout(torch.tensor([5, MAX_TEXT]), MAX_TEXT, N_VIDEO))
    ours, theirs = x, x
    with torch.no_grad():
        for layer, hf_layer in zip(model.layers, hf.bert.encoder.layer, strict=True):
            ours = layer(ours, attn_bias=bias)
            out = hf_layer(theirs, attention_mask=bias)
            theirs = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_missing_checkpoints_name_the_config_key(tiny_data, make_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bert.path"):
        make_model(bert={"path": str(tmp_path / "nope"), "config": None})
    with pytest.raises(FileNotFoundError, match="model.backbone.weights"):
        make_model(backbone={**TINY_BACKBONE, "weights": str(tmp_path / "swin.pth")})
    with pytest.raises(FileNotFoundError, match="tokenizer_path"):
        make_model(tokenizer_path=str(tmp_path))


def test_video_swin_tokens_and_weight_loading(tmp_path):
    torch.manual_seed(0)
    source = VideoSwinBackbone(**TINY_BACKBONE)
    torch.save(source.swin.state_dict(), tmp_path / "swin.pth")
    loaded = VideoSwinBackbone(**TINY_BACKBONE, weights=str(tmp_path / "swin.pth")).eval()
    source.eval()
    frames = _frames()
    tokens = loaded(frames)
    assert tokens.shape == (2, N_VIDEO, loaded.out_dim)
    assert loaded.num_tokens(NUM_FRAMES, IMG_RES) == N_VIDEO
    torch.testing.assert_close(tokens, source(frames))
    # the paper's setting: 32 frames at 224 -> 16 x 7 x 7 = 784 tokens (Video Swin-B, 1024-d)
    with torch.device("meta"):  # structure only, no 88M-parameter initialisation
        swin_b = VideoSwinBackbone("swin3d_b")
    assert swin_b.num_tokens(32, 224) == 784 and swin_b.out_dim == 1024


def test_masked_token_head_and_decoding_agree(make_model):
    """The next-token distribution of decoding is the training forward's at the [MASK] slot."""
    model = make_model("multilayer").eval()
    frames = _frames(batch=1)
    prefix = torch.tensor([[model.cls_id, 7, 9]])
    with torch.no_grad():
        logp = model._next_token_logprobs(model.encode_video(frames), prefix)
        ids = torch.cat([prefix, torch.tensor([[model.mask_id]])], dim=1)
        masked_pos = torch.zeros_like(ids, dtype=torch.bool)
        masked_pos[0, -1] = True
        logits = model(frames, ids, torch.tensor([4]), masked_pos)
    torch.testing.assert_close(logp, logits.log_softmax(-1))


@pytest.mark.parametrize("mask", ["none", "sparse", "global", "multilayer"])
def test_every_mask_trains_and_decodes(make_model, mask):
    model = make_model(mask)
    frames = _frames()
    ids = torch.randint(5, 20, (2, MAX_TEXT))
    masked_pos = torch.zeros(2, MAX_TEXT, dtype=torch.bool)
    masked_pos[0, [1, 3]] = masked_pos[1, 2] = True
    logits = model(frames, ids, torch.tensor([6, MAX_TEXT]), masked_pos)
    assert logits.shape == (3, len(model.tokenizer))
    logits.sum().backward()
    assert model.backbone.swin.patch_embed.proj.weight.grad is not None
    model.eval()
    rows = model.generate(frames)
    if mask == "multilayer":  # beam search once: the decoding loop is the same for every mask
        rows += model.generate(frames, num_beams=3)
    assert len(rows) in (2, 4)
    for row in rows:
        assert len(row) <= model.max_gen_len - 1
        assert model.sep_id not in row and model.pad_id not in row


def test_stamp_generators_see_the_video_block(make_model):
    multi = make_model("multilayer")
    assert len(multi.mask_generators) == len(multi.layers)
    assert all(g.n_max == N_VIDEO and g.depth == 2 for g in multi.mask_generators)
    glob = make_model("global")
    assert glob.mask_generator is not None and len(glob.mask_generators) == 0
    full = make_model("multilayer", stamp_scope="full")
    assert full.mask_generators[0].n_max == MAX_TEXT + N_VIDEO
    full.eval()
    assert len(full.generate(_frames(batch=1))) == 1  # decoding pads captions to max_text_len


def test_unsupported_settings_fail_clearly(make_model):
    with pytest.raises(ValueError, match="task=msrvtt supports"):
        make_model(mask_cfg=MaskConfig(type="extra_linear", depth=2))
    with pytest.raises(ValueError, match="stamp_scope"):
        make_model(stamp_scope="rows")
    with pytest.raises(ValueError, match="sdpa"):
        make_model("multilayer", attention={"backend": "sdpa"})


@pytest.mark.parametrize("mask", ["sparse", "multilayer"])
def test_sdpa_backend_matches_eager(make_model, mask):
    """The structural bias (and an additive M) run through SDPA with the same result."""
    cfg = MaskConfig(type=mask, depth=2, fusion="add")
    eager = make_model(mask_cfg=cfg).eval()
    sdpa = make_model(mask_cfg=cfg, attention={"backend": "sdpa"}).eval()
    sdpa.load_state_dict(eager.state_dict())
    frames = _frames()
    ids = torch.randint(5, 20, (2, MAX_TEXT))
    text_len = torch.tensor([5, MAX_TEXT])
    with torch.no_grad():
        video = eager.encode_video(frames)
        ours = eager.encode(video, ids, text_len)
        theirs = sdpa.encode(video, ids, text_len)
    torch.testing.assert_close(ours[0, :5], theirs[0, :5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, MAX_TEXT:], theirs[:, MAX_TEXT:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=1e-4)
