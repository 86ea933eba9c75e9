"""The SwinBERT attention layout: caption causal, caption->video full, video->video learned,
video->caption none; and where the STAMP mask sits in it."""

from __future__ import annotations

import torch

from stamp import Fusion, MaskConfig, record_attention
from tasks.msrvtt.model import NEG, caption_video_layout, embed_block_mask, layout_bias
from tests.msrvtt.conftest import IMG_RES, MAX_TEXT, N_VIDEO, NUM_FRAMES


def test_layout_matrix_by_hand():
    # 4 caption slots (first sample: 3 valid tokens, second: 4), 2 video tokens
    allow = caption_video_layout(torch.tensor([3, 4]), max_text=4, n_video=2).int()
    expected_3 = torch.tensor(
        [
            # c0 c1 c2 c3 v0 v1
            [1, 0, 0, 0, 1, 1],  # c0: itself (causal) + all video
            [1, 1, 0, 0, 1, 1],
            [1, 1, 1, 0, 1, 1],
            [0, 0, 0, 0, 0, 0],  # padded caption slot: attends to nothing
            [0, 0, 0, 0, 1, 1],  # video: no caption, full video (the learned block)
            [0, 0, 0, 0, 1, 1],
        ]
    )
    expected_4 = expected_3.clone()
    expected_4[3] = torch.tensor([1, 1, 1, 1, 1, 1])
    assert torch.equal(allow[0], expected_3)
    assert torch.equal(allow[1], expected_4)
    bias = layout_bias(allow.bool())
    assert bias.shape == (2, 1, 6, 6)
    assert torch.equal(bias[:, 0], NEG * (1 - allow).float())


def test_block_mask_is_identity_outside_the_video_block():
    block = torch.randn(2, 3, 3)
    mul = embed_block_mask(block, offset=4, fusion=Fusion.mul)
    add = embed_block_mask(block, offset=4, fusion=Fusion.add)
    assert mul.shape == add.shape == (2, 7, 7)
    assert torch.equal(mul[:, 4:, 4:], block) and torch.equal(add[:, 4:, 4:], block)
    outside = torch.ones(7, 7, dtype=torch.bool)
    outside[4:, 4:] = False
    assert torch.all(mul[:, outside] == 1.0) and torch.all(add[:, outside] == 0.0)


def _inputs(batch: int = 2, text: int = MAX_TEXT):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, NUM_FRAMES, 3, IMG_RES, IMG_RES, generator=g)
    ids = torch.randint(5, 20, (batch, text), generator=g)
    return frames, ids


def test_model_attention_follows_the_layout(make_model):
    """Recorded probabilities vanish where the layout forbids; M covers only the video block."""
    model = make_model("multilayer").eval()
    frames, ids = _inputs()
    text_len = torch.tensor([5, MAX_TEXT])
    with torch.no_grad(), record_attention(model) as records:
        model.encode(model.encode_video(frames), ids, text_len)
    assert len(records) == len(model.layers)
    allow = caption_video_layout(text_len, MAX_TEXT, N_VIDEO)
    for rec in records:
        probs = rec["attn"]  # (B, H, N, N)
        forbidden = ~allow[:, None].expand_as(probs)
        valid_rows = torch.ones_like(forbidden)
        valid_rows[0, :, 5:MAX_TEXT] = False  # padded caption rows are never read
        assert probs[forbidden & valid_rows].abs().max() < 1e-30
        mask = rec["mask"]  # (B, N, N): STAMP's M, identity (1, mul) outside the video block
        assert mask.shape == (2, MAX_TEXT + N_VIDEO, MAX_TEXT + N_VIDEO)
        assert torch.all(mask[:, :MAX_TEXT, :] == 1) and torch.all(mask[:, :, :MAX_TEXT] == 1)
        assert not torch.all(mask[:, MAX_TEXT:, MAX_TEXT:] == 1)


def test_outputs_do_not_depend_on_caption_padding(make_model):
    """Valid caption rows and all video rows are the same whatever the padding or the text."""
    model = make_model("multilayer", mask_cfg=MaskConfig(type="multilayer", depth=2, fusion="add"))
    model.eval()
    frames, ids = _inputs(batch=1)
    video = model.encode_video(frames)
    with torch.no_grad():
        short = model.encode(video, ids[:, :6], torch.tensor([4]))
        padded = model.encode(video, ids, torch.tensor([4]))
        other_text = model.encode(video, ids.flip(1), torch.tensor([4]))
    torch.testing.assert_close(short[:, :4], padded[:, :4])
    torch.testing.assert_close(short[:, 6:], padded[:, MAX_TEXT:])  # video rows
    torch.testing.assert_close(other_text[:, MAX_TEXT:], padded[:, MAX_TEXT:])
