"""ViT-B/16 as MAE fine-tunes it, with its attention routed through the STAMP core.

The model *is* timm's ``VisionTransformer`` (patch embedding, position embedding, blocks, global
average pooling + ``fc_norm``, head); each block's attention is timm's own, switched to STAMP in
place by ``stamp.injection.stamp_timm_attention`` (the mechanism of ``stamp.inject`` on timm), so
its parameters keep timm's names (``attn.qkv``, ``attn.proj``) and timm and MAE state dicts load
unchanged. With ``mask=none`` the logits equal timm's.

Where the generator reads its input (``mask_input``):

* ``block`` (default) — the raw block input x, before ``norm1``. This is the convention of the
  core's ``StampEncoderLayer`` (the generator sees the tokens that enter the layer, the paper's
  M = F(X)), so every task feeds its generators the same thing.
* ``normed`` — ``norm1(x)``, the tensor the attention projections see in a pre-norm block.

``mask=global`` computes one M from the encoder input (after the position embedding) and hands
it to every block. The generators are new parameters initialised by the core's ``mask.init``
(re-applied after timm's own ``init_weights``): the task default ``identity`` starts M at the
fusion's identity (1 for mul, 0 for add), so the fine-tune starts from exactly the pre-trained
attention; ``torch`` / ``kaiming`` as in every other task (see ``stamp.MaskInit``).

``mask.generator=lowrank`` has no token count (the MLP form's last layer has one output per
token, ``img_size`` fixes it); with timm's ``dynamic_img_size=True`` (a ``model.`` keyword, the
position embedding resampled per batch) such a model runs on images of other sizes.
``mask.per_head`` gives one mask per head.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from timm.layers import resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import load_state_dict
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, MaskPlan, init_mask_generators
from stamp.injection.timm_vit import stamp_timm_attention
from stamp.plan import GENERATOR_PARTS

log = logging.getLogger(__name__)

MaskInput = Literal["block", "normed"]


class StampBlock(Block):
    """timm's pre-norm ViT block, its own attention made STAMP's by ``stamp_timm_attention``
    (as ``stamp.inject`` does); M from the block's generator (``plan``'s layer generator,
    ``multilayer``) or the caller.

    Args:
        plan: the ViT's mask plan (resized here to the block's width and heads).
        mask_input: the generator reads the block input (``block``) or ``norm1`` of it.
        block_kwargs: timm ``Block``'s own arguments (``dim``, ``num_heads``, ...).
    """

    def __init__(self, *, plan: MaskPlan, mask_input: MaskInput = "block", **block_kwargs) -> None:
        super().__init__(**block_kwargs)
        plan = plan.resized(block_kwargs["dim"], block_kwargs["num_heads"])
        stamp_timm_attention(
            self.attn,
            fusion=plan.mask.fusion,
            fusion_order=plan.mask.fusion_order,
            attention=plan.attention,
        )
        if mask_input not in ("block", "normed"):
            raise ValueError(f"mask_input={mask_input!r}; choose one of: block, normed")
        self.mask_input = mask_input
        self.mask_generator = plan.layer_generator()

    def attention(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``attn(norm1(x))`` with this block's M (its generator's, else ``mask``)."""
        h = self.norm1(x)
        if self.mask_generator is not None:
            mask = self.mask_generator(x if self.mask_input == "block" else h)
        return self.attn(h, mask=mask)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        x = x + self.drop_path1(self.ls1(self.attention(x, mask)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _token_count(img_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> int:
    """Tokens of a ViT with one class token: the generators' output width N (197 for B/16-224)."""
    (h, w), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
    return (h // ph) * (w // pw) + 1


class StampViT(VisionTransformer):
    """timm ``VisionTransformer`` with STAMP in every block (``mask=multilayer``), one shared
    generator (``mask=global``) or plain attention (``mask=none``).

    ``pretrained`` is a local checkpoint path (MAE ``mae_pretrain_vit_base.pth`` layout or a timm
    state dict, ``.pth``/``.bin``/``.safetensors``); ``head_init_std`` re-initialises a head the
    checkpoint does not provide (MAE fine-tune: 2e-5). ``generator_tokens`` is the MLP
    generators' ``n_max`` when the blocks see fewer tokens than the image has (the MAE encoder
    during pre-training: the visible patches + cls, ``tasks.imagenet.mae``); default all tokens.
    """

    def __init__(
        self,
        *,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        global_pool: str = "avg",
        drop_path_rate: float = 0.1,
        head_init_std: float | None = 2e-5,
        mask_input: MaskInput = "block",
        pretrained: str | None = None,
        generator_tokens: int | None = None,
        **vit_kwargs,
    ) -> None:
        n_tokens = _token_count(img_size, patch_size)
        n_max = generator_tokens or n_tokens
        plan = MaskPlan(
            mask,
            attention,
            dim=embed_dim,
            num_heads=num_heads,
            n_max=n_max,
            places=GENERATOR_PARTS,
            where="task=imagenet",
        )
        block_fn = partial(StampBlock, plan=plan, mask_input=mask_input)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            global_pool=global_pool,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=norm_eps),
            block_fn=block_fn,
            **vit_kwargs,
        )
        if self.patch_embed.num_patches + self.num_prefix_tokens != n_tokens:
            raise ValueError("StampViT expects exactly one class token and no register tokens")
        self.plan, self.mask_cfg, self.n_max = plan, plan.mask, n_max
        self.mask_generator = plan.shared_generator()
        init_mask_generators(self)  # timm's init_weights re-initialised the blocks' generators
        self.head_init_std = head_init_std
        if head_init_std is not None and isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=head_init_std)
        self.load_report: dict[str, list[str]] | None = None
        if pretrained:
            self.load_report = load_pretrained(self, pretrained)

    def forward_features(  # type: ignore[override]
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("StampViT takes no attn_mask / is_causal (image tokens, no padding)")
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        return self.norm(self.run_blocks(x))

    def run_blocks(self, x: Tensor) -> Tensor:
        """The blocks on tokens (B, N, D), each with the M its plan gives it -> (B, N, D)."""
        mask = None
        for i, block in enumerate(self.blocks):
            mask = self.plan.layer_mask(i, x, mask, shared=self.mask_generator)
            x = block(x, mask=mask)
        return x


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The weights of a local file, always through ``torch.load(weights_only=True)``.

    Accepted: MAE's files (``{"model": ...}``; its training checkpoints also pickle the
    ``argparse.Namespace`` of their arguments, the one non-tensor type allowed here), timm /
    plain state dicts (``.pth``, ``.bin``, ``.safetensors``) and this project's Lightning
    checkpoints (``state_dict`` with the LightningModule's ``net.`` prefix, e.g. the MAE
    pre-training run's ``last.ckpt``).
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:  # timm re-raises as RuntimeError
        if "weights_only" not in str(err) and "Weights only" not in str(err):
            raise
        raise ValueError(
            f"{path} (model.pretrained) holds objects other than tensors, which are not loaded "
            "(torch.load weights_only=True); save its state dict alone. "
            f"{str(err).splitlines()[0]}"
        ) from err
    if state and all(key.startswith(LIGHTNING_PREFIX) for key in state):
        state = {key.removeprefix(LIGHTNING_PREFIX): value for key, value in state.items()}
    return state


LIGHTNING_PREFIX = "net."
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def load_pretrained(model: StampViT, path: str | Path) -> dict[str, list[str]]:
    """Load MAE or timm ViT weights from a local file into ``model``; returns the load report.

    As MAE's ``main_finetune.py``: drops the MAE decoder, drops a head of another class count,
    resamples the position embedding (bicubic) when the grid differs, loads non-strictly and
    reports missing / unexpected keys; a head the file lacks gets ``trunc_normal(std=2e-5)``.
    STAMP generator tensors whose shape differs from the model's (an MLP generator's ``n_max``:
    50 in MAE pre-training, 197 in fine-tuning) are not loaded: the model keeps its own
    initialisation for them (``mask.init``) and the report lists them under ``skipped``. Any
    other shape difference is an error naming the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pre-trained checkpoint not found: {path} (config key model.pretrained; "
            "e.g. the MAE release mae_pretrain_vit_base.pth, or null to train from scratch)"
        )
    state = {
        k: v for k, v in _read_state_dict(path).items() if not k.startswith(MAE_DECODER_PREFIXES)
    }
    own = model.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            log.info(
                "dropping %s %s from the checkpoint (model has %s)",
                key,
                tuple(state[key].shape),
                tuple(own[key].shape),
            )
            del state[key]
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        old = state["pos_embed"]
        old_grid = int(math.isqrt(old.shape[1] - model.num_prefix_tokens))
        state["pos_embed"] = resample_abs_pos_embed(
            old,
            new_size=list(model.patch_embed.grid_size),
            old_size=[old_grid, old_grid],
            num_prefix_tokens=model.num_prefix_tokens,
            interpolation="bicubic",
            antialias=False,  # MAE's interpolate_pos_embed: F.interpolate(bicubic)
        )
        log.info(
            "position embedding resampled from %dx%d to %s",
            old_grid,
            old_grid,
            tuple(model.patch_embed.grid_size),
        )
    skipped = []
    for key in [k for k in state if k in own and state[k].shape != own[k].shape]:
        shapes = f"{tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in the model"
        if "mask_generator." not in key:
            raise ValueError(
                f"{path}: {key} has shape {shapes}; the model settings (model.embed_dim, "
                "patch_size, depth, num_heads) must match the checkpoint's"
            )
        log.warning("%s: STAMP generator tensor %s not loaded (%s)", path, key, shapes)
        skipped.append(key)
        del state[key]
    result = model.load_state_dict(state, strict=False)
    report = {
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "skipped": skipped,
    }
    log.info(
        "loaded %s: %d tensors; missing %s; unexpected %s; skipped (shape) %s",
        path,
        len(state) - len(report["unexpected"]),
        report["missing"],
        report["unexpected"],
        skipped,
    )
    if "head.weight" in report["missing"] and model.head_init_std is not None:
        trunc_normal_(model.head.weight, std=model.head_init_std)
    return report
