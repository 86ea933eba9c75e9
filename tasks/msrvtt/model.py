"""SwinBERT (Lin et al., 2022) with the video->video attention block under any ``mask=`` mode.

    frames (B, F, 3, R, R) -> Video Swin -> (B, V, C) -> Linear(C, 512) -> Linear(512, D) -> video
    [caption tokens (T) ; video tokens (V)] -> BERT encoder (StampEncoderLayer x L) -> LM head

Attention layout over the N = T + V tokens (SwinBERT's ``learn_vid_att`` mask, 1 = may attend):

    caption -> caption   causal (over the valid caption tokens)
    caption -> video     full
    video   -> video     the learned block (below)
    video   -> caption   none

It enters the attention as BERT's additive bias ``-1e4 * (1 - layout)`` *after* the fusion of M,
following ``stamp.attention``'s order of operations. The video->video block is

* ``mask=none``: full attention;
* ``mask=sparse``: SwinBERT's learnable sparse mask ``stamp.SparseMask`` (V x V), added to the
  bias of that block, with its sparsity loss (``mask.sparse_loss_weight``, 0.5 in SwinBERT);
* ``mask=global|multilayer``: a STAMP generator (``mask.depth`` linear layers, 16 in the paper)
  maps the video tokens to M (B, V, V); outside the block M is the identity of the fusion
  (1 for ``mul``, 0 for ``add``) so every other logit is untouched. ``global`` computes M once
  from the encoder input; ``multilayer`` has one generator per layer on that layer's input.
  ``stamp_scope=full`` is an extension: M over all N x N logits from all tokens (the reviews
  list N = 834 for MSR-VTT); the paper's "same dimensionality as the original SwinBERT" reads
  as the V x V block, the default.

``mask.generator=lowrank`` reads query and key tokens and has no N: the model then accepts more
video tokens (frames) than ``num_frames`` gives and captions longer than ``max_text_len`` (up to
BERT's position table), and scope ``full`` needs no padding to ``max_text_len``.
``mask.per_head`` gives one M per head (B, H, N, N) in either scope.

Training is SwinBERT's masked-token captioning: logits at the masked caption positions only.
Decoding appends a [MASK] after the caption so far and reads the prediction at that position
(greedy, or beam search with ``num_beams > 1``), stopping at [SEP].
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp import AttentionConfig, Fusion, MaskConfig, MaskGenerator, MaskPlan, StampEncoderLayer
from stamp.plan import LAYER_GENERATOR, SHARED_GENERATOR, SPARSE_MASK
from tasks.msrvtt.data import load_tokenizer

log = logging.getLogger(__name__)

NEG = -1e4  # BERT's extended-attention-mask value (SwinBERT keeps it)
# what a mask mode may place here (the Table 3 controls belong to task=mad_ad)
SWINBERT_PARTS = (SHARED_GENERATOR, LAYER_GENERATOR, SPARSE_MASK)
SWIN3D_ARCHS = ("swin3d_t", "swin3d_s", "swin3d_b")
TORCHVISION_SWIN3D_DROP_PATH = 0.1  # the stochastic depth torchvision builds swin3d_* with


# --------------------------------------------------------------------------------------------
# attention layout
# --------------------------------------------------------------------------------------------


def caption_video_layout(text_len: Tensor, max_text: int, n_video: int) -> Tensor:
    """(B, N, N) bool, True where a query may attend to a key (SwinBERT's ``learn_vid_att``).

    Rows/columns 0..max_text-1 are caption slots (the first ``text_len`` valid), then the video
    tokens. Padded caption rows attend to nothing (they get a uniform distribution under the
    -1e4 bias, as in BERT, and are never read).
    """
    idx = torch.arange(max_text, device=text_len.device)
    valid = idx[None, :] < text_len[:, None]  # (B, T)
    causal = idx[:, None] >= idx[None, :]  # (T, T)
    n = max_text + n_video
    allow = torch.zeros(text_len.shape[0], n, n, dtype=torch.bool, device=text_len.device)
    allow[:, :max_text, :max_text] = causal & valid[:, :, None] & valid[:, None, :]
    allow[:, :max_text, max_text:] = valid[:, :, None]
    allow[:, max_text:, max_text:] = True
    return allow


def layout_bias(allow: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, N, N) layout -> (B, 1, N, N) additive bias: 0 where allowed, -1e4 elsewhere."""
    return (NEG * (~allow).to(dtype)).unsqueeze(1)


def embed_block_mask(block: Tensor, offset: int, fusion: Fusion | str) -> Tensor:
    """Place M (B, V, V) at [offset:, offset:] of an (B, N, N) mask filled with the identity of
    the fusion (1 for ``mul``, 0 for ``add``), so logits outside the block are unchanged."""
    fill = 1.0 if Fusion(fusion) is Fusion.mul else 0.0
    return F.pad(block, (offset, 0, offset, 0), value=fill)


# --------------------------------------------------------------------------------------------
# Video Swin backbone
# --------------------------------------------------------------------------------------------


VIDSWIN_ANCHOR = "patch_embed.proj.weight"  # locates the backbone prefix of a checkpoint
_VIDSWIN_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_VIDSWIN_MERGE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")
_VIDSWIN_MLP = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}  # Mlp(fc1, fc2) -> MLP Sequential


