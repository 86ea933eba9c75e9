"""QD-DETR (Moon et al., CVPR 2023; wjun0830/QD-DETR) with STAMP in its encoder.

    video, text features -> input projections (LN, dropout, linear) ->
    2 text-to-video cross-attention layers (video queries, text keys)      <- STAMP (``t2v``)
    -> 2 self-attention layers over [global token, video]                  <- STAMP (``self``)
    -> DAB-style decoder: 10 learnable anchors (center, width), 2 layers, iterative refinement
    -> class (fg / bg), span (center, width) and saliency heads.
    Negative pairs: the encoder runs again with the text rolled by one in the batch.

With the same weights and ``mask=none`` the forward equals the official ``QDDETR`` (checked in
``tests/qvhighlights/test_official_equivalence.py`` against a re-implementation of the official
layers; ``tasks/qvhighlights/convert.py`` maps official state dicts to this model):

* the T2V layer is ``QDDETRT2VLayer`` below, in the official order
  ``x1 = x + attn(x); x = norm2(x1 + ffn(norm1(x1)))`` (not DETR post-norm);
* ``official_padding_bug`` (default True) reproduces the official T2V attention mask, which is
  repeated head-major (``.repeat(nhead, 1, 1)``) where ``nn.MultiheadAttention`` reads it
  batch-major, so for batch > 1 a head masks the (padded clip, padded token) pairs of another
  sample of the batch; False masks padded text tokens only (the intended behaviour);
* ``txt_position_embed`` exists but is unused (the original's ``use_txt_pos=False``);
* initialisation as ``Transformer._reset_parameters`` (see ``_reset_transformer_parameters``).

The self-attention layers come from the shared core (``stamp.StampEncoder``: DETR post-norm,
positions added to queries / keys only, as the official ``TransformerEncoderLayer``); the decoder
is task specific and lives here. ``stamp_layers`` picks which encoder groups get the mask; a
group not listed runs full attention. The T2V layers support the mask types ``none``,
``global``, ``multilayer`` and ``extra_linear`` (their ``MaskPlan`` holds
``stamp.plan.CROSS_ATTENTION_PARTS``); for ``sparse`` / ``extra_layers`` they stay full (the
self-attention encoder applies them). ``mask.generator=lowrank`` makes the T2V generators
read the text tokens as keys (any number of clips / query tokens); ``mask.per_head`` gives one
mask per head in every group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp import (
    AttentionConfig,
    Fusion,
    FusionOrder,
    MaskConfig,
    MaskGenerator,
    MaskPlan,
    SparseMask,
    StampAttention,
    StampCrossAttentionLayer,
    StampEncoder,
    as_mask_config,
    full_attention,
    mask_modules,
)
from stamp.plan import CROSS_ATTENTION_PARTS

log = logging.getLogger(__name__)

STAMP_GROUPS = ("t2v", "self")


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box-head MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class LinearLayer(nn.Module):
    """Input projection block: LayerNorm -> dropout -> linear (-> ReLU)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, relu: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(self.drop(self.norm(x)))
        return F.relu(x) if self.relu else x


def input_projection(in_dim: int, dim: int, dropout: float, n_layers: int = 2) -> nn.Sequential:
    """QD-DETR's ``n_input_proj`` blocks; ReLU on all but the last."""
    dims = [in_dim] + [dim] * n_layers
    return nn.Sequential(
        *(LinearLayer(dims[i], dim, dropout, relu=i < n_layers - 1) for i in range(n_layers))
    )


