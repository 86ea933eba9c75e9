"""MAE pre-training (He et al., 2021) with STAMP in the encoder: facebookresearch/mae's
``models_mae.py`` on the task's ``StampViT``.

The encoder *is* ``tasks.imagenet.model.StampViT`` (timm's ViT whose blocks carry STAMP), so the
state-dict keys are MAE's own (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``,
``norm``, ``decoder_*``, ``mask_token``) and a pre-training checkpoint loads into the fine-tuning
model with ``model.pretrained`` like the MAE release does (decoder dropped). As MAE:

* fixed 2-D sin-cos position embeddings (``pos_embed`` and ``decoder_pos_embed``, not trained);
* per-sample random masking by argsort of uniform noise, ``mask_ratio`` 0.75: the encoder sees
  ``int(L * (1 - mask_ratio))`` visible patches + the class token (49 + 1 for ViT-B/16 at 224);
* the decoder: ``Linear(embed_dim -> 512)``, mask tokens, the unshuffle, 8 plain timm blocks of
  16 heads, LayerNorm, ``Linear(512 -> p * p * 3)``; STAMP is in the encoder only;
* the loss: mean squared error per patch against the (per-patch normalised, ``norm_pix_loss``)
  pixels, averaged over the masked patches only;
* MAE's initialisation (xavier-uniform Linears and patch projection, N(0, 0.02) class and mask
  tokens); the STAMP generators then get their own ``mask.init`` (identity by the task config).

Which N the generators see: the encoder's blocks run on the visible tokens only, so the MLP
generator (``mask.generator=mlp``, one output column per key position) is built with
``n_max = visible + 1`` (50 for ViT-B/16-224 at ratio 0.75), and its columns index the visible
tokens in their shuffled keep order (a different random patch per sample), not image positions.
The low-rank generator (``mask.generator=lowrank``) has no N: it reads token content, so the same
weights serve pre-training (50 tokens) and fine-tuning (197).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import to_2tuple
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, init_mask_generators
from tasks.imagenet.model import MaskInput, StampViT


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> Tensor:
    """MAE's fixed 2-D sin-cos position embedding (``util/pos_embed.get_2d_sincos_pos_embed``).

    Token ``r * grid_size + c`` (row r, column c) gets
    ``[sin(c w), cos(c w), sin(r w), cos(r w)]`` with ``w_k = 1 / 10000 ** (k / (D / 4))``,
    k = 0 .. D/4 - 1: the first half encodes the column, as MAE's code does (its ``np.meshgrid``
    puts the column coordinate first; the comment there says "grid_h"). Computed in float64 as
    NumPy does there, returned as float32; with ``cls_token`` a zero row comes first.

    Returns:
        (grid_size ** 2 [+ 1], embed_dim)
    """
    if embed_dim % 4:
        raise ValueError(
            f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}"
        )
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4)
    omega = 1.0 / 10000**omega
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embed = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        embed = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), embed])
    return embed.float()


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p * p * C), patches in row-major order, each flattened as
    (row in patch, column in patch, channel): MAE's ``'nchpwq->nhwpqc'``."""
    b, c, h, w = images.shape
    if h != w or h % patch_size:
        raise ValueError(
            f"patchify needs square images whose side is a multiple of the patch size "
            f"{patch_size}, got {h}x{w}"
        )
    g = h // patch_size
    x = images.reshape(b, c, g, patch_size, g, patch_size)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, g * g, patch_size**2 * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`: (B, L, p * p * C) -> (B, C, H, W)."""
    b, length, _ = patches.shape
    g = int(length**0.5)
    if g * g != length:
        raise ValueError(f"unpatchify needs a square number of patches, got {length}")
    x = patches.reshape(b, g, g, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, g * patch_size, g * patch_size)


def random_masking(
    x: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking: keep the ``int(L * (1 - mask_ratio))`` tokens of lowest
    noise (uniform, drawn here unless given), in increasing-noise order.

    Args:
        x: (B, L, D) tokens.
        noise: (B, L) optional; fixes the draw (evaluation, tests).
    Returns:
        kept (B, L_keep, D); mask (B, L), 0 kept / 1 removed, in the original order;
        ids_restore (B, L), the permutation that puts [kept, removed] back in order.
    """
    b, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(b, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(b, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def reconstruction_loss(
    images: Tensor, pred: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool = True
) -> Tensor:
    """MAE's ``forward_loss``: per-patch mean squared error, averaged over the removed patches.

    With ``norm_pix_loss`` the target patch is ``(x - mean) / sqrt(var + 1e-6)`` over its
    p * p * C values (``var`` unbiased, as ``Tensor.var``).

    Args:
        images: (B, C, H, W); pred: (B, L, p * p * C); mask: (B, L), 1 = removed.
    """
    target = patchify(images, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def visible_tokens(img_size: int, patch_size: int, mask_ratio: float) -> int:
    """Tokens the encoder sees during pre-training: the kept patches + the class token (the
    generators' ``n_max``; 49 + 1 for ViT-B/16-224 at 0.75)."""
    (h, w), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
    return int((h // ph) * (w // pw) * (1 - mask_ratio)) + 1


class MaskedAutoencoderViT(StampViT):
    """MAE (``models_mae.MaskedAutoencoderViT``) whose encoder is a ``StampViT``.

    ``forward(images, noise=None)`` returns ``(loss, pred, mask)`` as MAE's does; ``noise``
    (B, L) fixes the masking (evaluation). Defaults: MAE's ViT-B/16 with the 512-d, 8-block,
    16-head decoder (``mae_vit_base_patch16_dec512d8b``) and ``norm_pix_loss`` (PRETRAIN.md).
    """

    def __init__(
        self,
        *,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mask_input: MaskInput = "block",
    ) -> None:
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"model.mask_ratio must be in [0, 1), got {mask_ratio}")
        n_visible = visible_tokens(img_size, patch_size, mask_ratio)
        if n_visible < 2:
            raise ValueError(
                f"model.mask_ratio={mask_ratio} keeps no patch of the "
                f"{img_size}/{patch_size} grid: lower it or use a larger image"
            )
        super().__init__(
            mask=mask,
            attention=attention,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            norm_eps=norm_eps,
            global_pool="token",  # no fc_norm: the encoder ends with `norm`, as MAE's
            drop_path_rate=0.0,
            head_init_std=None,
            mask_input=mask_input,
            generator_tokens=n_visible,
        )
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.patch_size, self.in_chans = self.patch_embed.patch_size[0], in_chans
        num_patches = self.patch_embed.num_patches
        self.pos_embed.requires_grad_(False)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim,
                decoder_num_heads,
                mlp_ratio,
                qkv_bias=True,
                norm_layer=norm_layer,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's ``initialize_weights``, then the STAMP generators' own init."""
        grid = self.patch_embed.grid_size[0]
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, True)[None])
            self.decoder_pos_embed.copy_(
                sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid, True)[None]
            )
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear, not a Conv2d
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        init_mask_generators(self)

    def forward_encoder(
        self, images: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Images (B, C, H, W) -> latent (B, 1 + L_keep, D), mask (B, L), ids_restore (B, L)."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return self.norm(self.run_blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Latent (B, 1 + L_keep, D) -> predicted patches (B, L, p * p * C)."""
        x = self.decoder_embed(latent)
        b, n_kept, dim = x.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] + 1 - n_kept, -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(  # type: ignore[override]
        self, images: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (loss, pred (B, L, p * p * C), mask (B, L), 1 = removed)."""
        latent, mask, ids_restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = reconstruction_loss(images, pred, mask, self.patch_size, self.norm_pix_loss)
        return loss, pred, mask
