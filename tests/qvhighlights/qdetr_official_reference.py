"""An independent re-statement of the official QD-DETR forward (``wjun0830/QD-DETR``:
``qd_detr/model.py`` ``QDDETR``, ``qd_detr/transformer.py`` ``Transformer``,
``T2V_TransformerEncoderLayer``, ``TransformerEncoderLayer``, ``TransformerDecoder(Layer)``,
``qd_detr/position_encoding.py``), written for the equivalence test from the published
formulas, with the original's building blocks and layout:

* ``nn.MultiheadAttention`` (packed in-projection, sequence-first tensors) in the T2V and
  self-attention layers, DAB-DETR's projection-free attention in the decoder;
* the T2V attention mask built as the original: (padded clip x padded token) pairs repeated
  ``nhead`` times along the batch axis (``Tensor.repeat``), handed to ``nn.MultiheadAttention``;
* the official parameter names, so that ``tasks.qvhighlights.convert`` is tested too.

Only generalisation: the decoder's anchor sine embedding uses ``d_model // 2`` frequencies where
the original hard-codes 128 (d_model = 256), so that the test runs at toy width.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        sizes = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class LinearLayer(nn.Module):
    def __init__(self, in_hsz: int, out_hsz: int, dropout: float, relu: bool):
        super().__init__()
        self.relu = relu
        self.LayerNorm = nn.LayerNorm(in_hsz)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_hsz, out_hsz))

    def forward(self, x: Tensor) -> Tensor:
        x = self.net(self.LayerNorm(x))
        return F.relu(x) if self.relu else x


class TrainablePositionalEncoding(nn.Module):
    def __init__(self, max_position_embeddings: int, hidden_size: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_feat: Tensor) -> Tensor:
        bsz, length = input_feat.shape[:2]
        ids = torch.arange(length).unsqueeze(0).repeat(bsz, 1)
        return self.dropout(self.LayerNorm(input_feat + self.position_embeddings(ids)))


def sine_position_embedding(mask: Tensor, num_pos_feats: int) -> Tensor:
    """PositionEmbeddingSine(num_pos_feats, normalize=True) on a (B, L) valid-mask."""
    x_embed = mask.cumsum(1, dtype=torch.float32)
    x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos = x_embed[:, :, None] / dim_t
    return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)


def anchor_sine_embedding(anchors: Tensor, d_model: int) -> Tensor:
    """gen_sineembed_for_position with d_model // 2 frequencies per coordinate."""
    n = d_model // 2
    dim_t = torch.arange(n, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / n)
    parts = []
    for c in range(2):
        p = anchors[:, :, c] * (2 * math.pi)
        p = p[:, :, None] / dim_t
        parts.append(torch.stack((p[:, :, 0::2].sin(), p[:, :, 1::2].cos()), dim=3).flatten(2))
    return torch.cat(parts, dim=2)


class T2VLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = nn.PReLU()
        self.nhead = nhead

    def forward(self, src: Tensor, padding: Tensor, pos: Tensor, video_length: int) -> Tensor:
        V = video_length
        with_pos = src + pos
        q, k, v = with_pos[1 : V + 1], with_pos[V + 1 :], src[V + 1 :]
        q_pad = padding[:, 1 : V + 1].unsqueeze(2).float()
        k_pad = padding[:, V + 1 :].unsqueeze(1).float()
        attn_mask = torch.matmul(q_pad, k_pad).bool().repeat(self.nhead, 1, 1)
        out = self.self_attn(
            q, k, value=v, attn_mask=attn_mask, key_padding_mask=padding[:, V + 1 :]
        )[0]
        x = src[1 : V + 1] + self.dropout1(out)
        y = self.linear2(self.dropout(self.activation(self.linear1(self.norm1(x)))))
        x = self.norm2(x + self.dropout2(y))
        return torch.cat([src[:1], x, src[V + 1 :]], dim=0)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = nn.PReLU()

    def forward(self, src: Tensor, padding: Tensor, pos: Tensor) -> Tensor:
        qk = src + pos
        src = self.norm1(
            src + self.dropout1(self.self_attn(qk, qk, src, key_padding_mask=padding)[0])
        )
        y = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(y))


