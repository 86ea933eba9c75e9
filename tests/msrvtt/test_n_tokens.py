"""MSR-VTT's N: the rebuttal's N = 834 is SwinBERT's whole self-attention sequence (50 caption +
784 video tokens); the default M covers the 784 x 784 video block, the block of SwinBERT's own
learnable mask that the paper's generator replaces ("same dimensionality"); `stamp_scope=full`
gives N = 834."""

from __future__ import annotations

import torch

from tasks.msrvtt.model import VideoSwinBackbone
from tests.helpers import compose_cfg
from tests.msrvtt.conftest import MAX_TEXT, N_VIDEO


def test_default_n_is_the_video_block_and_834_is_the_whole_sequence(tmp_path, make_model):
    cfg = compose_cfg(["task=msrvtt"], tmp_path)
    with torch.device("meta"):  # structure only
        backbone = VideoSwinBackbone(str(cfg.model.backbone.arch))
    n_video = backbone.num_tokens(cfg.data.num_frames, cfg.data.img_res)
    assert (n_video, cfg.data.max_text_len) == (784, 50)
    assert n_video + cfg.data.max_text_len == 834  # the rebuttal's N (self attention)
    assert cfg.model.stamp_scope == "video"  # default: M (B, 784, 784)
    # the generator's width follows the scope (tiny model: the same rule at small size)
    video = make_model("multilayer")
    full = make_model("multilayer", stamp_scope="full")
    assert video.mask_generators[0].n_max == N_VIDEO
    assert full.mask_generators[0].n_max == N_VIDEO + MAX_TEXT
