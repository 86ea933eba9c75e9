"""MAE pre-training with STAMP in the encoder (tasks/imagenet/mae*.py): the official formulas by
hand, HF transformers' ViTMAE (a maintained port of facebookresearch/mae) with the same
weights, the STAMP identity, MAE's optimiser recipe, and a pre-train -> fine-tune run."""

from __future__ import annotations

import json
import math
import statistics
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from scripts.make_imagenet_folder import make_imagenet_folder
from stamp import MaskConfig
from tasks.common.runtime.schedules import warmup_cosine
from tasks.imagenet.mae import (
    MaskedAutoencoderViT,
    patchify,
    random_masking,
    reconstruction_loss,
    sincos_pos_embed_2d,
    unpatchify,
    visible_tokens,
)
from tasks.imagenet.mae_module import MAEPretrainModule
from tasks.imagenet.model import StampViT
from tests.helpers import compose_cfg, run_cfg
from tests.imagenet.test_lr_decay import mae_lr

# 32 px, patches of 8: 16 patches, 4 visible at ratio 0.75 -> the generators see 5 tokens
SMALL = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=4,
    decoder_embed_dim=16,
    decoder_depth=2,
    decoder_num_heads=4,
)


def small_mae(mask: str = "none", **mask_kwargs) -> MaskedAutoencoderViT:
    config = MaskConfig(type=mask, depth=1, init="identity", **mask_kwargs)
    return MaskedAutoencoderViT(**SMALL, mask=config).eval()


def inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.rand(batch, 16, generator=g)


def test_pos_embed_is_mae_formula_on_a_small_grid() -> None:
    """2x2 grid, D = 8: w = (1, 10000 ** -0.5); token r * 2 + c is
    [sin(c w), cos(c w), sin(r w), cos(r w)] (MAE's first half encodes the column)."""
    w = (1.0, 10000**-0.5)
    expected = [[0.0] * 8]  # class token
    for r in range(2):
        for c in range(2):
            expected.append(
                [math.sin(c * w[0]), math.sin(c * w[1]), math.cos(c * w[0]), math.cos(c * w[1])]
                + [math.sin(r * w[0]), math.sin(r * w[1]), math.cos(r * w[0]), math.cos(r * w[1])]
            )
    got = sincos_pos_embed_2d(8, 2, cls_token=True)
    assert got.dtype == torch.float32 and got.shape == (5, 8)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-7)


def test_fixed_pos_embeds_match_transformers_and_are_frozen() -> None:
    model = small_mae()
    hf = ViTMAEForPreTraining(hf_config())
    # transformers 5's post_init leaves both at zero when built from a config (its init flags
    # skip them): run its sin-cos initialisers (MAE's layout, h / w halves rotated) directly
    hf.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    hf.vit.embeddings.initialize_weights()
    hf.decoder.initialize_weights(hf.vit.embeddings.patch_embeddings.num_patches)
    torch.testing.assert_close(model.pos_embed, hf.vit.embeddings.position_embeddings)
    torch.testing.assert_close(model.decoder_pos_embed, hf.decoder.decoder_pos_embed)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_patchify_layout_and_inverse() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 = row 0, column 1; inside a patch: (row, column, channel)
    assert patches[0, 1, :3].tolist() == images[0, :, 0, 2].tolist()
    assert patches[0, 1, 3:6].tolist() == images[0, :, 0, 3].tolist()
    assert patches[1, 2, 6:9].tolist() == images[1, :, 3, 0].tolist()
    torch.testing.assert_close(unpatchify(patches, 2), images)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 5, 5), 2)


def test_reconstruction_loss_by_hand() -> None:
    """patchify, per-patch normalisation (unbiased variance + 1e-6), masked mean, element by
    element in plain Python."""
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    pred = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)

    def hand(norm: bool) -> float:
        losses = []
        for b in range(2):
            for patch in range(4):
                if not mask[b, patch]:
                    continue
                r0, c0 = 2 * (patch // 2), 2 * (patch % 2)
                target = [
                    float(images[b, ch, r0 + i, c0 + j])
                    for i in range(2)
                    for j in range(2)
                    for ch in range(3)
                ]
                if norm:
                    mu, var = statistics.fmean(target), statistics.variance(target)
                    target = [(t - mu) / math.sqrt(var + 1e-6) for t in target]
                errors = [(float(p) - t) ** 2 for p, t in zip(pred[b, patch], target, strict=True)]
                losses.append(statistics.fmean(errors))
        return statistics.fmean(losses)

    for norm in (True, False):
        got = reconstruction_loss(images, pred, mask, 2, norm_pix_loss=norm)
        assert float(got) == pytest.approx(hand(norm), rel=1e-12)


def test_random_masking_keeps_and_unshuffles() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, 5, generator=g)
    noise = torch.rand(3, 16, generator=g)
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    assert kept.shape == (3, 4, 5)  # (1 - 0.75) x 16
    assert mask.sum(1).tolist() == [12.0] * 3
    lowest = noise.argsort(1)[:, :4]  # the 4 smallest noise values, in increasing order
    torch.testing.assert_close(kept, torch.stack([x[b, lowest[b]] for b in range(3)]))
    assert all(
        set(torch.nonzero(mask[b] == 0).flatten().tolist()) == set(lowest[b].tolist())
        for b in range(3)
    )
    # the decoder's unshuffle puts every kept token back at its place
    padded = torch.cat([kept, torch.zeros(3, 12, 5)], dim=1)
    restored = torch.gather(padded, 1, ids_restore[..., None].expand(-1, -1, 5))
    torch.testing.assert_close(restored, x * (1 - mask)[..., None])


