"""The frozen timm ViT shared by the audio and visual streams (the official ``my_vit``).

The official code (enyac-group/MA-AVT ``models/my_vit.py``) wraps ``timm.create_model(
'vit_<size>_patch16_224_in21k')`` as ``self.v`` and embeds an image with ``forward_patch``:
patch projection, optional extra class tokens appended *after* the patches, the [CLS] token
prepended, then the position embedding, linearly interpolated along the sequence when the
sequence is longer than the checkpoint's 197 positions (this is how MA-AVT's background class
token gets a position). ``FrozenViT`` keeps that layout and the parameter names (``v.`` +
timm's names), so a timm state dict (or an official checkpoint's ``ViT.v.*`` entries) loads
unchanged.

STAMP (the extension of issue 26, item 5) enters the blocks through the project's timm
mechanism, ``tasks.imagenet.model.StampBlock`` (timm's ``Block`` whose attention
``stamp.injection.stamp_timm_attention`` made STAMP's, as ``stamp.inject`` does, and its own
generator for ``mask=multilayer``); ``mask=global`` is one generator on the encoder input shared
by every block, as ``StampViT``; both come from the ViT's ``MaskPlan``. With ``mask=none`` the
blocks are timm's own. (``stamp.inject`` itself is not called: the models here call the blocks
themselves, LAVISH even their attention and MLP halves separately.)
"""

from __future__ import annotations

import logging
import warnings
from functools import partial
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.models import load_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, MaskPlan, init_mask_generators
from stamp.plan import GENERATOR_PARTS

log = logging.getLogger(__name__)

ViTSize = Literal["tiny", "small", "base", "large"]
# the timm names the official code uses (timm >= 0.9 maps them to *.augreg_in21k, 21843 classes)
VIT_NAMES: dict[str, str] = {
    "tiny": "vit_tiny_patch16_224_in21k",
    "small": "vit_small_patch16_224_in21k",
    "base": "vit_base_patch16_224_in21k",
    "large": "vit_large_patch16_224_in21k",
}
RANDOM_INIT_WARNING = (
    "model.vit_checkpoint is null: the frozen ViT is randomly initialised (fine for tests and "
    "parameter counts, meaningless for the paper's tables; set model.vit_checkpoint to a local "
    "{name} checkpoint)"
)


