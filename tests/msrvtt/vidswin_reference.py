"""A re-implementation of the original Video Swin backbone's forward (``SwinTransformer3D`` of
SwinTransformer/Video-Swin-Transformer, ``mmaction/models/backbones/swin_transformer.py``, the
backbone SwinBERT's ``load_swin.py`` builds) as a function of a state dict in *its* key layout.

Written from the original's formulas, independently of torchvision, so that loading a VidSwin
checkpoint into torchvision's ``SwinTransformer3d`` (``tasks.msrvtt.model.vidswin_to_torchvision``)
is checked against what the original computes. What the original does, and this follows:

* PatchEmbed3D: pad D, H, W to multiples of the patch, Conv3d(stride = patch), LayerNorm over C
  (``patch_norm=True`` in SwinBERT's configs).
* Each stage (BasicLayer): the window is clipped to the feature size where the size is not
  larger than the window, and that dimension is then not shifted; blocks alternate shift 0 and
  window // 2. Block: x + attn(LN1(x)), then x + MLP(LN2(x)) (fc1, GELU, fc2).
* Window attention: LN1 output padded at the end to multiples of the window, rolled by -shift,
  cut into windows (D, H, W order); q scaled by head_dim^-0.5; relative-position bias
  table[index[:N, :N]] with index = (dd + Wd - 1)(2Wh - 1)(2Ww - 1) + (dh + Wh - 1)(2Ww - 1)
  + (dw + Ww - 1) over the *configured* window (sliced when the window is clipped); with a
  shift, pairs from different shift regions get -100; softmax; proj; windows put back, rolled
  by +shift, padding cut.
* PatchMerging after every stage but the last: pad H, W to even, concatenate the (0,0), (1,0),
  (0,1), (1,1) sub-grids of (H, W), LayerNorm(4C), Linear(4C, 2C, no bias).
* Final LayerNorm over C. Output here: (B, D', H', W', C).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_position_index(window: tuple[int, int, int]) -> Tensor:
    """(N, N) index into the bias table for the configured window, by explicit coordinates."""
    wd, wh, ww = window
    coords = list(itertools.product(range(wd), range(wh), range(ww)))
    n = len(coords)
    index = torch.empty(n, n, dtype=torch.long)
    for i, (d1, h1, w1) in enumerate(coords):
        for j, (d2, h2, w2) in enumerate(coords):
            dd, dh, dw = d1 - d2 + wd - 1, h1 - h2 + wh - 1, w1 - w2 + ww - 1
            index[i, j] = dd * (2 * wh - 1) * (2 * ww - 1) + dh * (2 * ww - 1) + dw
    return index


def random_vidswin_state(
    *,
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window: tuple[int, int, int],
    patch: tuple[int, int, int],
    mlp_ratio: int = 4,
    num_classes: int = 7,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random checkpoint in the release's layout: ``backbone.*`` (with the relative position
    index buffers) and an mmaction ``cls_head.fc_cls``; no value is trivial (norms too)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2, offset: float = 0.0) -> Tensor:
        return offset + scale * torch.randn(*shape, generator=g)

    s: dict[str, Tensor] = {
        "patch_embed.proj.weight": rand(embed_dim, 3, *patch),
        "patch_embed.proj.bias": rand(embed_dim),
        "patch_embed.norm.weight": rand(embed_dim, offset=1.0),
        "patch_embed.norm.bias": rand(embed_dim),
    }
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        c = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            s |= {
                p + "norm1.weight": rand(c, offset=1.0),
                p + "norm1.bias": rand(c),
                p + "attn.relative_position_bias_table": rand(table, heads, scale=0.5),
                p + "attn.relative_position_index": relative_position_index(window),
                p + "attn.qkv.weight": rand(3 * c, c, scale=c**-0.5),
                p + "attn.qkv.bias": rand(3 * c),
                p + "attn.proj.weight": rand(c, c, scale=c**-0.5),
                p + "attn.proj.bias": rand(c),
                p + "norm2.weight": rand(c, offset=1.0),
                p + "norm2.bias": rand(c),
                p + "mlp.fc1.weight": rand(mlp_ratio * c, c, scale=c**-0.5),
                p + "mlp.fc1.bias": rand(mlp_ratio * c),
                p + "mlp.fc2.weight": rand(c, mlp_ratio * c, scale=(mlp_ratio * c) ** -0.5),
                p + "mlp.fc2.bias": rand(c),
            }
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample."
            s |= {
                p + "reduction.weight": rand(2 * c, 4 * c, scale=(4 * c) ** -0.5),
                p + "norm.weight": rand(4 * c, offset=1.0),
                p + "norm.bias": rand(4 * c),
            }
    c = embed_dim * 2 ** (len(depths) - 1)
    s |= {"norm.weight": rand(c, offset=1.0), "norm.bias": rand(c)}
    state = {"backbone." + k: v for k, v in s.items()}
    state["cls_head.fc_cls.weight"] = rand(num_classes, c)
    state["cls_head.fc_cls.bias"] = rand(num_classes)
    return state


def _ln(x: Tensor, s: dict[str, Tensor], p: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], s[p + "weight"], s[p + "bias"], eps=1e-5)


def _windows(x: Tensor, w: tuple[int, int, int]) -> Tensor:
    """(B, D, H, W, C) -> (B * nW, Wd*Wh*Ww, C), windows in (D, H, W) raster order."""
    B, D, H, W, C = x.shape
    x = x.view(B, D // w[0], w[0], H // w[1], w[1], W // w[2], w[2], C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], C)


def _unwindows(x: Tensor, w: tuple[int, int, int], B: int, D: int, H: int, W: int) -> Tensor:
    x = x.view(B, D // w[0], H // w[1], W // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, D, H, W, -1)


def _shift_mask(size: tuple[int, int, int], w, shift) -> Tensor:
    """(nW, N, N): 0 within a shift region, -100 across regions."""
    region = torch.zeros(1, *size, 1)
    count = 0
    bounds = [((0, -w[i]), (-w[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    for (d0, d1), (h0, h1), (w0, w1) in itertools.product(*bounds):
        region[:, d0:d1, h0:h1, w0:w1, :] = count
        count += 1
    ids = _windows(region, w).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _block(x: Tensor, s, p: str, heads: int, window, shift, full_window) -> Tensor:
    B, D, H, W, C = x.shape
    h = _ln(x, s, p + "norm1.")
    pads = [(window[i] - size % window[i]) % window[i] for i, size in enumerate((D, H, W))]
    h = F.pad(h, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    Dp, Hp, Wp = D + pads[0], H + pads[1], W + pads[2]
    shifted = any(shift)
    if shifted:
        h = torch.roll(h, shifts=tuple(-v for v in shift), dims=(1, 2, 3))
    win = _windows(h, window)
    n = win.shape[1]
    qkv = F.linear(win, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
    q, k, v = qkv.view(win.shape[0], n, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    logits = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)
    index = relative_position_index(full_window)[:n, :n]
    bias = s[p + "attn.relative_position_bias_table"][index.reshape(-1)].view(n, n, heads)
    logits = logits + bias.permute(2, 0, 1)[None]
    if shifted:
        mask = _shift_mask((Dp, Hp, Wp), window, shift)
        nw = mask.shape[0]
        logits = logits.view(-1, nw, heads, n, n) + mask[None, :, None]
        logits = logits.view(-1, heads, n, n)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(win.shape[0], n, C)
    out = F.linear(out, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    h = _unwindows(out, window, B, Dp, Hp, Wp)
    if shifted:
        h = torch.roll(h, shifts=tuple(shift), dims=(1, 2, 3))
    x = x + h[:, :D, :H, :W]
    m = F.gelu(F.linear(_ln(x, s, p + "norm2."), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
    return x + F.linear(m, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])


def _merge(x: Tensor, s, p: str) -> Tensor:
    H, W = x.shape[2], x.shape[3]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x = torch.cat([x[:, :, a::2, b::2] for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))], dim=-1)
    return F.linear(_ln(x, s, p + "norm."), s[p + "reduction.weight"])


def vidswin_forward(
    state: dict[str, Tensor],
    video: Tensor,
    *,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window: tuple[int, int, int],
    patch: tuple[int, int, int],
) -> Tensor:
    """The original backbone on ``video`` (B, 3, F, H, W) -> (B, D', H', W', C), eval mode."""
    s = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    pads = [(patch[i] - size % patch[i]) % patch[i] for i, size in enumerate(video.shape[2:])]
    x = F.pad(video, (0, pads[2], 0, pads[1], 0, pads[0]))
    x = F.conv3d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch)
    x = _ln(x.permute(0, 2, 3, 4, 1), s, "patch_embed.norm.")
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        size = x.shape[1:4]
        eff = tuple(min(size[d], window[d]) for d in range(3))
        half = tuple(0 if size[d] <= window[d] else window[d] // 2 for d in range(3))
        for j in range(depth):
            shift = (0, 0, 0) if j % 2 == 0 else half
            x = _block(x, s, f"layers.{i}.blocks.{j}.", heads, eff, shift, window)
        if i < len(depths) - 1:
            x = _merge(x, s, f"layers.{i}.downsample.")
    return _ln(x, s, "norm.")