def hf_config(**overrides) -> ViTMAEConfig:
    settings = dict(
        hidden_size=SMALL["embed_dim"],
        num_hidden_layers=SMALL["depth"],
        num_attention_heads=SMALL["num_heads"],
        intermediate_size=4 * SMALL["embed_dim"],
        decoder_hidden_size=SMALL["decoder_embed_dim"],
        decoder_num_hidden_layers=SMALL["decoder_depth"],
        decoder_num_attention_heads=SMALL["decoder_num_heads"],
        decoder_intermediate_size=4 * SMALL["decoder_embed_dim"],
        image_size=SMALL["img_size"],
        patch_size=SMALL["patch_size"],
        layer_norm_eps=1e-6,
        mask_ratio=0.75,
        norm_pix_loss=True,
    )
    config = ViTMAEConfig(**{**settings, **overrides})
    config._attn_implementation = "eager"
    return config


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MAE's (timm) key layout -> transformers' ViTMAEForPreTraining (qkv split in three)."""
    top = {
        "cls_token": "vit.embeddings.cls_token",
        "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
        "norm": "vit.layernorm",
        "mask_token": "decoder.mask_token",
        "decoder_pos_embed": "decoder.decoder_pos_embed",
        "decoder_embed": "decoder.decoder_embed",
        "decoder_norm": "decoder.decoder_norm",
        "decoder_pred": "decoder.decoder_pred",
    }
    inner = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    out = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".") if "." in key else ("", "", key)
        if key in top:
            out[top[key]] = value
        elif stem in top:
            out[f"{top[stem]}.{leaf}"] = value
        else:
            group, index, rest = key.split(".", 2)
            prefix = {"blocks": "vit.layers", "decoder_blocks": "decoder.decoder_layers"}[group]
            layer_stem, _, leaf = rest.rpartition(".")
            if layer_stem == "attn.qkv":
                for name, part in zip(("q", "k", "v"), value.chunk(3), strict=True):
                    out[f"{prefix}.{index}.attention.{name}_proj.{leaf}"] = part
            else:
                out[f"{prefix}.{index}.{inner[layer_stem]}.{leaf}"] = value
    return out


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_same_weights_same_outputs_as_transformers_vitmae(norm_pix_loss: bool) -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**SMALL, mask=MaskConfig(type="none"), norm_pix_loss=norm_pix_loss)
    hf = ViTMAEForPreTraining(hf_config(norm_pix_loss=norm_pix_loss)).eval()
    hf.load_state_dict(to_transformers(model.state_dict()), strict=True)
    images, noise = inputs()
    with torch.no_grad():
        loss, pred, mask = model.eval()(images, noise=noise)
        reference = hf(pixel_values=images, noise=noise)
    torch.testing.assert_close(mask, reference.mask)
    torch.testing.assert_close(pred, reference.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, reference.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mask", "extra"),
    [("multilayer", {}), ("global", {}), ("multilayer", {"generator": "lowrank", "rank": 4})],
)
def test_identity_stamp_encoder_equals_plain_encoder(mask: str, extra: dict) -> None:
    torch.manual_seed(0)
    plain = small_mae("none")
    stamp = small_mae(mask, **extra)
    result = stamp.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all("mask_generator" in k for k in result.missing_keys)
    images, noise = inputs()
    with torch.no_grad():
        for got, want in zip(stamp(images, noise=noise), plain(images, noise=noise), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            stamp.forward_encoder(images, noise)[0], plain.forward_encoder(images, noise)[0]
        )


def test_generators_see_the_visible_tokens() -> None:
    assert visible_tokens(224, 16, 0.75) == 50  # ViT-B/16: 49 patches + cls
    model = small_mae("multilayer")
    assert [b.mask_generator.n_max for b in model.blocks] == [5, 5]  # 16 x 0.25 + cls
    with torch.device("meta"):
        vit_b = MaskedAutoencoderViT(mask=MaskConfig(type="multilayer", depth=1))
    assert vit_b.blocks[0].mask_generator.out.out_features == 50
    assert (vit_b.decoder_embed.out_features, len(vit_b.decoder_blocks)) == (512, 8)
    assert vit_b.decoder_blocks[0].attn.num_heads == 16
    assert vit_b.decoder_pred.out_features == 16 * 16 * 3
    with pytest.raises(ValueError, match="keeps no patch"):
        MaskedAutoencoderViT(**{**SMALL, "img_size": 8}, mask_ratio=0.75)  # 1 patch


def test_optimizer_groups_and_schedule_are_maes() -> None:
    """AdamW groups as timm's add_weight_decay without a skip list (cls / mask tokens decayed,
    biases and norms not, frozen position embeddings absent); lr = 1.5e-4 x 512 / 256 with
    40 warm-up epochs then a half cosine to 0 (MAE's adjust_learning_rate)."""
    model = small_mae("multilayer")
    module = MAEPretrainModule(
        model,
        optimizer=partial(torch.optim.AdamW, betas=(0.9, 0.95), weight_decay=0.05),
        scheduler=partial(warmup_cosine),
    )
    steps_per_epoch, epochs = 2, 100
    module.trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=128),
        accumulate_grad_batches=4,
        world_size=1,
        estimated_stepping_batches=steps_per_epoch * epochs,
        max_epochs=epochs,
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decay_of = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    named = dict(model.named_parameters())
    assert decay_of[id(named["cls_token"])] == decay_of[id(named["mask_token"])] == 0.05
    assert decay_of[id(named["blocks.0.mask_generator.out.weight"])] == 0.05
    assert decay_of[id(named["blocks.0.attn.qkv.bias"])] == decay_of[id(named["norm.weight"])] == 0
    assert id(named["pos_embed"]) not in decay_of and id(named["decoder_pos_embed"]) not in decay_of
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    peak = 1.5e-4 * 512 / 256
    for step in range(steps_per_epoch * epochs):
        expected = mae_lr(step / steps_per_epoch, peak, 0.0, 40, epochs)  # MAE's, every step
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_eval_noise_is_fixed_per_batch() -> None:
    module = MAEPretrainModule(small_mae(), optimizer=torch.optim.AdamW)
    images = torch.zeros(3, 3, 32, 32)
    torch.testing.assert_close(module.eval_noise(images, 4), module.eval_noise(images, 4))
    assert not torch.equal(module.eval_noise(images, 4), module.eval_noise(images, 5))


