"""The project's QDDETR equals the official QD-DETR forward: same weights (through
``tasks.qvhighlights.convert``) -> same outputs within 1e-5 in float32, batch 3 with different
padding; same parameter count; initialisation of the same kind per parameter."""

from __future__ import annotations

import math

import pytest
import torch

from stamp import MaskConfig
from tasks.qvhighlights.convert import from_official_state_dict
from tasks.qvhighlights.model import QDDETR, official_t2v_padding_bias
from tests.qvhighlights.qdetr_official_reference import OfficialQDDETR

D, H, FFN, VID, TXT = 32, 4, 64, 12, 6
INPUTS = ("src_txt", "src_txt_mask", "src_vid", "src_vid_mask")
KEYS = ("pred_logits", "pred_spans", "saliency_scores", "saliency_scores_neg")


def batch(lv=(20, 15, 9), lt=(7, 5, 3), dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(1)
    B = len(lv)
    vid_mask, txt_mask = torch.zeros(B, max(lv)), torch.zeros(B, max(lt))
    for i in range(B):
        vid_mask[i, : lv[i]], txt_mask[i, : lt[i]] = 1, 1
    return {
        "src_vid": (torch.randn(B, max(lv), VID + 2, generator=g) * vid_mask[..., None]).to(dtype),
        "src_vid_mask": vid_mask.to(dtype),
        "src_txt": (torch.randn(B, max(lt), TXT, generator=g) * txt_mask[..., None]).to(dtype),
        "src_txt_mask": txt_mask.to(dtype),
    }


def official(**kw) -> OfficialQDDETR:
    torch.manual_seed(0)
    return OfficialQDDETR(VID + 2, TXT, hidden_dim=D, nheads=H, dim_feedforward=FFN, **kw).eval()


def ours(**kw) -> QDDETR:
    torch.manual_seed(0)
    model = QDDETR(
        VID, TXT, mask=MaskConfig(type="none"), hidden_dim=D, num_heads=H, ffn_dim=FFN, **kw
    )
    return model.eval()


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random (biases, norms, PReLU too), so that no zero / one initialisation
    hides a wrong mapping."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def paired(**kw) -> tuple[OfficialQDDETR, QDDETR]:
    ref = randomised(official(use_txt_pos=kw.get("use_txt_pos", False)))
    model = ours(**kw)
    model.load_state_dict(from_official_state_dict(ref.state_dict()), strict=True)
    return ref, model


def max_diff(a: dict, b: dict) -> float:
    diffs = [(a[k] - b[k]).abs().max().item() for k in KEYS]
    for x, y in zip(a["aux_outputs"], b["aux_outputs"], strict=True):
        diffs += [(x[k] - y[k]).abs().max().item() for k in ("pred_logits", "pred_spans")]
    return max(diffs)


def test_same_weights_same_outputs_as_official():
    ref, model = paired()
    x = batch()
    with torch.no_grad():
        a, b = ref(**x), model(**{k: x[k] for k in INPUTS})
    assert len(a["aux_outputs"]) == len(b["aux_outputs"]) == 1
    assert max_diff(a, b) <= 1e-5
    # the check has teeth: the scores are O(1), and the corrected padding changes them
    assert a["saliency_scores"].abs().max() > 0.1
    model.official_padding_bug = False
    with torch.no_grad():
        c = model(**{k: x[k] for k in INPUTS})
    assert max_diff(a, c) > 1e-3


def test_use_txt_pos_option_as_official():
    ref, model = paired(use_txt_pos=True)
    x = batch()
    with torch.no_grad():
        a, b = ref(**x), model(**{k: x[k] for k in INPUTS})
    assert max_diff(a, b) <= 1e-5
    _, plain = paired()
    with torch.no_grad():
        assert max_diff(a, plain(**{k: x[k] for k in INPUTS})) > 1e-3


def test_padding_bug_masks_other_samples_pairs():
    vid_pad = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)
    txt_pad = torch.tensor([[0, 0], [0, 1], [0, 1]], dtype=torch.bool)
    bias = official_t2v_padding_bias(vid_pad, txt_pad, num_heads=2, dtype=torch.float32)
    # head h of sample b reads sample (b * 2 + h) % 3: b0 -> (0, 1), b1 -> (2, 0), b2 -> (1, 2)
    masked = torch.isinf(bias)
    for b, sources in enumerate([(0, 1), (2, 0), (1, 2)]):
        for h, s in enumerate(sources):
            expected = vid_pad[s][:, None] & txt_pad[s][None, :]
            assert torch.equal(masked[b, h], expected)
    # sample 0 has no padding, yet its head 1 masks token 1 for clip 2 (pairs of sample 1)
    assert masked[0, 1, 2, 1] and not txt_pad[0, 1]