def backbone_prefix(state: dict[str, Tensor]) -> str:
    """The key prefix in front of a Video Swin backbone in a checkpoint: ``backbone.`` in the
    Video-Swin-Transformer release (an mmaction ``Recognizer3D``), ``swin.backbone.`` in a
    SwinBERT checkpoint, ``""`` in a bare backbone state dict."""
    for key in state:
        if key.endswith(VIDSWIN_ANCHOR):
            return key[: -len(VIDSWIN_ANCHOR)]
    raise ValueError(f"no Video Swin backbone in the checkpoint (no key ends in {VIDSWIN_ANCHOR})")


def is_vidswin_layout(state: dict[str, Tensor]) -> bool:
    """True for the original Video Swin key layout (``layers.<stage>.blocks.<block>``),
    False for torchvision's (``features.<index>``)."""
    prefix = backbone_prefix(state)
    return any(k.startswith(prefix + "layers.") for k in state)


def vidswin_to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original Video Swin state dict (``SwinTransformer3D`` of
    SwinTransformer/Video-Swin-Transformer, the backbone SwinBERT loads from
    ``swin_base_patch244_window877_kinetics600_22k.pth``) to torchvision's ``SwinTransformer3d``.

    The two compute the same function (same window partition, shift, relative-position index,
    patch-merging order; tested against a re-implementation of the original in
    ``tests/msrvtt/vidswin_reference.py``), so the mapping is names only:

        layers.i.blocks.j.<rest>   -> features.(2i).j.<rest>   (mlp.fc1 / mlp.fc2 -> mlp.0 / mlp.3)
        layers.i.downsample.<rest> -> features.(2i+1).<rest>  (PatchMerging after stage i)
        patch_embed.*, norm.*      -> unchanged

    Keys outside the backbone (``cls_head.*``, SwinBERT's BERT) are dropped; the prefix in front of
    the backbone is found by ``backbone_prefix``.
    """
    prefix = backbone_prefix(state)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if (m := _VIDSWIN_BLOCK.fullmatch(name)) is not None:
            stage, block, rest = int(m[1]), int(m[2]), m[3]
            for old, new in _VIDSWIN_MLP.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
            out[f"features.{2 * stage}.{block}.{rest}"] = value
        elif (m := _VIDSWIN_MERGE.fullmatch(name)) is not None:
            out[f"features.{2 * int(m[1]) + 1}.{m[2]}"] = value
        elif name.startswith(("patch_embed.", "norm.")):
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in a Video Swin checkpoint: {unknown[:5]}")
    return out


class VideoSwinBackbone(nn.Module):
    """Video Swin (``swin3d_t|s|b``, or a tiny configurable one) as a token encoder, built with
    torchvision's ``SwinTransformer3d``.

    Returns the last stage's normalised features as tokens (B, T' * H' * W', C), T' = F / 2 and
    H' = W' = R / 32 for the standard patch (2, 4, 4): 32 x 224 x 224 -> 16 x 7 x 7 = 784 tokens.
    ``weights`` is a local checkpoint in either layout (detected from the keys):

    * the original Video Swin release, as SwinBERT uses it:
      ``swin_base_patch244_window877_kinetics600_22k.pth`` (Kinetics-600, ImageNet-22K init;
      ``{"state_dict": {"backbone.*", "cls_head.*"}}``), renamed by ``vidswin_to_torchvision``;
    * a torchvision state dict (the fallback: ``swin3d_b`` ``KINETICS400_IMAGENET22K_V1`` saved
      with ``torch.save(model.state_dict())``).

    The classification head is dropped either way.
    """

    def __init__(
        self,
        arch: str = "swin3d_b",
        weights: str | None = None,
        *,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: tuple[int, int, int] = (8, 7, 7),
        patch_size: tuple[int, int, int] = (2, 4, 4),
        stochastic_depth_prob: float = 0.1,
    ) -> None:
        super().__init__()
        from torchvision.models import video as tv_video
        from torchvision.models.video.swin_transformer import SwinTransformer3d
        from torchvision.ops import StochasticDepth

        if arch in SWIN3D_ARCHS:
            swin = getattr(tv_video, arch)(weights=None)
            # torchvision fixes stochastic_depth_prob=0.1 for these; rescale the per-block rates
            for module in swin.modules():
                if isinstance(module, StochasticDepth):
                    module.p *= stochastic_depth_prob / TORCHVISION_SWIN3D_DROP_PATH
        elif arch == "custom":
            swin = SwinTransformer3d(
                patch_size=list(patch_size),
                embed_dim=embed_dim,
                depths=list(depths),
                num_heads=list(num_heads),
                window_size=list(window_size),
                stochastic_depth_prob=stochastic_depth_prob,
            )
        else:
            raise ValueError(
                f"model.backbone.arch={arch!r}; choose one of {SWIN3D_ARCHS} or custom"
            )
        swin.head = nn.Identity()  # unused: no dangling parameters under DDP
        self.swin = swin
        self.patch_size = tuple(swin.patch_embed.tuple_patch_size)
        self.num_stages = len(swin.features) // 2 + 1  # stages interleaved with PatchMerging
        self.out_dim = swin.num_features
        self.weights_layout: str | None = None  # "vidswin" | "torchvision" once loaded
        if weights:
            self.load_weights(weights)
        else:
            log.warning("Video Swin backbone %s: no weights given, random initialisation", arch)

    def load_weights(self, path: str | Path) -> None:
        """Load a Video Swin checkpoint in the original (VidSwin) or torchvision layout."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Video Swin weights not found: {path} (config key model.backbone.weights)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        try:
            vidswin = is_vidswin_layout(state)
        except ValueError as error:
            raise ValueError(f"{path}: {error} (config key model.backbone.weights)") from None
        if vidswin:
            state = vidswin_to_torchvision(state)
            layout = "vidswin"
        else:
            prefix = backbone_prefix(state)
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            layout = "torchvision"
        own = self.swin.state_dict()
        index_keys = [k for k in state if k.endswith("relative_position_index")]
        for key in index_keys:  # a buffer both layouts derive from the window size
            if key in own and not torch.equal(state[key].to(own[key].dtype), own[key]):
                raise ValueError(
                    f"{path}: {key} differs from this model's (another window size than "
                    "model.backbone.window_size / arch?)"
                )
        try:
            missing, unexpected = self.swin.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(
                f"{path} ({layout} layout) does not fit model.backbone.arch: {error}"
            ) from None
        missing = [k for k in missing if not k.endswith("relative_position_index")]
        if missing or unexpected:
            raise ValueError(
                f"{path} ({layout} layout) is not a Video Swin state dict for this arch: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.weights_layout = layout
        log.info("Video Swin backbone: loaded %s (%s layout)", path, layout)

    def num_tokens(self, num_frames: int, img_res: int) -> int:
        """Tokens for ``num_frames`` frames at ``img_res`` (PatchMerging pads odd sizes)."""
        t = math.ceil(num_frames / self.patch_size[0])
        h = math.ceil(img_res / self.patch_size[1])
        w = math.ceil(img_res / self.patch_size[2])
        for _ in range(self.num_stages - 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return t * h * w

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W) -> (B, 3, F, H, W)
        x = self.swin.patch_embed(x)
        x = self.swin.pos_drop(x)
        x = self.swin.norm(self.swin.features(x))  # (B, T', H', W', C)
        return x.flatten(1, 3)


# --------------------------------------------------------------------------------------------
# BERT
# --------------------------------------------------------------------------------------------


def build_bert(path: str | None, overrides: dict | None, vocab_size: int):
    """A ``BertForMaskedLM`` from a local HF folder (weights) or from a config (random init).

    Returns the HF model; its embeddings and LM head are used directly, its encoder layers are
    copied into ``StampEncoderLayer``s by ``load_bert_layer``.
    """
    from transformers import BertConfig, BertForMaskedLM

    overrides = dict(overrides or {})
    if path:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"BERT checkpoint: no config.json in {p} (config key model.bert.path); expected a "
                "local HF folder such as bert-base-uncased (config.json + model weights)"
            )
        config = BertConfig.from_pretrained(str(p), local_files_only=True, **overrides)
        hf = BertForMaskedLM.from_pretrained(str(p), config=config, local_files_only=True)
    else:
        overrides.setdefault("vocab_size", vocab_size)
        hf = BertForMaskedLM(BertConfig(**overrides))
    if hf.config.vocab_size < vocab_size:
        raise ValueError(
            f"BERT vocab_size={hf.config.vocab_size} < tokenizer size {vocab_size}; "
            "model.bert and the tokenizer do not belong together"
        )
    return hf


