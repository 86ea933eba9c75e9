"""Tiny random models built on PyTorch's ``nn.MultiheadAttention``, one input batch each:
``nn.Transformer`` (batch-first or not), a DETR / Moment-DETR style transformer (the official
layers: sequence-first, positions added to queries and keys only), torchvision's ViT, OpenCLIP's
CLIP and CoCa (cross-attention: attention pooling with learnt queries, a text decoder that
reads the image tokens)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DIM, HEADS, B = 32, 4, 2


@dataclass
class MhaFamily:
    name: str
    build: Callable[[], nn.Module]  # same weights each call
    run: Callable[[nn.Module], Tensor]  # the model's output on a fixed batch
    layers: int  # nn.MultiheadAttention modules
    n_max: int | None = None  # None: stamp.inject finds it


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def padding(n: int) -> Tensor:
    pad = torch.zeros(B, n, dtype=torch.bool)
    pad[1, n - 3 :] = True  # the second sample is 3 tokens shorter
    return pad


# --------------------------------------------------------------------------- nn.Transformer
def transformer(batch_first: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Transformer(
        DIM, HEADS, 2, 2, dim_feedforward=64, dropout=0.1, batch_first=batch_first
    )


def run_transformer(model: nn.Transformer) -> Tensor:
    src = torch.randn(B, 9, DIM, generator=_gen(1))
    tgt = torch.randn(B, 5, DIM, generator=_gen(2))
    if not model.batch_first:
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
    out = model(
        src,
        tgt,
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(5),
        tgt_is_causal=True,
        src_key_padding_mask=padding(9),
        memory_key_padding_mask=padding(9),
    )
    return out if model.batch_first else out.transpose(0, 1)


# ------------------------------------------------------------- DETR / Moment-DETR's layers
class DetrEncoderLayer(nn.Module):
    """DETR's ``TransformerEncoderLayer.forward_post`` (Moment-DETR, QD-DETR keep it)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pad: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos
        src2 = self.self_attn(q, k, value=src, key_padding_mask=pad)[0]
        src = self.norm1(src + self.dropout(src2))
        src2 = self.linear2(self.dropout(torch.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(src2))


class DetrDecoderLayer(nn.Module):
    """DETR's ``TransformerDecoderLayer.forward_post``: self-attention over the queries, then
    cross-attention from the queries (+ query_pos) to the memory (+ pos)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, memory: Tensor, pad: Tensor, pos: Tensor, query_pos: Tensor
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, value=tgt)[0]))
        tgt2 = self.multihead_attn(
            query=tgt + query_pos, key=memory + pos, value=memory, key_padding_mask=pad
        )[0]
        tgt = self.norm2(tgt + self.dropout(tgt2))
        tgt2 = self.linear2(self.dropout(torch.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(tgt2))


class TinyDetr(nn.Module):
    """Moment-DETR's layout: clip features (B, L, D) + a padding mask -> span logits of each
    query; sequence-first inside, as the official code."""

    def __init__(self, queries: int = 5) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(DetrEncoderLayer(DIM, HEADS, 64, 0.1) for _ in range(2))
        self.decoder = nn.ModuleList(DetrDecoderLayer(DIM, HEADS, 64, 0.1) for _ in range(2))
        self.query_embed = nn.Embedding(queries, DIM)
        self.span_embed = nn.Linear(DIM, 2)

    def forward(self, src: Tensor, pad: Tensor, pos: Tensor) -> Tensor:
        src, pos = src.transpose(0, 1), pos.transpose(0, 1)  # (L, B, D)
        for layer in self.encoder:
            src = layer(src, pad, pos)
        query_pos = self.query_embed.weight[:, None].expand(-1, src.shape[1], -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, src, pad, pos, query_pos)
        return self.span_embed(tgt).transpose(0, 1)  # (B, queries, 2)


def detr() -> nn.Module:
    torch.manual_seed(0)
    return TinyDetr()


def run_detr(model: nn.Module) -> Tensor:
    src = torch.randn(B, 9, DIM, generator=_gen(1))
    pos = torch.randn(B, 9, DIM, generator=_gen(3))
    return model(src, padding(9), pos)


# -------------------------------------------------------------------- torchvision / OpenCLIP
def torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=HEADS, hidden_dim=DIM, mlp_dim=64,
        num_classes=5, dropout=0.1, attention_dropout=0.1,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at 0 (output 0)
    return model


def _pixels() -> Tensor:
    return torch.randn(B, 3, 32, 32, generator=_gen(4))


def _tokens(context: int = 10) -> Tensor:
    """Token ids as OpenCLIP's tokenizer lays them out: text, the end token (the largest id,
    where CLIP pools), then 0-padding up to ``context``."""
    ids = torch.zeros(B, context, dtype=torch.long)
    ids[:, :9] = torch.randint(1, 99, (B, 9), generator=_gen(5))
    ids[0, 9], ids[1, 6:] = 99, torch.tensor([99] + [0] * (context - 7))
    return ids


TOWER = dict(width=DIM, layers=2, mlp_ratio=2)


def open_clip_model() -> nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(head_width=8, patch_size=8, image_size=32, **TOWER),
        text_cfg=dict(context_length=16, vocab_size=100, heads=HEADS, **TOWER),
    )


def run_open_clip(model: nn.Module) -> Tensor:
    image, text, _ = model(_pixels(), _tokens(16))
    return torch.cat([image, text])


def open_clip_coca() -> nn.Module:
    import open_clip

    torch.manual_seed(0)
    one = dict(TOWER, layers=1)
    model = open_clip.CoCa(
        embed_dim=DIM,
        multimodal_cfg=dict(context_length=16, vocab_size=100, heads=HEADS, **one),
        vision_cfg=dict(
            head_width=8,
            patch_size=8,
            image_size=32,
            attentional_pool=True,
            attn_pooler_queries=4,
            attn_pooler_heads=HEADS,
            output_tokens=True,
            **one,
        ),  # fmt: skip
        text_cfg=dict(
            context_length=16,
            vocab_size=100,
            heads=HEADS,
            embed_cls=True,
            output_tokens=True,
            **one,
        ),  # fmt: skip
    )
    # open_clip 3.3 leaves the text decoder's projection as torch.empty (its init_parameters
    # is not called by CoCa): set it, or the logits are whatever the memory held (NaN at times)
    nn.init.normal_(model.text_decoder.text_projection, std=DIM**-0.5)
    return model


def run_coca(model: nn.Module) -> Tensor:
    out = model(_pixels(), _tokens())
    return torch.cat([out["logits"].flatten(1), out["image_features"], out["text_features"]], 1)


FAMILIES = {
    "transformer_batch_first": MhaFamily(
        "transformer_batch_first", lambda: transformer(True), run_transformer, 6, n_max=9
    ),
    "transformer_seq_first": MhaFamily(
        "transformer_seq_first", lambda: transformer(False), run_transformer, 6, n_max=9
    ),
    "detr": MhaFamily("detr", detr, run_detr, 6, n_max=9),
    "torchvision_vit": MhaFamily("torchvision_vit", torchvision_vit, lambda m: m(_pixels()), 2),
    "open_clip": MhaFamily("open_clip", open_clip_model, run_open_clip, 4),
    # cross-attention: attention pooling (4 learnt queries -> 17 image tokens) and the text
    # decoder's cross-attention (text -> the pooled image tokens); 17 = the longest key set
    "open_clip_coca": MhaFamily("open_clip_coca", open_clip_coca, run_coca, 5, n_max=17),
}
