"""SwinBERT with ``mask.generator=lowrank`` / ``mask.per_head`` (issue 16): more frames and longer
captions than the model was built for, M where the scope says (per head), and generator
parameters that do not depend on the number of frames / the caption length."""

from __future__ import annotations

import json

import pytest
import torch

from stamp import LowRankMaskGenerator, MaskConfig, MaskGenerator, record_attention
from tasks.common.reporting.tables import row_id
from tasks.msrvtt.model import embed_block_mask
from tests.helpers import compose_cfg, run_cfg
from tests.msrvtt.conftest import IMG_RES, MAX_TEXT, N_VIDEO, NUM_FRAMES
from tests.msrvtt.test_train import TINY_OVERRIDES


def frames(n: int = NUM_FRAMES, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, n, 3, IMG_RES, IMG_RES, generator=g)


def cfg(mask: str = "multilayer", **kw) -> MaskConfig:
    return MaskConfig(type=mask, depth=2, init="kaiming", **kw)


def masked_forward(model, n_frames: int, n_text: int) -> torch.Tensor:
    ids = torch.randint(5, 20, (2, n_text))
    masked_pos = torch.zeros(2, n_text, dtype=torch.bool)
    masked_pos[0, [1, n_text - 1]] = masked_pos[1, 2] = True
    return model(frames(n_frames), ids, torch.tensor([n_text - 3, n_text]), masked_pos)


@pytest.mark.parametrize(("mask", "scope"), [("multilayer", "video"), ("global", "full")])
def test_lowrank_accepts_more_frames_and_longer_captions(make_model, mask, scope):
    """Built for 4 frames / 12 caption tokens, run on 8 frames (2x the video tokens) and 20
    tokens; decoding with scope=full works without padding captions to max_text_len."""
    torch.manual_seed(0)
    model = make_model(mask_cfg=cfg(mask, generator="lowrank"), stamp_scope=scope)
    logits = masked_forward(model, 2 * NUM_FRAMES, MAX_TEXT + 8)
    assert logits.shape == (3, len(model.tokenizer)) and torch.isfinite(logits).all()
    logits.sum().backward()
    model.eval()
    assert len(model.generate(frames(2 * NUM_FRAMES, batch=1))) == 1
    mlp = make_model(mask_cfg=cfg(mask), stamp_scope=scope)
    with pytest.raises(ValueError, match="video tokens"):
        masked_forward(mlp, 2 * NUM_FRAMES, MAX_TEXT)


@pytest.mark.parametrize("generator", ["mlp", "lowrank"])
def test_per_head_mask_sits_in_the_video_block(make_model, generator):
    """scope=video: each head's M is the generator's on the video tokens, the identity (mul: 1)
    on every other logit."""
    torch.manual_seed(0)
    model = make_model(mask_cfg=cfg(generator=generator, per_head=True)).eval()
    n_text = MAX_TEXT if generator == "mlp" else MAX_TEXT + 4
    ids = torch.randint(5, 20, (2, n_text))
    with record_attention(model) as records:
        model.encode(model.encode_video(frames()), ids, torch.tensor([n_text, 5]))
    mask = records[0]["mask"]
    heads = model.layers[0].attn.num_heads
    assert mask.shape == (2, heads, n_text + N_VIDEO, n_text + N_VIDEO)
    x = torch.cat([model.embeddings(input_ids=ids), model.encode_video(frames())], 1)
    expected = embed_block_mask(model.mask_generators[0](x[:, n_text:]), n_text, "mul")
    torch.testing.assert_close(mask, expected)
    assert torch.all(mask[..., :n_text, :] == 1) and torch.all(mask[..., :, :n_text] == 1)
    assert not torch.allclose(mask[:, 0], mask[:, 1])


def generator_params(model) -> int:
    gens = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    return sum(p.numel() for g in gens for p in g.parameters())


@pytest.mark.parametrize("scope", ["video", "full"])
def test_lowrank_parameters_do_not_depend_on_frames_or_caption_length(make_model, scope):
    def count(generator: str, num_frames: int, max_text: int) -> int:
        model = make_model(
            mask_cfg=cfg(generator=generator),
            stamp_scope=scope,
            num_frames=num_frames,
            max_text_len=max_text,
        )
        return generator_params(model)

    assert count("lowrank", NUM_FRAMES, MAX_TEXT) == count("lowrank", 2 * NUM_FRAMES, 2 * MAX_TEXT)
    assert count("mlp", 2 * NUM_FRAMES, 2 * MAX_TEXT) > count("mlp", NUM_FRAMES, MAX_TEXT)


def test_tiny_run_trains_with_lowrank_per_head(tmp_path, tiny_data):
    """experiment=msrvtt_tiny with mask.generator=lowrank and mask.per_head=true: trains,
    decodes and scores validation captions; results.json reports the closed-form parameters."""
    out = tmp_path / "run"
    overrides = [
        *TINY_OVERRIDES,
        "mask=multilayer",
        "mask.generator=lowrank",
        "mask.per_head=true",
        f"data.root={tiny_data}",
        "test=false",
        "+module.metrics.metrics=[BLEU_4,CIDEr]",
        "module.metrics.tokenize=simple",
    ]
    run_cfg(compose_cfg(overrides, output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and "val/CIDEr" in saved["metrics"]
    closed = LowRankMaskGenerator.lowrank_parameters(32, depth=2, rank=16, heads=2)
    assert saved["params"]["params/mask"] == 2 * closed  # one generator per BERT layer
    assert row_id(saved) == "multilayer +lowrank(r=16) +per-head"
