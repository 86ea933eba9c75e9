"""SwinBERT's learnable sparse mask (mask=sparse) against its definition.

SwinBERT (``video_captioning_e2e_vid_swin_bert.py``): A = sigmoid(W) off the diagonal, 1 on it,
written into the video block of the 0/1 attention mask; BERT turns the mask into the additive
bias (1 - mask) * -10000; the loss is mean(|(1 - I) * sigmoid(W)|) over all V x V entries,
weighted by ``--loss_sparse_w`` (0.5).
"""

from __future__ import annotations

import math

import torch

from stamp import SparseMask
from tasks.msrvtt.model import caption_video_layout
from tests.msrvtt.conftest import MAX_TEXT, N_VIDEO

LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25, sigmoid(0) = 0.5


def test_sparse_mask_hand_checked_example():
    sparse = SparseMask(3)
    with torch.no_grad():
        sparse.weight.copy_(torch.tensor([[9.0, LN3, -LN3], [0.0, -9.0, LN3], [-LN3, 0.0, 0.0]]))
    expected_a = torch.tensor([[1.0, 0.75, 0.25], [0.5, 1.0, 0.75], [0.25, 0.5, 1.0]])
    torch.testing.assert_close(sparse.probabilities(), expected_a)
    torch.testing.assert_close(sparse(), -1e4 * (1.0 - expected_a))
    # off-diagonal A sums to 0.75 + 0.25 + 0.5 + 0.75 + 0.25 + 0.5 = 3; the mean runs over 9
    torch.testing.assert_close(sparse.sparsity_loss(), torch.tensor(3.0 / 9.0))


def swinbert_reference_bias(text_len: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SwinBERT's own construction, step by step: 0/1 mask, learned block, BERT's extension."""
    v = weight.shape[0]
    attention_mask = caption_video_layout(text_len, MAX_TEXT, v).float()
    learn_att = torch.sigmoid(weight)
    diag_mask = torch.diag(torch.ones(v))
    video_attention = (1.0 - diag_mask) * learn_att
    learn_att = diag_mask + video_attention
    attention_mask[:, -v:, -v:] = learn_att
    return ((1.0 - attention_mask) * -10000.0).unsqueeze(1)


def test_model_sparse_bias_and_loss_match_swinbert(make_model):
    model = make_model("sparse")
    assert model.sparse_mask is not None and model.sparse_mask.n_max == N_VIDEO
    text_len = torch.tensor([4, MAX_TEXT])
    ours = model.attention_bias(text_len, MAX_TEXT, torch.float32)
    reference = swinbert_reference_bias(text_len, model.sparse_mask.weight.detach())
    torch.testing.assert_close(ours, reference)
    a = torch.sigmoid(model.sparse_mask.weight.detach())
    loss_sparsity = torch.mean(torch.abs((1.0 - torch.eye(N_VIDEO)) * a))
    torch.testing.assert_close(model.aux_loss(), 0.5 * loss_sparsity)


def test_sparse_loss_reaches_the_mask_through_the_module(make_model):
    """Training adds the weighted sparsity loss; its gradient reaches W."""
    model = make_model("sparse")
    loss = model.aux_loss()
    loss.backward()
    grad = model.sparse_mask.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.all(grad.diagonal() == 0)  # the diagonal is forced to 1: no gradient


def test_other_masks_have_no_aux_loss(make_model):
    assert make_model("multilayer").aux_loss() is None
    assert make_model("none").aux_loss() is None
