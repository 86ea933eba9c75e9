"""The STAMP ViT is timm's ViT: identical logits with mask=none, extra parameters = generators."""

from __future__ import annotations

import pytest
import torch

from stamp import AttentionConfig, MaskConfig, MaskGenerator, mask_parameter_count
from tasks.imagenet.model import StampViT
from tests.imagenet.conftest import TINY, TOKENS, timm_vit


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_mask_none_matches_timm(backend: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    reference = timm_vit().eval()
    model = StampViT(
        **TINY, mask=MaskConfig(type="none"), attention=AttentionConfig(backend=backend)
    ).eval()
    result = model.load_state_dict(reference.state_dict())  # strict: identical parameter names
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", ["mul", "add"])
def test_identity_generators_keep_timm_logits(fusion: str, images: torch.Tensor) -> None:
    """mask.init=identity starts M at the fusion's identity: the pre-trained function is kept."""
    reference = timm_vit().eval()
    model = StampViT(
        **TINY, mask=MaskConfig(type="multilayer", depth=1, fusion=fusion, init="identity")
    ).eval()
    model.load_state_dict(reference.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_type, generators", [("multilayer", TINY["depth"]), ("global", 1)])
def test_extra_parameters_are_the_generators(mask_type: str, generators: int) -> None:
    base = n_params(timm_vit())
    model = StampViT(**TINY, mask=MaskConfig(type=mask_type, depth=1))
    per_generator = MaskGenerator.num_parameters(TINY["embed_dim"], TOKENS, depth=1)
    assert per_generator == TINY["embed_dim"] * TOKENS + TOKENS  # a single Linear(D -> N)
    assert n_params(model) - base == generators * per_generator
    assert mask_parameter_count(model) == generators * per_generator
    found = [m for m in model.modules() if isinstance(m, MaskGenerator)]
    assert len(found) == generators and all(m.n_max == TOKENS for m in found)


def test_vit_base_generator_shape() -> None:
    """ViT-B/16 at 224: 197 tokens, each block's generator is Linear(768 -> 197)."""
    with torch.device("meta"):
        model = StampViT(mask=MaskConfig(type="multilayer", depth=1), weight_init="skip")
    assert model.n_max == 197
    out = model.blocks[0].mask_generator.out
    assert tuple(out.weight.shape) == (197, 768)
    assert mask_parameter_count(model) == 12 * (768 * 197 + 197)


def test_stamp_changes_attention_and_trains(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    reference = timm_vit().eval()
    model = StampViT(**TINY, mask=MaskConfig(type="multilayer", depth=1))
    model.load_state_dict(reference.state_dict(), strict=False)
    model.eval()
    logits = model(images)
    assert not torch.allclose(logits, reference(images), atol=1e-4)
    logits.sum().backward()
    grad = model.blocks[1].mask_generator.out.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_mask_input_choice(images: torch.Tensor) -> None:
    """The generator reads the raw block input (default) or norm1's output: different masks."""
    torch.manual_seed(0)
    block_input = StampViT(**TINY, mask=MaskConfig(type="multilayer", depth=1)).eval()
    normed = StampViT(
        **TINY, mask=MaskConfig(type="multilayer", depth=1), mask_input="normed"
    ).eval()
    with torch.no_grad():  # generators far from their near-zero init, so that M matters
        for block in block_input.blocks:
            block.mask_generator.out.weight.normal_(0, 0.5)
    normed.load_state_dict(block_input.state_dict())
    with torch.no_grad():
        a, b = block_input.forward_features(images), normed.forward_features(images)
    assert not torch.allclose(a, b, atol=1e-3)


def test_global_mask_is_computed_once(images: torch.Tensor) -> None:
    model = StampViT(**TINY, mask=MaskConfig(type="global", depth=1)).eval()
    calls = []
    model.mask_generator.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model(images)
    assert calls == [torch.Size([3, TOKENS, TOKENS])]


def test_invalid_combinations_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="task=imagenet supports mask types"):
        StampViT(**TINY, mask=MaskConfig(type="sparse"))
    with pytest.raises(ValueError, match="sdpa cannot fuse a multiplicative mask"):
        StampViT(**TINY, mask=MaskConfig(type="multilayer"), attention=AttentionConfig("sdpa"))
    with pytest.raises(ValueError, match="mask.init=identity: mask.bound=sigmoid cannot"):
        StampViT(**TINY, mask=MaskConfig(type="multilayer", bound="sigmoid", init="identity"))


@pytest.mark.slow
def test_flex_matches_eager_with_stamp(images: torch.Tensor) -> None:
    """The fused backend (forward only on CPU) reads the same generator masks as eager."""
    torch.manual_seed(0)
    mask = MaskConfig(type="multilayer", depth=1)
    eager = StampViT(**TINY, mask=mask).eval()
    with torch.no_grad():
        for block in eager.blocks:
            block.mask_generator.out.weight.normal_(0, 0.3)
    flex = StampViT(**TINY, mask=mask, attention=AttentionConfig(backend="flex")).eval()
    flex.load_state_dict(eager.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            flex.forward_features(images), eager.forward_features(images), rtol=1e-4, atol=1e-5
        )


@pytest.mark.slow
def test_vit_base_mask_none_matches_timm() -> None:
    """The full ViT-B/16 configuration of the task config equals timm's vit_base_patch16 (MAE)."""
    torch.manual_seed(0)
    base = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    reference = timm_vit(**base, num_classes=1000).eval()
    model = StampViT(**base, num_classes=1000, mask=MaskConfig(type="none")).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