def test_corrected_padding_is_padding_invariant():
    _, model = paired(official_padding_bug=False)
    x = batch()
    with torch.no_grad():
        full = model(**{k: x[k] for k in INPUTS}, with_negative=False)
        alone = model(
            src_vid=x["src_vid"][:1, :20],
            src_vid_mask=x["src_vid_mask"][:1, :20],
            src_txt=x["src_txt"][:1, :7],
            src_txt_mask=x["src_txt_mask"][:1, :7],
            with_negative=False,
        )
    torch.testing.assert_close(full["pred_spans"][:1], alone["pred_spans"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        full["saliency_scores"][:1], alone["saliency_scores"], atol=1e-5, rtol=0
    )


def test_parameter_counts_equal_and_txt_position_embed_unused():
    ref, model = official(), ours()
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in model.parameters())
    assert n_ref == n_ours
    txt_pos = sum(p.numel() for p in model.txt_position_embed.parameters())
    assert txt_pos == 32 * D + 2 * D  # at D=256: 8,704
    # unused: its weights do not change any output
    x = batch()
    with torch.no_grad():
        a = model(**{k: x[k] for k in INPUTS})
        model.txt_position_embed.position_embeddings.weight.add_(1.0)
        b = model(**{k: x[k] for k in INPUTS})
    assert max_diff(a, b) == 0.0


def _init_kind(t: torch.Tensor) -> tuple:
    if torch.all(t == 0):
        return ("zeros",)
    if torch.all(t == t.flatten()[0]) and (t.numel() > 1 or t.item() == 0.25):  # 0.25: PReLU
        return ("const", round(t.flatten()[0].item(), 6))
    return ("random",)


def test_initialisation_matches_official_per_parameter():
    ref_state = from_official_state_dict(official().state_dict())
    own = ours().state_dict()
    assert set(ref_state) == set(own)
    for key, r in ref_state.items():
        o = own[key]
        assert _init_kind(r) == _init_kind(o), key
        if _init_kind(r) == ("random",) and r.numel() >= 256 and not key.startswith("txt_pos"):
            # uniform inits (Xavier or PyTorch's default): the largest |w| is close to the bound
            ratio = o.abs().max().item() / r.abs().max().item()
            assert 0.95 < ratio < 1.05, (key, ratio)
    last = own["decoder.bbox_embed.layers.2.weight"]
    assert torch.all(own["decoder.bbox_embed.layers.2.bias"] == 0) and last.abs().max() > 0
    bound = math.sqrt(6 / (D + 2))  # Xavier on (2, D): the reset overrides the zero weight
    assert last.abs().max() <= bound


def test_float64_forward_works_and_agrees_with_float32():
    _, model = paired()
    x = batch()
    with torch.no_grad():
        a = model(**{k: x[k] for k in INPUTS})
        b = model.double()(**{k: v.double() for k, v in x.items()})
    assert b["pred_spans"].dtype == torch.float64
    assert max_diff(a, {k: (v.float() if torch.is_tensor(v) else v) for k, v in b.items()}) < 1e-4


@pytest.mark.parametrize("mask", ["multilayer", "global"])
def test_padding_bug_runs_with_a_mask(mask):
    torch.manual_seed(0)
    model = QDDETR(
        VID, TXT, mask=MaskConfig(type=mask, depth=2), hidden_dim=D, num_heads=H, ffn_dim=FFN
    )
    out = model(**{k: v for k, v in batch().items()})
    assert torch.isfinite(out["saliency_scores"]).all() and torch.isfinite(out["pred_spans"]).all()
    with pytest.raises(ValueError, match="official_padding_bug"):
        QDDETR(
            VID,
            TXT,
            mask=MaskConfig(type=mask, depth=2, fusion_order="bias_first"),
            hidden_dim=D,
            num_heads=H,
            ffn_dim=FFN,
        )