def test_lowrank_generators_load_into_the_fine_tuning_model(tmp_path: Path) -> None:
    """A low-rank generator has no N: its pre-trained weights serve the 197-token fine-tune;
    MLP generators of another n_max are skipped (reported) and keep their identity init."""
    for generator, loaded in (("lowrank", True), ("mlp", False)):
        mae = small_mae("multilayer", generator=generator, rank=4)
        with torch.no_grad():
            for p in mae.parameters():
                p.add_(0.01 * torch.randn_like(p))
        path = tmp_path / f"{generator}.ckpt"  # the layout of a Lightning checkpoint
        torch.save({"state_dict": {f"net.{k}": v for k, v in mae.state_dict().items()}}, path)
        model = StampViT(
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=4,
            num_classes=4,
            mask=MaskConfig(
                type="multilayer", depth=1, init="identity", generator=generator, rank=4
            ),
            pretrained=str(path),
        )
        own = model.state_dict()
        torch.testing.assert_close(
            own["blocks.1.mlp.fc2.weight"], mae.state_dict()["blocks.1.mlp.fc2.weight"]
        )
        names = [k for k in own if "mask_generator" in k]
        assert names
        if loaded:
            assert model.load_report["skipped"] == []
            for name in names:
                torch.testing.assert_close(own[name], mae.state_dict()[name])
        else:
            assert sorted(model.load_report["skipped"]) == sorted(names)
            assert own["blocks.0.mask_generator.out.weight"].shape == (17, 32)
            assert own["blocks.0.mask_generator.out.weight"].abs().max() == 0  # identity init


def test_other_shape_differences_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save({"model": MaskedAutoencoderViT(**{**SMALL, "embed_dim": 48}).state_dict()}, path)
    with pytest.raises(ValueError, match=r"wide.pth: \w+\S* has shape .* must match"):
        StampViT(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, pretrained=str(path)
        )


TINY_PRETRAIN = [
    "experiment=imagenet_mae_pretrain_tiny",
    "logger=csv",
    "callbacks.progress_bar=null",
]