@torch.no_grad()
def load_bert_layer(layer: StampEncoderLayer, hf_layer: nn.Module) -> None:
    """Copy one HF ``BertLayer`` into a post-norm ``StampEncoderLayer`` (q,k,v -> fused qkv)."""
    att = hf_layer.attention
    q, k, v = att.self.query, att.self.key, att.self.value
    layer.attn.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
    layer.attn.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
    pairs = [
        (layer.attn.proj, att.output.dense),
        (layer.attn_block.norm, att.output.LayerNorm),
        (layer.ffn.fc1, hf_layer.intermediate.dense),
        (layer.ffn.fc2, hf_layer.output.dense),
        (layer.ffn_block.norm, hf_layer.output.LayerNorm),
    ]
    for ours, theirs in pairs:
        ours.load_state_dict(theirs.state_dict())


# --------------------------------------------------------------------------------------------
# SwinBERT
# --------------------------------------------------------------------------------------------


class SwinBERT(nn.Module):
    """Video Swin + BERT multimodal transformer for masked-token video captioning.

    ``backbone``: kwargs of ``VideoSwinBackbone``. ``bert``: ``{path, config}`` with ``path`` a
    local HF BERT folder (or null) and ``config`` BertConfig overrides (the tiny test model).
    """

    def __init__(
        self,
        tokenizer_path: str,
        backbone: dict | None = None,
        bert: dict | None = None,
        *,
        num_frames: int = 32,
        img_res: int = 224,
        img_feature_dim: int = 512,
        max_text_len: int = 50,
        max_gen_len: int = 20,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        stamp_scope: str = "video",
        freeze_backbone: bool = False,
        mask: MaskConfig | dict | None = None,
        attention: AttentionConfig | dict | None = None,
    ) -> None:
        super().__init__()
        plan = MaskPlan(mask, attention, places=SWINBERT_PARTS, where="task=msrvtt")
        self.mask_cfg = plan.mask
        if stamp_scope not in ("video", "full"):
            raise ValueError(f"model.stamp_scope={stamp_scope!r}; choose video or full")
        self.tokenizer = load_tokenizer(tokenizer_path)
        tok = self.tokenizer
        self.cls_id, self.sep_id = tok.cls_token_id, tok.sep_token_id
        self.pad_id, self.mask_id = tok.pad_token_id, tok.mask_token_id
        self.max_text_len, self.max_gen_len = max_text_len, max_gen_len
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.stamp_scope = stamp_scope

        self.backbone = VideoSwinBackbone(**(backbone or {}))
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.n_video = self.backbone.num_tokens(num_frames, img_res)

        bert = dict(bert or {})
        hf = build_bert(bert.get("path"), bert.get("config"), len(tok))
        cfg = hf.config
        if max_text_len > cfg.max_position_embeddings:
            raise ValueError(
                f"model.max_text_len={max_text_len} > BERT max_position_embeddings="
                f"{cfg.max_position_embeddings}"
            )
        dim = self.dim = cfg.hidden_size
        self.embeddings = hf.bert.embeddings
        self.head = hf.cls.predictions
        if self.head.decoder.weight is self.embeddings.word_embeddings.weight:
            # SwinBERT trains with tie_weights=False: the LM head starts from, but is not, the
            # word embedding matrix
            self.head.decoder.weight = nn.Parameter(self.head.decoder.weight.detach().clone())
        # SwinBERT's ``fc`` (backbone width -> img_feature_dim) and BERT's ``img_embedding``
        self.video_fc = nn.Linear(self.backbone.out_dim, img_feature_dim)
        self.video_embedding = nn.Linear(img_feature_dim, dim)
        self.video_dropout = nn.Dropout(cfg.hidden_dropout_prob)

        if cfg.hidden_act != "gelu":
            raise ValueError(f"BERT hidden_act={cfg.hidden_act!r}; only gelu is supported")
        self.layers = nn.ModuleList()
        for hf_layer in hf.bert.encoder.layer:
            layer = StampEncoderLayer(
                dim,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                plan=plan.attention_only(),  # the generators live here, over the scope
                dropout=cfg.hidden_dropout_prob,
                attn_dropout=cfg.attention_probs_dropout_prob,
                ffn_dropout=0.0,  # BERT has no dropout inside the FFN
                activation="gelu",
                norm_first=False,
                norm_eps=cfg.layer_norm_eps,
            )
            load_bert_layer(layer, hf_layer)
            self.layers.append(layer)

        n_scope = self.n_video if stamp_scope == "video" else max_text_len + self.n_video
        self.plan = plan = plan.resized(dim, cfg.num_attention_heads, n_scope)
        own = [plan.layer_generator() for _ in self.layers]
        self.mask_generators = nn.ModuleList(g for g in own if g is not None)
        self.mask_generator = plan.shared_generator()
        self.sparse_mask = plan.sparse_mask(self.n_video)
        # an MLP generator's key columns are positions: scope=full pads captions to
        # max_text_len, and it (or the sparse mask) fixes the video token count
        self.positional = any(
            g.n_max is not None
            for g in [self.mask_generator, *self.mask_generators]
            if g is not None
        )
        self.fixed_video = self.positional or self.sparse_mask is not None

    # ---------------------------------------------------------------- encoding

    def encode_video(self, frames: Tensor) -> Tensor:
        """(B, F, 3, R, R) -> video token embeddings (B, V, D)."""
        tokens = self.backbone(frames)
        if self.fixed_video and tokens.shape[1] != self.n_video:
            raise ValueError(
                f"the backbone produced {tokens.shape[1]} video tokens, the model was built for "
                f"{self.n_video} (model.num_frames / model.img_res must match the data)"
            )
        return self.video_dropout(self.video_embedding(self.video_fc(tokens)))

    def _soft_mask(self, generator: MaskGenerator, x: Tensor, n_text: int) -> Tensor:
        """M over the scope: (B, N, N), or (B, H, N, N) with ``mask.per_head``. ``video``: the
        generator sees the video tokens only (a low-rank generator reads them as queries and
        keys), its M is placed in the video block; ``full``: every token."""
        if self.stamp_scope == "video":
            return embed_block_mask(generator(x[:, n_text:]), n_text, self.mask_cfg.fusion)
        return generator(x)

    def attention_bias(
        self, text_len: Tensor, n_text: int, dtype: torch.dtype, n_video: int | None = None
    ) -> Tensor:
        """Structural layout bias, plus the sparse mask's bias on the video block."""
        n_video = self.n_video if n_video is None else n_video
        bias = layout_bias(caption_video_layout(text_len, n_text, n_video), dtype)
        if self.sparse_mask is not None:
            bias[..., n_text:, n_text:] += self.sparse_mask(n_video).to(dtype)
        return bias

    def encode(self, video: Tensor, input_ids: Tensor, text_len: Tensor) -> Tensor:
        """BERT over [caption ; video]; returns the hidden states (B, T + V, D)."""
        n_text = input_ids.shape[1]
        if self.stamp_scope == "full" and self.positional and n_text != self.max_text_len:
            raise ValueError(
                f"stamp_scope=full needs captions padded to max_text_len={self.max_text_len}, "
                f"got {n_text}"
            )
        x = torch.cat([self.embeddings(input_ids=input_ids), video], dim=1)
        bias = self.attention_bias(text_len, n_text, x.dtype, video.shape[1])

        def scoped(generator: MaskGenerator | None) -> Callable[[Tensor], Tensor] | None:
            return None if generator is None else partial(self._soft_mask, generator, n_text=n_text)

        mask, shared = None, scoped(self.mask_generator)
        for i, layer in enumerate(self.layers):
            own = scoped(self.mask_generators[i]) if self.mask_generators else None
            mask = self.plan.layer_mask(i, x, mask, shared=shared, own=own)
            x = layer(x, mask=mask, attn_bias=bias)
        return x

    def forward(
        self, frames: Tensor, input_ids: Tensor, text_len: Tensor, masked_pos: Tensor
    ) -> Tensor:
        """Masked-token captioning: logits (num_masked_in_batch, vocab), in row-major order of
        ``masked_pos`` (the order of the non-padding entries of the data's ``masked_ids``)."""
        hidden = self.encode(self.encode_video(frames), input_ids, text_len)
        return self.head(hidden[:, : input_ids.shape[1]][masked_pos])

    def aux_loss(self) -> Tensor | None:
        """SwinBERT's weighted sparsity loss for ``mask=sparse``; None otherwise."""
        return self.plan.aux_loss(self.sparse_mask)

    # ---------------------------------------------------------------- decoding

    def _next_token_logprobs(self, video: Tensor, ids: Tensor) -> Tensor:
        """Append [MASK] to the captions ``ids`` (B, t) and return log p(next token) (B, vocab)."""
        B, t = ids.shape
        inp = torch.cat([ids, ids.new_full((B, 1), self.mask_id)], dim=1)
        text_len = torch.full((B,), t + 1, dtype=torch.long, device=ids.device)
        if self.stamp_scope == "full" and self.positional:  # the MLP's column positions
            inp = F.pad(inp, (0, self.max_text_len - t - 1), value=self.pad_id)
        hidden = self.encode(video, inp, text_len)
        return self.head(hidden[:, t]).float().log_softmax(-1)

    @torch.no_grad()
    def generate(self, frames: Tensor, num_beams: int | None = None) -> list[list[int]]:
        """Caption token ids per video (without [CLS]/[SEP]); greedy when ``num_beams`` is 1."""
        num_beams = self.num_beams if num_beams is None else num_beams
        max_len = min(self.max_gen_len, self.max_text_len)
        video = self.encode_video(frames)
        if num_beams <= 1:
            return self._greedy(video, max_len)
        return self._beam_search(video, max_len, num_beams)

    def _greedy(self, video: Tensor, max_len: int) -> list[list[int]]:
        B = video.shape[0]
        ids = video.new_full((B, 1), self.cls_id, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool, device=video.device)
        while ids.shape[1] < max_len and not done.all():
            nxt = self._next_token_logprobs(video, ids).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == self.sep_id
        return [self._strip(row) for row in ids.tolist()]

    def _beam_search(self, video: Tensor, max_len: int, k: int) -> list[list[int]]:
        """Beam search; finished hypotheses are ranked by log p / length ** length_penalty."""
        B = video.shape[0]
        video = video.repeat_interleave(k, dim=0)
        ids = video.new_full((B * k, 1), self.cls_id, dtype=torch.long)
        scores = torch.full((B, k), float("-inf"), device=video.device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        while ids.shape[1] < max_len:
            logp = self._next_token_logprobs(video, ids)
            vocab = logp.shape[-1]
            cand = (scores.view(-1, 1) + logp).view(B, k * vocab)
            top_scores, top_idx = cand.topk(2 * k, dim=-1)
            new_ids, new_scores = [], []
            for b in range(B):
                kept = 0
                for s, i in zip(top_scores[b].tolist(), top_idx[b].tolist(), strict=True):
                    beam, token = divmod(i, vocab)
                    prefix = ids[b * k + beam]
                    if token == self.sep_id:
                        if len(finished[b]) < k and s > float("-inf"):
                            length = prefix.shape[0]  # generated tokens incl. [SEP]
                            finished[b].append((s / length**self.length_penalty, prefix.tolist()))
                        continue
                    new_ids.append(torch.cat([prefix, prefix.new_tensor([token])]))
                    new_scores.append(s)
                    kept += 1
                    if kept == k:
                        break
                while kept < k:  # unlikely: fill with dead beams
                    new_ids.append(torch.cat([ids[b * k], ids.new_tensor([self.pad_id])]))
                    new_scores.append(float("-inf"))
                    kept += 1
            ids = torch.stack(new_ids)
            scores = torch.tensor(new_scores, device=video.device).view(B, k)
            if all(len(f) >= k for f in finished):
                break
        results = []
        for b in range(B):
            hyps = list(finished[b])
            for j in range(k):
                if scores[b, j] > float("-inf"):
                    length = ids.shape[1] - 1
                    hyps.append(
                        (scores[b, j].item() / length**self.length_penalty, ids[b * k + j].tolist())
                    )
            best = max(hyps, key=lambda h: h[0])[1] if hyps else [self.cls_id]
            results.append(self._strip(best))
        return results

    def _strip(self, ids: list[int]) -> list[int]:
        out = []
        for i in ids[1:]:  # drop [CLS]
            if i in (self.sep_id, self.pad_id):
                break
            out.append(i)
        return out

    def decode_text(self, ids: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