class FrozenViT(nn.Module):
    """timm ``vit_<size>_patch16_224_in21k`` as the official ``my_vit`` uses it.

    Args:
        size: tiny | small | base | large.
        checkpoint: local weights, a timm state dict (.safetensors / .pth / .bin / .pt, read
            with ``weights_only=True``; e.g. Hugging Face ``timm/vit_base_patch16_224.
            augreg_in21k``). None: random init with a warning, or an error when
            ``require_weights``.
        depth: keep only the first ``depth`` blocks (tiny CPU tests); None = all.
        img_size: input side (224 in the paper; smaller for tests).
        mask / attention: STAMP settings (``mask.type`` none | global | multilayer).
        n_tokens: the longest sequence the blocks see (the MLP generator's key columns).
        mask_input: the generator reads the block input (``block``) or ``norm1`` of it.
    """

    def __init__(
        self,
        size: ViTSize = "base",
        *,
        checkpoint: str | Path | None = None,
        require_weights: bool = False,
        depth: int | None = None,
        img_size: int = 224,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        n_tokens: int | None = None,
        mask_input: Literal["block", "normed"] = "block",
    ) -> None:
        super().__init__()
        if size not in VIT_NAMES:
            raise ValueError(f"model.vit={size!r}; choose one of: {', '.join(VIT_NAMES)}")
        self.name = VIT_NAMES[size]
        self.plan = plan = MaskPlan(
            mask, attention, n_max=n_tokens, places=GENERATOR_PARTS, where="task=ave"
        )
        self.mask_cfg = plan.mask
        kwargs: dict = {"pretrained": False, "img_size": img_size}
        if depth is not None:
            kwargs["depth"] = depth
        if plan.parts:  # STAMP in the blocks (mask=none keeps timm's own blocks)
            from tasks.imagenet.model import StampBlock  # the project's STAMP block for timm

            kwargs["block_fn"] = partial(StampBlock, plan=plan, mask_input=mask_input)
        with warnings.catch_warnings():  # "Mapping deprecated model name ..." (timm >= 0.9)
            warnings.simplefilter("ignore", UserWarning)
            self.v = timm.create_model(self.name, **kwargs)
        self.mask_generator = plan.resized(
            self.v.embed_dim, self.v.blocks[0].attn.num_heads
        ).shared_generator()
        init_mask_generators(self)  # timm's init_weights re-initialised the blocks' generators
        self.load_report: dict[str, list[str]] | None = None
        if checkpoint:
            self.load_report = self.load_checkpoint(checkpoint)
        elif require_weights:
            raise ValueError(
                f"model.require_weights is true but model.vit_checkpoint is null: the paper "
                f"configs need the pre-trained {self.name} weights (a local timm state dict "
                "of the in21k weights)"
            )
        elif not _on_meta(self):
            warnings.warn(RANDOM_INIT_WARNING.format(name=self.name), stacklevel=2)

    @property
    def dim(self) -> int:
        return int(self.v.embed_dim)

    def load_checkpoint(self, path: str | Path) -> dict[str, list[str]]:
        """Load timm ViT weights from a local file; returns the missing / unexpected keys.

        Only STAMP generators may be missing; the blocks a shortened ``depth`` drops are the
        only expected unexpected keys (anything else raises, naming the keys)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ViT checkpoint not found: {path} (config key model.vit_checkpoint; a local "
                f"{self.name} timm state dict: .safetensors / .pth / .bin)"
            )
        if path.suffix == ".npz":
            raise ValueError(
                f"{path}: Google's .npz is not read here; use the timm state dict of the same "
                f"weights (Hugging Face timm/{self.name.replace('_in21k', '.augreg_in21k')}, "
                "model.safetensors), or convert the .npz once with timm.create_model(..., "
                "pretrained=True, pretrained_cfg_overlay={'file': path}) and save its state_dict"
            )
        own = self.v.state_dict()
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
        state = {k.removeprefix("v."): v for k, v in state.items()}  # my_vit's own prefix
        state = checkpoint_filter_fn(state, self.v)  # resamples pos_embed to img_size
        wrong = [
            f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ]
        if wrong:
            raise ValueError(
                f"{path} does not fit {self.name}: shapes differ for {wrong[:4]} "
                "(is it a checkpoint of this ViT size?)"
            )
        result = self.v.load_state_dict(state, strict=False)
        report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
        missing = [k for k in report["missing"] if "mask_generator" not in k]
        depth = len(self.v.blocks)
        unexpected = [k for k in report["unexpected"] if not _dropped_block(k, depth)]
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit {self.name}: missing {missing[:6]}, unexpected "
                f"{unexpected[:6]} (is it a {self.name} checkpoint?)"
            )
        log.info("loaded %s into %s (depth %d)", path, self.name, depth)
        return report

    def embed(self, x: Tensor, bg_cls_token: Tensor | None = None) -> Tensor:
        """``my_vit.forward_patch``: (B, 3, H, W) -> (B, 1 + P [+ 1], D) tokens.

        The background class token (1, D) goes after the patches; the position embedding is
        linearly interpolated along the sequence when the length differs from the checkpoint's.
        """
        v = self.v
        x = v.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = v.patch_embed.norm(x)
        if bg_cls_token is not None:
            x = torch.cat((x, bg_cls_token.expand(x.shape[0], -1, -1)), dim=1)
        x = torch.cat((v.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        pos = v.pos_embed
        if pos.shape[1] != x.shape[1]:
            pos = F.interpolate(pos.permute(0, 2, 1), x.shape[1], mode="linear").permute(0, 2, 1)
        return v.pos_drop(x + pos)

    def layer_mask(self, index: int, x: Tensor, previous: Tensor | None = None) -> Tensor | None:
        """The M handed to block ``index`` whose input is ``x`` (``MaskPlan.layer_mask``): the
        shared generator's (``mask=global``) on the stream's first block input, or on each
        block's input with ``mask.global_input=layer``; None otherwise."""
        return self.plan.layer_mask(index, x, previous, shared=self.mask_generator)

    def block(self, index: int, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Block ``index`` on ``x``; ``mask`` is the M from ``layer_mask`` (if any)."""
        blk = self.v.blocks[index]
        return blk(x, mask=mask) if self.plan.parts else blk(x)

    def attention(self, index: int, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``blk.attn(blk.norm1(x))`` of block ``index`` with its STAMP mask (LAVISH's split
        block: adapters sit between the attention and the MLP)."""
        blk = self.v.blocks[index]
        if not self.plan.parts:
            return blk.attn(blk.norm1(x))
        return blk.attention(x, mask)  # StampBlock's own path

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed, every block, final norm: timm's ``forward_features`` (the frozen path)."""
        x, mask = self.embed(x), None
        for i in range(len(self.v.blocks)):
            mask = self.layer_mask(i, x, mask)
            x = self.block(i, x, mask)
        return self.v.norm(x)


def _dropped_block(key: str, depth: int) -> bool:
    parts = key.split(".")
    return len(parts) > 1 and parts[0] == "blocks" and int(parts[1]) >= depth


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())