def test_pretrain_tiny_then_fine_tune_from_its_checkpoint(tmp_path: Path) -> None:
    root = make_imagenet_folder(
        tmp_path / "data", num_classes=4, train_per_class=4, val_per_class=2
    )
    out = tmp_path / "pretrain"
    cfg = compose_cfg([*TINY_PRETRAIN, "trainer.max_epochs=2", f"data.root={root}"], out)
    record = run_cfg(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "ok" and saved["task"] == "imagenet_mae"
    assert saved["best"]["metric"] == "val/loss" and saved["best"]["mode"] == "min"
    assert 0 < saved["metrics"]["val/loss"] < 10 and 0 < saved["metrics"]["train/loss"] < 10
    assert record["params"]["params/mask"] == 2 * (64 * 3 + 3)  # n_max = 9 x 0.25 + cls = 3
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()

    fine = tmp_path / "finetune"
    cfg = compose_cfg(
        [
            "experiment=imagenet_tiny",
            "logger=csv",
            "callbacks.progress_bar=null",
            "trainer.max_epochs=1",
            f"data.root={root}",
            f"model.pretrained={last}",
        ],
        fine,
    )
    assert run_cfg(cfg)["status"] == "ok"
    # the encoder the fine-tune started from is the pre-trained one
    pretrained = torch.load(last, weights_only=True)["state_dict"]
    model = StampViT(
        img_size=32,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=4,
        num_classes=4,
        mask=MaskConfig(type="multilayer", depth=1, init="identity"),
        pretrained=str(last),
    )
    torch.testing.assert_close(
        model.state_dict()["blocks.0.attn.qkv.weight"], pretrained["net.blocks.0.attn.qkv.weight"]
    )
    assert set(model.load_report["unexpected"]) == {"norm.weight", "norm.bias"}
    assert len(model.load_report["skipped"]) == 4  # 2 blocks x (weight, bias): n_max 3 vs 5


def test_pretrain_experiment_is_the_papers(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=imagenet_mae_pretrain"], tmp_path)
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (128, 4)
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (768, 12, 12)
    assert (cfg.model.decoder_embed_dim, cfg.model.decoder_depth) == (512, 8)
    assert (cfg.model.mask_ratio, cfg.model.norm_pix_loss) == (0.75, True)
    assert (cfg.module.blr, cfg.module.warmup_epochs, cfg.trainer.max_epochs) == (1.5e-4, 40, 800)
    assert list(cfg.module.optimizer.betas) == [0.9, 0.95]
    assert list(cfg.data.crop_scale) == [0.2, 1.0]
    assert (cfg.mask.type, cfg.mask.depth, cfg.table) == ("multilayer", 1, None)  # not a T5 row


def test_pretrain_resume_mid_epoch_is_exact(tmp_path: Path) -> None:
    """Interrupted mid-epoch and resumed with ckpt_path=last: the same losses (the masking
    noise is drawn from the RNGs that EpochSeed reseeds per batch)."""
    from tests.robustness.test_resume import (
        assert_same_metrics,
        interrupted_then_resumed,
        random_step,
    )

    root = make_imagenet_folder(
        tmp_path / "data", num_classes=4, train_per_class=8, val_per_class=2
    )
    overrides = [*TINY_PRETRAIN, f"data.root={root}", "trainer.max_epochs=3"]
    full, resumed = interrupted_then_resumed(overrides, tmp_path, random_step("mae", 4, 3))
    assert_same_metrics(full, resumed)


@pytest.mark.parametrize(("backend", "fusion"), [("fused", "mul"), ("sdpa", "add")])
def test_attention_backends_match_eager_with_stamp(backend: str, fusion: str) -> None:
    """The encoder's STAMP attention on the visible tokens: loss and gradients of the fused /
    SDPA paths equal the eager reference (kaiming init: a mask that is not the identity)."""
    from stamp import AttentionConfig

    def run(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        mask = MaskConfig(type="multilayer", depth=1, init="kaiming", fusion=fusion)
        model = MaskedAutoencoderViT(**SMALL, mask=mask, attention=AttentionConfig(backend=name))
        images, noise = inputs()
        loss = model(images, noise=noise)[0]
        loss.backward()
        return loss.detach(), model.blocks[0].mask_generator.out.weight.grad

    (loss, grad), (ref_loss, ref_grad) = run(backend), run("eager")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert ref_grad.abs().sum() > 0


def test_vit_b_parameter_count_is_maes() -> None:
    """mae_vit_base_patch16 (ViT-B encoder + 512-d 8-block decoder) has transformers'
    ViTMAEForPreTraining count (111,907,840, frozen position embeddings included); multi-layer
    STAMP adds 12 x Linear(768 -> 50) generators."""
    with torch.device("meta"):
        plain = MaskedAutoencoderViT(mask=MaskConfig(type="none"))
        stamp = MaskedAutoencoderViT(mask=MaskConfig(type="multilayer", depth=1))
        reference = ViTMAEForPreTraining(ViTMAEConfig(layer_norm_eps=1e-6))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plain) == count(reference) == 111_907_840
    assert count(stamp) - count(plain) == 12 * (768 * 50 + 50)
