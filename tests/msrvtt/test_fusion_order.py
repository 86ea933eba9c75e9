"""mask.fusion_order on SwinBERT with stamp_scope=full, where M covers the caption's causal bias:
the project's order (M, then the -1e4 layout bias) keeps captions causal; the authors' rebuttal
order (bias, then M) scales the -1e4 by M and lets caption positions see later tokens."""

from __future__ import annotations

import pytest
import torch

from stamp import MaskConfig
from tests.msrvtt.conftest import IMG_RES, MAX_TEXT, NUM_FRAMES


@pytest.mark.parametrize("order", ["mask_first", "bias_first"])
def test_caption_stays_causal_only_when_the_bias_comes_after_m(make_model, order):
    torch.manual_seed(0)
    cfg = MaskConfig(type="multilayer", depth=4, fusion_order=order)  # torch init, fusion mul
    model = make_model(mask_cfg=cfg, stamp_scope="full").eval()
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(1, NUM_FRAMES, 3, IMG_RES, IMG_RES, generator=g)
    ids = torch.randint(5, 20, (1, MAX_TEXT), generator=g)
    later = ids.clone()
    later[0, 6:] = torch.randint(5, 20, (MAX_TEXT - 6,), generator=g)  # change tokens 6, 7, ...
    text_len = torch.tensor([MAX_TEXT])
    with torch.no_grad():
        video = model.encode_video(frames)
        a, b = model.encode(video, ids, text_len), model.encode(video, later, text_len)
    leak = (a[0, :6] - b[0, :6]).abs().max().item()  # caption positions 0-5
    if order == "mask_first":
        assert leak == 0.0
    else:  # (logit - 1e4) * M with |M| << 1: the causal mask no longer masks
        assert leak > 1e-3