class DABAttention(nn.Module):
    """Attention on projected inputs (L, B, E): q scaled by (E / H)^-0.5, values of width vdim."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, vdim: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.out_proj = nn.Linear(vdim, vdim)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None):
        L, B, E = q.shape
        H = self.num_heads
        q = q * float(E // H) ** -0.5
        q = q.reshape(L, B * H, E // H).transpose(0, 1)
        k = k.reshape(k.shape[0], B * H, E // H).transpose(0, 1)
        v = v.reshape(v.shape[0], B * H, v.shape[2] // H).transpose(0, 1)
        w = torch.bmm(q, k.transpose(1, 2))
        if key_padding_mask is not None:
            w = w.view(B, H, L, -1).masked_fill(key_padding_mask[:, None, None], float("-inf"))
            w = w.view(B * H, L, -1)
        w = F.dropout(
            torch.softmax(w - w.max(-1, keepdim=True)[0], -1), self.dropout, self.training
        )
        out = torch.bmm(w, v).transpose(0, 1).reshape(L, B, -1)
        return self.out_proj(out), None


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        for name in ("sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj"):
            setattr(self, name, nn.Linear(d_model, d_model))
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = DABAttention(d_model, nhead, dropout, vdim=d_model)
        self.norm1, self.dropout1 = nn.LayerNorm(d_model), nn.Dropout(dropout)
        for name in ("ca_qcontent_proj", "ca_qpos_proj", "ca_kcontent_proj", "ca_kpos_proj"):
            setattr(self, name, nn.Linear(d_model, d_model))
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = DABAttention(d_model * 2, nhead, dropout, vdim=d_model)
        self.nhead = nhead
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = nn.PReLU()

    def forward(self, tgt, memory, padding, pos, query_pos, query_sine_embed, is_first):
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))[0]))

        nq, bs, d = tgt.shape
        hw = memory.shape[0]
        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        v = self.ca_v_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if is_first:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        h = self.nhead
        sine = self.ca_qpos_sine_proj(query_sine_embed).view(nq, bs, h, d // h)
        q = torch.cat([q.view(nq, bs, h, d // h), sine], dim=3).view(nq, bs, 2 * d)
        k = torch.cat([k.view(hw, bs, h, d // h), k_pos.view(hw, bs, h, d // h)], 3)
        k = k.view(hw, bs, 2 * d)
        out = self.cross_attn(q, k, v, key_padding_mask=padding)[0]
        tgt = self.norm2(tgt + self.dropout2(out))
        y = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(y))


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, d_model, 2)
        self.bbox_embed = MLP(d_model, d_model, 2, 3)
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)
        self.ref_anchor_head = MLP(d_model, d_model, 1, 2)
        for layer in self.layers[1:]:
            layer.ca_qpos_proj = None  # keep_query_pos=False
        self.d_model = d_model

    def forward(self, tgt, memory, padding, pos, refpoints_unsigmoid):
        output = tgt
        reference = refpoints_unsigmoid.sigmoid()
        refs, intermediate = [reference], []
        for i, layer in enumerate(self.layers):
            sine = anchor_sine_embedding(reference, self.d_model)
            query_pos = self.ref_point_head(sine)
            sine = sine * (1 if i == 0 else self.query_scale(output))
            sine = (
                sine
                * (self.ref_anchor_head(output).sigmoid()[..., 0] / reference[..., 1])[..., None]
            )
            output = layer(output, memory, padding, pos, query_pos, sine, is_first=i == 0)
            new_reference = (self.bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
            if i != len(self.layers) - 1:
                refs.append(new_reference)
            reference = new_reference.detach()
            intermediate.append(self.norm(output))
        return torch.stack(intermediate).transpose(1, 2), torch.stack(refs).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


class Transformer(nn.Module):
    def __init__(self, d_model, nhead, num_encoder_layers, num_decoder_layers, ffn, dropout):
        super().__init__()
        self.t2v_encoder = Encoder(T2VLayer(d_model, nhead, ffn, dropout), num_encoder_layers)
        self.encoder = Encoder(EncoderLayer(d_model, nhead, ffn, dropout), num_encoder_layers)
        self.decoder = Decoder(
            DecoderLayer(d_model, nhead, ffn, dropout), num_decoder_layers, d_model
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model = d_model

    def forward(self, src, padding, query_embed, pos_embed, video_length):
        bs = src.shape[0]
        src, pos_embed = src.permute(1, 0, 2), pos_embed.permute(1, 0, 2)
        refpoints = query_embed.unsqueeze(1).repeat(1, bs, 1)
        for layer in self.t2v_encoder.layers:
            src = layer(src, padding, pos_embed, video_length)
        src, padding = src[: video_length + 1], padding[:, : video_length + 1]
        pos_embed = pos_embed[: video_length + 1]
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory, padding, pos_embed)
        tgt = torch.zeros(refpoints.shape[0], bs, self.d_model, dtype=src.dtype)
        hs, references = self.decoder(tgt, memory[1:], padding[:, 1:], pos_embed[1:], refpoints)
        return hs, references, memory[1:].transpose(0, 1), memory[0]


class OfficialQDDETR(nn.Module):
    """``QDDETR`` as ``build_model`` makes it (no audio, no contrastive alignment, l1 spans)."""

    def __init__(
        self,
        vid_dim: int,
        txt_dim: int,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        enc_layers: int = 2,
        dec_layers: int = 2,
        num_queries: int = 10,
        dropout: float = 0.1,
        input_dropout: float = 0.5,
        max_q_l: int = 32,
        use_txt_pos: bool = False,
    ):
        super().__init__()
        d = hidden_dim
        self.use_txt_pos = use_txt_pos
        self.transformer = Transformer(d, nheads, enc_layers, dec_layers, dim_feedforward, dropout)
        self.txt_position_embed = TrainablePositionalEncoding(max_q_l, d, input_dropout)
        self.span_embed = MLP(d, d, 2, 3)
        self.class_embed = nn.Linear(d, 2)
        self.query_embed = nn.Embedding(num_queries, 2)
        self.input_txt_proj = nn.Sequential(
            LinearLayer(txt_dim, d, input_dropout, relu=True),
            LinearLayer(d, d, input_dropout, relu=False),
        )
        self.input_vid_proj = nn.Sequential(
            LinearLayer(vid_dim, d, input_dropout, relu=True),
            LinearLayer(d, d, input_dropout, relu=False),
        )
        self.saliency_proj1 = nn.Linear(d, d)
        self.saliency_proj2 = nn.Linear(d, d)
        self.hidden_dim = d
        self.global_rep_token = nn.Parameter(torch.randn(d))
        self.global_rep_pos = nn.Parameter(torch.randn(d))

    def _encode_inputs(self, src_vid, src_vid_mask, src_txt, src_txt_mask, pos):
        B = src_vid.shape[0]
        valid = torch.cat(
            [torch.ones(B, 1, dtype=torch.bool), src_vid_mask.bool(), src_txt_mask.bool()], 1
        )
        src = torch.cat([self.global_rep_token.expand(B, 1, -1), src_vid, src_txt], dim=1)
        return src, ~valid, pos

    def forward(self, src_txt, src_txt_mask, src_vid, src_vid_mask):
        src_vid = self.input_vid_proj(src_vid)
        src_txt = self.input_txt_proj(src_txt)
        B, V = src_vid.shape[:2]
        pos_vid = sine_position_embedding(src_vid_mask, self.hidden_dim)
        pos_txt = (
            self.txt_position_embed(src_txt) if self.use_txt_pos else torch.zeros_like(src_txt)
        )
        pos = torch.cat([self.global_rep_pos.expand(B, 1, -1), pos_vid, pos_txt], dim=1)
        src, padding, _ = self._encode_inputs(src_vid, src_vid_mask, src_txt, src_txt_mask, pos)
        hs, reference, vid_mem, global_mem = self.transformer(
            src, padding, self.query_embed.weight, pos, V
        )
        logits = self.class_embed(hs)
        spans = (self.span_embed(hs) + inverse_sigmoid(reference)).sigmoid()

        txt_neg = torch.cat([src_txt[1:], src_txt[:1]], dim=0)
        mask_neg = torch.cat([src_txt_mask[1:], src_txt_mask[:1]], dim=0)
        src_n, padding_n, _ = self._encode_inputs(src_vid, src_vid_mask, txt_neg, mask_neg, pos)
        _, _, vid_mem_neg, global_mem_neg = self.transformer(
            src_n, padding_n, self.query_embed.weight, pos.clone(), V
        )

        def saliency(v, g):
            return (self.saliency_proj1(v) * self.saliency_proj2(g).unsqueeze(1)).sum(-1) / (
                math.sqrt(self.hidden_dim)
            )

        return {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": saliency(vid_mem, global_mem),
            "saliency_scores_neg": saliency(vid_mem_neg, global_mem_neg),
            "aux_outputs": [
                {"pred_logits": a, "pred_spans": b}
                for a, b in zip(logits[:-1], spans[:-1], strict=True)
            ],
        }