def _sine(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """(..., ) positions -> (..., dim) interleaved sin / cos features (DETR), in the dtype of
    ``values`` (the original: float32)."""
    i = torch.arange(dim, dtype=values.dtype, device=values.device)
    freqs = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    x = values[..., None] / freqs
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def video_position_embedding(mask: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised sine positions of the valid clips, (B, L) mask -> (B, L, dim) (the official
    ``PositionEmbeddingSine(dim, normalize=True)``). Computed in float32 as the original, or in
    float64 for float64 inputs; returned in ``dtype``."""
    work = torch.promote_types(dtype, torch.float32)
    pos = mask.to(work).cumsum(1)
    pos = pos / (pos[:, -1:] + 1e-6) * 2 * math.pi
    return _sine(pos, dim).to(dtype)


def anchor_sine_embedding(anchors: Tensor, dim: int) -> Tensor:
    """Anchors (..., 2) as (center, width) in [0, 1] -> (..., dim): half for each coordinate."""
    half = dim // 2
    return torch.cat(
        [_sine(anchors[..., 0] * 2 * math.pi, half), _sine(anchors[..., 1] * 2 * math.pi, half)],
        dim=-1,
    )


class ProjectedAttention(nn.Module):
    """Multi-head attention on already projected q / k / v (DAB-DETR's ``MultiheadAttention``):
    q scaled by (embed_dim / heads)^-0.5, values of another width, output projection only."""

    def __init__(self, embed_dim: int, num_heads: int, value_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (embed_dim // num_heads) ** -0.5
        self.dropout = dropout
        self.out_proj = nn.Linear(value_dim, value_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None):
        B, nq, _ = q.shape
        H = self.num_heads
        q = (q * self.scale).view(B, nq, H, -1).transpose(1, 2)
        k = k.view(B, k.shape[1], H, -1).transpose(1, 2)
        v = v.view(B, v.shape[1], H, -1).transpose(1, 2)
        logits = q @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        probs = F.dropout(logits.softmax(-1), self.dropout, self.training)
        out = (probs @ v).transpose(1, 2).reshape(B, nq, -1)
        return self.out_proj(out)


class DABDecoderLayer(nn.Module):
    """Conditional / DAB-DETR decoder layer: self-attention over the anchor queries, then
    cross-attention whose per-head query / key concatenate content and positional parts."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, first: bool):
        super().__init__()
        self.num_heads = num_heads
        self.sa_qcontent_proj = nn.Linear(dim, dim)
        self.sa_qpos_proj = nn.Linear(dim, dim)
        self.sa_kcontent_proj = nn.Linear(dim, dim)
        self.sa_kpos_proj = nn.Linear(dim, dim)
        self.sa_v_proj = nn.Linear(dim, dim)
        self.self_attn = ProjectedAttention(dim, num_heads, dim, dropout)
        self.norm1, self.dropout1 = nn.LayerNorm(dim), nn.Dropout(dropout)

        self.ca_qcontent_proj = nn.Linear(dim, dim)
        # only the first layer adds the anchor's query position to the content query
        self.ca_qpos_proj = nn.Linear(dim, dim) if first else None
        self.ca_kcontent_proj = nn.Linear(dim, dim)
        self.ca_kpos_proj = nn.Linear(dim, dim)
        self.ca_v_proj = nn.Linear(dim, dim)
        self.ca_qpos_sine_proj = nn.Linear(dim, dim)
        self.cross_attn = ProjectedAttention(2 * dim, num_heads, dim, dropout)
        self.norm2, self.dropout2 = nn.LayerNorm(dim), nn.Dropout(dropout)

        self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(dropout)
        self.norm3, self.dropout3 = nn.LayerNorm(dim), nn.Dropout(dropout)

    def _heads_concat(self, a: Tensor, b: Tensor) -> Tensor:
        B, n, d = a.shape
        H = self.num_heads
        return torch.cat([a.view(B, n, H, d // H), b.view(B, n, H, d // H)], -1).view(B, n, 2 * d)

    def forward(self, tgt, memory, memory_padding, pos, query_pos, query_sine):
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = self._heads_concat(q, self.ca_qpos_sine_proj(query_sine))
        k = self._heads_concat(k, k_pos)
        out = self.cross_attn(q, k, self.ca_v_proj(memory), key_padding_mask=memory_padding)
        tgt = self.norm2(tgt + self.dropout2(out))
        out = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(out))


class DABDecoder(nn.Module):
    """Anchor queries (center, width) refined layer by layer; returns the normed outputs of
    every layer and the (sigmoid) anchors each layer started from."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(
            DABDecoderLayer(dim, num_heads, ffn_dim, dropout, first=i == 0)
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.ref_point_head = MLP(dim, dim, dim, 2)
        self.bbox_embed = MLP(dim, dim, 2, 3)
        self.ref_anchor_head = MLP(dim, dim, 1, 2)

    def forward(self, memory: Tensor, memory_padding: Tensor, pos: Tensor, anchors: Tensor):
        B = memory.shape[0]
        ref = anchors.sigmoid()[None].expand(B, -1, -1)
        output = memory.new_zeros(B, anchors.shape[0], self.dim)
        refs, hs = [ref], []
        for i, layer in enumerate(self.layers):
            sine = anchor_sine_embedding(ref, self.dim)
            query_pos = self.ref_point_head(sine)
            if i > 0:
                sine = sine * self.query_scale(output)
            # modulated temporal attention: scale by the predicted / anchor width ratio
            sine = sine * (self.ref_anchor_head(output).sigmoid()[..., 0] / ref[..., 1])[..., None]
            output = layer(output, memory, memory_padding, pos, query_pos, sine)
            new_ref = (self.bbox_embed(output) + inverse_sigmoid(ref)).sigmoid()
            if i < len(self.layers) - 1:
                refs.append(new_ref)
            ref = new_ref.detach()
            hs.append(self.norm(output))
        return torch.stack(hs), torch.stack(refs)


class TrainablePositionalEncoding(nn.Module):
    """The official ``txt_position_embed``: learned positions + LayerNorm + dropout over the text
    tokens. The official model builds it but, with its default ``use_txt_pos=False``, never
    calls it; it is kept for equal parameter counts and state dicts (``model.use_txt_pos``)."""

    def __init__(self, max_len: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.LayerNorm = nn.LayerNorm(dim)  # noqa: N815 - the official parameter name
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        ids = torch.arange(x.shape[1], device=x.device)
        return self.dropout(self.LayerNorm(x + self.position_embeddings(ids)[None]))


def official_t2v_padding_bias(
    vid_pad: Tensor, txt_pad: Tensor, num_heads: int, dtype: torch.dtype
) -> Tensor:
    """The extra attention mask of the official T2V layer as an additive (B, H, Lv, Lt) bias.

    The official layer masks (padded clip, padded token) pairs, ``(B, Lv, Lt)``, and passes
    ``mask.repeat(nhead, 1, 1)`` to ``nn.MultiheadAttention``: row ``i`` of the repeat is sample
    ``i % B``, but the attention reads row ``i`` as (sample ``i // H``, head ``i % H``). So head
    ``h`` of sample ``b`` gets the pairs of sample ``(b * H + h) % B``, which can mask valid text
    tokens of ``b`` for some of its clips. For B = 1 (or without padding) it is a no-op.
    """
    pairs = vid_pad[:, :, None] & txt_pad[:, None, :]  # (B, Lv, Lt), True = masked
    B = pairs.shape[0]
    source = torch.arange(B * num_heads, device=pairs.device).view(B, num_heads) % B
    masked = pairs[source]  # (B, H, Lv, Lt)
    return torch.zeros(masked.shape, dtype=dtype, device=pairs.device).masked_fill(
        masked, float("-inf")
    )


class QDDETRT2VLayer(StampCrossAttentionLayer):
    """The official ``T2V_TransformerEncoderLayer`` (post-norm variant) with the STAMP mask: the
    shared cross-attention layer in QD-DETR's residual order (``official_t2v``, see ``StampLayer``):

        x1 = x + dropout1(attention(q = x + pos, k = text (+ text_pos), v = text))
        x  = norm2(x1 + dropout2(ffn(norm1(x1))))

    i.e. the FFN reads the normalised x1 but its residual adds the un-normalised x1 (DETR's
    post-norm layer would use norm1(x1) for both). M is (B, Lv, Lt) from the video tokens
    entering the layer (own generator) or from outside (``mask=global``); the official dropout
    (``dropout``) applies to the attention probabilities, both residuals and the FFN.
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, *, dropout: float = 0.1, **kwargs
    ) -> None:
        kwargs.setdefault("activation", "prelu")
        super().__init__(
            dim,
            num_heads,
            ffn_dim,
            context_dim=dim,
            dropout=dropout,
            attn_dropout=dropout,
            official_t2v=True,
            **kwargs,
        )


def group_mask(mask: MaskConfig, group: str, stamp_layers: Sequence[str]) -> MaskConfig:
    """The mask config a layer group runs with (full attention when not in ``stamp_layers``)."""
    return mask if group in stamp_layers else full_attention(mask)


class QDDETR(nn.Module):
    """QD-DETR with STAMP in the T2V and self-attention encoder layers.

    Defaults are the official hyper-parameters (``qd_detr/config.py``: hidden 256, 8 heads, FFN
    1024, 2 T2V + 2 encoder + 2 decoder layers, 10 queries, dropout 0.1, input dropout 0.5,
    2 input projection blocks, 75 clips, 32 query tokens, PReLU, aux outputs).
    ``official_padding_bug``: see the module docstring and ``official_t2v_padding_bias``.
    """

    def __init__(
        self,
        vid_dim: int,
        txt_dim: int,
        *,
        use_tef: bool = True,
        mask: MaskConfig | dict | None = None,
        attention: AttentionConfig | dict | None = None,
        stamp_layers: Sequence[str] = STAMP_GROUPS,
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        t2v_layers: int = 2,
        enc_layers: int = 2,
        dec_layers: int = 2,
        num_queries: int = 10,
        dropout: float = 0.1,
        input_dropout: float = 0.5,
        n_input_proj: int = 2,
        max_v_l: int = 75,
        max_q_l: int = 32,
        aux_loss: bool = True,
        official_padding_bug: bool = True,
        use_txt_pos: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(stamp_layers) - set(STAMP_GROUPS)
        if unknown:
            raise ValueError(
                f"model.stamp_layers: unknown groups {sorted(unknown)}; "
                f"choose from {list(STAMP_GROUPS)}"
            )
        self.mask_cfg = mask = as_mask_config(mask)
        self.t2v_plan = t2v = MaskPlan(
            group_mask(mask, "t2v", stamp_layers),
            attention,
            dim=hidden_dim,
            num_heads=num_heads,
            n_max=max_q_l,
            context_dim=hidden_dim,
            places=CROSS_ATTENTION_PARTS,
            where="QD-DETR's T2V cross-attention layers",
            fallback=True,
        )
        self.hidden_dim, self.max_v_l, self.max_q_l = hidden_dim, max_v_l, max_q_l
        self.num_heads = num_heads
        self.official_padding_bug, self.use_txt_pos = official_padding_bug, use_txt_pos
        self.decoder_aux_outputs = aux_loss  # (not "aux_loss": that name is the mask-loss hook)
        d = hidden_dim

        self.input_vid_proj = input_projection(
            vid_dim + (2 if use_tef else 0), d, input_dropout, n_input_proj
        )
        self.input_txt_proj = input_projection(txt_dim, d, input_dropout, n_input_proj)
        self.txt_position_embed = TrainablePositionalEncoding(max_q_l, d, input_dropout)
        if not use_txt_pos:
            # unused, as in the original (where AdamW skips it: it never gets a gradient);
            # frozen so that DDP does not wait for its gradient. Counted in params/total.
            self.txt_position_embed.requires_grad_(False)

        if (
            official_padding_bug
            and t2v.mask.uses_generator
            and t2v.mask.fusion is Fusion.mul
            and t2v.mask.fusion_order is FusionOrder.bias_first
        ):
            raise ValueError(
                "model.official_padding_bug=true adds the official T2V attention mask as a -inf "
                "bias; mask.fusion_order=bias_first would multiply it by M (NaN / +inf). Use "
                "mask.fusion_order=mask_first or model.official_padding_bug=false."
            )
        self.t2v_mask_generator = t2v.shared_generator()
        self.t2v_layers = nn.ModuleList(
            QDDETRT2VLayer(d, num_heads, ffn_dim, plan=t2v, dropout=dropout)
            for _ in range(t2v_layers)
        )
        self.encoder = StampEncoder(
            enc_layers,
            d,
            num_heads,
            ffn_dim,
            n_max=max_v_l + 1,
            mask=group_mask(mask, "self", stamp_layers),
            attention=t2v.attention,
            dropout=dropout,
            attn_dropout=dropout,
            activation="prelu",
        )
        self.decoder = DABDecoder(d, num_heads, ffn_dim, dec_layers, dropout)
        self._reset_transformer_parameters()

        self.query_embed = nn.Embedding(num_queries, 2)  # anchors (center, width), pre-sigmoid
        self.class_embed = nn.Linear(d, 2)  # 0: foreground, 1: background
        self.span_embed = MLP(d, d, 2, 3)
        self.saliency_proj1 = nn.Linear(d, d)
        self.saliency_proj2 = nn.Linear(d, d)
        self.global_rep_token = nn.Parameter(torch.randn(d))
        self.global_rep_pos = nn.Parameter(torch.randn(d))

    def _reset_transformer_parameters(self) -> None:
        """As the original ``Transformer`` (T2V, encoder, decoder incl. its MLP heads):

        * ``TransformerDecoder.__init__`` sets the last ``bbox_embed`` layer to 0 (weight and
          bias), then ``Transformer._reset_parameters`` draws Xavier-uniform for every matrix,
          so that layer ends with a Xavier weight and a zero bias;
        * ``nn.MultiheadAttention`` / DAB's attention zero their projection biases; the T2V
          ``q`` / ``kv`` weights use the Xavier bound of the packed (3D, D) ``in_proj_weight``;
        * everything else keeps PyTorch's default (LayerNorm, PReLU 0.25, other biases).

        The mask generators and the Table 3 controls keep the core's initialisation."""
        skip = {id(p) for module in mask_modules(self) for p in module.parameters()}
        last = self.decoder.bbox_embed.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        for part in (self.t2v_layers, self.encoder, self.decoder):
            for p in part.parameters():
                if p.dim() > 1 and id(p) not in skip:
                    nn.init.xavier_uniform_(p)
            for m in part.modules():
                if isinstance(m, StampAttention) and m.cross:
                    # the original's packed in_proj_weight (3D x D): Xavier over that shape
                    bound = math.sqrt(6.0 / (m.dim + 3 * m.dim))
                    nn.init.uniform_(m.q.weight, -bound, bound)
                    nn.init.uniform_(m.kv.weight, -bound, bound)
                if isinstance(m, (StampAttention, ProjectedAttention)):
                    for sub in m.modules():
                        if isinstance(sub, nn.Linear) and sub.bias is not None:
                            nn.init.zeros_(sub.bias)

    def encode(
        self,
        vid: Tensor,
        vid_pad: Tensor,
        pos_vid: Tensor,
        txt: Tensor,
        txt_pad: Tensor,
        txt_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """T2V cross-attention then self-attention over [global, video] -> (video, global)."""
        text_limit, video_limit = self.length_limits
        if text_limit is not None and txt.shape[1] > text_limit:
            raise ValueError(
                f"the batch has {txt.shape[1]} query tokens > model.max_q_l={self.max_q_l} "
                "(mask.generator=lowrank accepts any length)"
            )
        if video_limit is not None and vid.shape[1] > video_limit:
            raise ValueError(
                f"the batch has {vid.shape[1]} clips > model.max_v_l={self.max_v_l} "
                "(mask.generator=lowrank accepts any length)"
            )
        gen = self.t2v_mask_generator
        shared = None if gen is None else partial(gen, n_keys=txt.shape[1], context=txt)
        bias = None
        if self.official_padding_bug and vid.shape[0] > 1:
            bias = official_t2v_padding_bias(vid_pad, txt_pad, self.num_heads, vid.dtype)
        x, mask = vid, None
        for i, layer in enumerate(self.t2v_layers):
            mask = self.t2v_plan.layer_mask(i, x, mask, shared=shared)
            x = layer(
                x,
                txt,
                pos=pos_vid,
                context_pos=txt_pos,
                context_padding_mask=txt_pad,
                mask=mask,
                attn_bias=bias,
            )
        B = x.shape[0]
        src = torch.cat([self.global_rep_token.expand(B, 1, -1).to(x.dtype), x], dim=1)
        pos = torch.cat([self.global_rep_pos.expand(B, 1, -1).to(x.dtype), pos_vid], dim=1)
        pad = torch.cat([vid_pad.new_zeros(B, 1), vid_pad], dim=1)
        memory = self.encoder(src, pos=pos, key_padding_mask=pad)
        return memory[:, 1:], memory[:, 0]

    @property
    def length_limits(self) -> tuple[int | None, int | None]:
        """(text, video) lengths the model cannot exceed: ``max_q_l`` / ``max_v_l`` where a
        part is tied to them (an MLP generator's key columns, SwinBERT's sparse mask, the text
        position table), None where nothing is (``mask.generator=lowrank``, full attention:
        the video positions are sine features of any length)."""
        t2v = [self.t2v_mask_generator, *(layer.mask_generator for layer in self.t2v_layers)]
        text_fixed = self.use_txt_pos or any(g is not None and g.n_max is not None for g in t2v)
        video_fixed = any(
            isinstance(m, SparseMask) or (isinstance(m, MaskGenerator) and m.n_max is not None)
            for m in self.encoder.modules()
        )
        return (self.max_q_l if text_fixed else None, self.max_v_l if video_fixed else None)

    def saliency(self, vid_mem: Tensor, global_mem: Tensor) -> Tensor:
        proj = self.saliency_proj1(vid_mem) * self.saliency_proj2(global_mem).unsqueeze(1)
        return proj.sum(-1) / math.sqrt(self.hidden_dim)

    def forward(
        self,
        src_txt: Tensor,
        src_txt_mask: Tensor,
        src_vid: Tensor,
        src_vid_mask: Tensor,
        with_negative: bool = True,
    ) -> dict[str, Tensor | list]:
        """Masks are 1 at valid positions. ``with_negative`` adds the saliency scores of the
        rolled-text pairs (needed by the loss only)."""
        vid = self.input_vid_proj(src_vid)
        txt = self.input_txt_proj(src_txt)
        vid_pad, txt_pad = ~src_vid_mask.bool(), ~src_txt_mask.bool()
        pos_vid = video_position_embedding(src_vid_mask, self.hidden_dim, vid.dtype)
        # (use_txt_pos: the original computes the text positions from the positive text once
        # and reuses them for the negative pass, ``pos_neg = pos.clone()``)
        txt_pos = self.txt_position_embed(txt) if self.use_txt_pos else None
        vid_mem, global_mem = self.encode(vid, vid_pad, pos_vid, txt, txt_pad, txt_pos)

        hs, refs = self.decoder(vid_mem, vid_pad, pos_vid, self.query_embed.weight)
        logits = self.class_embed(hs)
        spans = (self.span_embed(hs) + inverse_sigmoid(refs)).sigmoid()
        out: dict[str, Tensor | list] = {
            "pred_logits": logits[-1],
            "pred_spans": spans[-1],
            "saliency_scores": self.saliency(vid_mem, global_mem),
            "video_mask": src_vid_mask,
        }
        if self.decoder_aux_outputs:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_spans": b}
                for a, b in zip(logits[:-1], spans[:-1], strict=True)
            ]
        if with_negative:
            txt_neg = torch.roll(txt, shifts=-1, dims=0)
            pad_neg = torch.roll(txt_pad, shifts=-1, dims=0)
            vid_neg, global_neg = self.encode(vid, vid_pad, pos_vid, txt_neg, pad_neg, txt_pos)
            out["saliency_scores_neg"] = self.saliency(vid_neg, global_neg)
        return out
