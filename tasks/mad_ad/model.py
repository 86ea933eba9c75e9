"""Audiovisual STAMP encoder + LLaMA-Adapter V2 (multimodal) on a frozen Hugging Face LLaMA.

The paper's appendix (A.1.3) has two audiovisual parts, built here as two modules:

* ``AudioVisualEncoder`` (the paper's "Audiovisual Model"): 25 visual (CLIP, 5 fps) + 25 audio
  (OpenL3, 5 Hz) features, each projected (Linear + LayerNorm) to width 768 with a learned
  position and modality embedding, then a 16-layer transformer with multi-layer STAMP of depth
  16 over exactly these N = 50 tokens (every ``mask=`` mode applies here and only here).
* ``AVQueryAdapter`` (the "Adapter Module", LLaMA-Adapter V2's visual side, ``clip_proj`` ..
  ``visual_proj_norm`` of ``llama_adapter_v2_multimodal7b/llama/llama_adapter.py``): the 50 AV
  outputs projected to width 512 (Linear + LayerNorm), 16 learned query tokens in front, 8
  pre-norm blocks with 16 heads at width 512 (timm ``Block``: qkv bias, MLP ratio 4, GELU), the
  16 query outputs projected to the LLM width 4096 (Linear + LayerNorm).

On the LLM side (V2's ``llama.py``):

* adapter prompts in the last ``adapter_layers`` = 31 layers: per layer 16 learned prompt tokens
  plus the 16 AV tokens, projected by the layer's own frozen k / v weights; the rotary-embedded
  queries attend to them in a separate softmax whose output is scaled by a zero-initialised
  per-head ``tanh`` gate and added to the attention output *before* the output projection;
* bias tuning: zero-initialised biases on q / o and the three MLP projections (V2's ``w_bias``:
  ``wq``, ``wo``, ``w1``, ``w2``, ``w3``; k / v get none), optional one-initialised scales;
* LoRA of rank 16 (``peft``; V2's ``w_lora``: q, k, v, o and the MLP, B zero-initialised,
  scaling 1) in every layer.

At construction every addition is neutral (gates 0, biases 0, LoRA B 0): the model computes
exactly what the frozen LLM computes. Parameter groups (``av``, ``adapter``, ``gate``, ``bias``,
``norm``, ``lora``) are switched on per training stage by the LightningModule; the LLM's own
weights are never trained. Choices where the paper and V2's code differ are options, listed in
docs/mad_ad.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, StampEncoder
from tasks.mad_ad.data import check_paths, encode_prompt, load_tokenizer

log = logging.getLogger(__name__)

PARAMETER_GROUPS = ("av", "adapter", "gate", "bias", "norm", "lora")
# LLaMA-Adapter V2 (llama.py): biases on wq, wo, w1, w2, w3 (k / v none); LoRA on all seven
V2_BIAS_TARGETS = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
V2_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPARSE_NEG = -1e4  # a removed pair's additive bias (finite: padded rows stay NaN-free)

# LLaMA-7B's sizes (HF conversion of the original checkpoint): for parameter totals on ``meta``
LLAMA_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def sparse_attention_bias(n: int, sparsity: float, seed: int = 0) -> Tensor | None:
    """Fig. 1(c)'s knob: a fixed random pattern removing ``sparsity`` of the off-diagonal
    (query, key) pairs, as an additive bias (0 kept, -1e4 removed; the diagonal is always kept)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"model.encoder_sparsity must be in [0, 1), got {sparsity}")
    if sparsity == 0.0:
        return None
    g = torch.Generator().manual_seed(seed)
    off = ~torch.eye(n, dtype=torch.bool)
    scores = torch.rand(n, n, generator=g).masked_fill(~off, 2.0)
    k = round(sparsity * n * (n - 1))
    removed = torch.zeros(n * n, dtype=torch.bool)
    removed[scores.flatten().argsort()[:k]] = True
    return torch.where(removed.view(n, n), SPARSE_NEG, 0.0)


class AudioVisualEncoder(nn.Module):
    """The paper's audiovisual model: 25 visual + 25 audio features -> (B, 50, dim) with STAMP.

    STAMP (and every other ``mask=`` mode) acts on exactly the 2S = 50 audiovisual tokens.
    ``extra_layers`` sets the number of transformer layers of the ``mask=extra_layers`` control
    (None: matched to the multi-layer STAMP's parameters); ``encoder_sparsity`` removes a fixed
    random fraction of the attention pairs in every layer (Fig. 1(c)).

    The learned ``position`` table (and the Fig. 1(c) pattern) fix the 2S tokens, whatever the
    generator: ``mask.generator=lowrank`` makes the STAMP encoder itself length-agnostic (its
    parameters do not depend on S), ``mask.per_head`` gives one M per head.
    """

    def __init__(
        self,
        *,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        visual_dim: int = 512,
        audio_dim: int = 512,
        tokens_per_modality: int = 25,
        dim: int = 768,
        num_layers: int = 16,
        num_heads: int = 12,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        extra_layers: int | None = None,
        encoder_sparsity: float = 0.0,
    ) -> None:
        super().__init__()
        self.tokens, self.dim = tokens_per_modality, dim
        self.visual_proj = nn.Sequential(nn.Linear(visual_dim, dim), nn.LayerNorm(dim))
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, dim), nn.LayerNorm(dim))
        self.position = nn.Parameter(torch.zeros(tokens_per_modality, dim))
        self.modality = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.encoder = StampEncoder(
            num_layers,
            dim,
            num_heads,
            ffn_dim or 4 * dim,
            n_max=2 * tokens_per_modality,
            mask=mask,
            attention=attention,
            dropout=dropout,
            activation="gelu",
            norm_first=True,
            norm_eps=1e-6,
            final_norm=True,
            num_extra_layers=extra_layers,  # the extra_layers control's count (None: matched)
        )
        bias = sparse_attention_bias(2 * tokens_per_modality, encoder_sparsity)
        self.register_buffer("sparse_bias", bias, persistent=False)

    def modality_boundaries(self) -> list[int]:
        """Token indices where the visual and the audio tokens start (for mask plots)."""
        return [0, self.tokens]

    def forward(self, visual: Tensor, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if visual.shape[1] != self.tokens or audio.shape[1] != self.tokens:
            raise ValueError(
                f"expected {self.tokens} visual and audio tokens, got {visual.shape[1]} and "
                f"{audio.shape[1]} (data.tokens_per_modality vs model.tokens_per_modality)"
            )
        v = self.visual_proj(visual) + self.position + self.modality[0]
        a = self.audio_proj(audio) + self.position + self.modality[1]
        x = torch.cat([v, a], dim=1)
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        bias = None if self.sparse_bias is None else self.sparse_bias.to(x.dtype)
        return self.encoder(x, key_padding_mask=padding_mask, attn_bias=bias)


class AVQueryAdapter(nn.Module):
    """LLaMA-Adapter V2's visual side on the AV tokens: (B, 50, in_dim) -> (B, Q, llm_width).

    ``in_proj`` (V2 ``clip_proj`` + norm) to ``dim``; ``num_queries`` learned queries
    (``visual_query``, N(0, 1) like ``nn.Embedding``) in front; ``depth`` pre-norm blocks (timm
    ``Block``: qkv bias, MLP ratio 4, GELU, LayerNorm eps 1e-5, no final norm); the query outputs
    projected by ``out_proj`` (``visual_proj`` + norm). Full attention through ``attention``,
    a kernel held fixed whatever STAMP's backend is.
    """

    def __init__(
        self,
        in_dim: int,
        llm_width: int,
        *,
        num_tokens: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        num_queries: int = 16,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if num_queries < 1 or depth < 1:
            raise ValueError("model.num_queries and model.adapter_depth must be >= 1")
        self.num_queries = num_queries
        self.in_proj = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.queries = nn.Parameter(torch.randn(num_queries, dim))
        self.blocks = StampEncoder(
            depth,
            dim,
            num_heads,
            4 * dim,
            n_max=num_queries + num_tokens,
            mask=MaskConfig(type="none"),
            attention=AttentionConfig(backend=attention),
            dropout=0.0,
            activation="gelu",
            norm_first=True,
            norm_eps=1e-5,
            final_norm=False,
        )
        self.out_proj = nn.Sequential(nn.Linear(dim, llm_width), nn.LayerNorm(llm_width))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.in_proj(x)
        x = torch.cat([self.queries.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if padding_mask is not None:
            padding_mask = F.pad(padding_mask, (self.num_queries, 0), value=False)
            if not padding_mask.any():
                padding_mask = None
        x = self.blocks(x, key_padding_mask=padding_mask)
        return self.out_proj(x[:, : self.num_queries])


def add_bias_scale(linear: nn.Linear, with_scale: bool) -> list[nn.Parameter]:
    """V2's bias tuning on a frozen linear: ``y = (W x [+ b0] + bias) * scale``; bias zeros, scale
    ones (identity at init). Kept in float32 and added by a forward hook, so the module stays an
    ``nn.Linear`` that ``peft`` can wrap (LoRA then adds its term after: V2's order)."""
    linear.tuned_bias = nn.Parameter(torch.zeros(linear.out_features, dtype=torch.float32))
    linear.tuned_scale = (
        nn.Parameter(torch.ones(linear.out_features, dtype=torch.float32)) if with_scale else None
    )

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        output = output + module.tuned_bias.to(output.dtype)
        if module.tuned_scale is not None:
            output = output * module.tuned_scale.to(output.dtype)
        return output

    linear.register_forward_hook(hook)
    return [p for p in (linear.tuned_bias, linear.tuned_scale) if p is not None]


def base_linear(module: nn.Module) -> nn.Module:
    """The frozen linear under a ``peft`` LoRA wrapper (the module itself if unwrapped)."""
    return getattr(module, "base_layer", module)


class AdaptedLlamaAttention(nn.Module):
    """HF Llama attention + LLaMA-Adapter V2's zero-init gated attention to an adapter prompt.

    ``out = o_proj(softmax(q K^T) V + tanh(g_h) softmax(q K_p^T / sqrt(d)) V_p)``: q is the
    layer's rotary-embedded query (with its bias and LoRA), K_p / V_p the frozen k / v weights
    applied to the prompt (no rotary, no causal mask, no LoRA: V2's ``self.wk(adapter)``), g a
    zero-initialised per-head gate. The sum enters ``o_proj`` (a pre-hook), so o's bias and LoRA
    see it as in V2. The prompt (B, P, hidden) is set by ``LlamaAdapterAV`` around each call.
    """

    def __init__(self, attn: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn = attn
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.gate = nn.Parameter(torch.zeros(1, num_heads, 1, 1))
        self.prompt: Tensor | None = None
        self._query: Tensor | None = None
        self._rotary: tuple[Tensor, Tensor] | None = None
        attn.q_proj.register_forward_hook(self._keep_query)
        attn.o_proj.register_forward_pre_hook(self._add_adapter)

    def _keep_query(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.prompt is not None:
            self._query = output

    def forward(self, *args, position_embeddings=None, **kwargs):
        self._rotary = position_embeddings
        try:
            return self.attn(*args, position_embeddings=position_embeddings, **kwargs)
        finally:
            self._query, self._rotary = None, None

    def _add_adapter(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.prompt is None or self._query is None:
            return None
        return (args[0] + self.adapter_output(self._query),) + tuple(args[1:])

    def adapter_output(self, query: Tensor) -> Tensor:
        """(B, L, heads x head_dim): the gated attention of the queries to the prompt."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        batch, length, _ = query.shape
        q = query.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        cos, sin = self._rotary
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        prompt = self.prompt.to(query.dtype)
        if prompt.shape[0] != batch:
            prompt = prompt.expand(batch, -1, -1)
        heads = (batch, prompt.shape[1], self.num_kv_heads, self.head_dim)
        k = base_linear(self.attn.k_proj)(prompt).view(heads).transpose(1, 2)
        v = base_linear(self.attn.v_proj)(prompt).view(heads).transpose(1, 2)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        probs = F.softmax(scores.float(), dim=-1).to(q.dtype)
        adapted = torch.matmul(torch.tanh(self.gate).to(q.dtype) * probs, v)
        return adapted.transpose(1, 2).reshape(batch, length, -1)


class LlamaAdapterAV(nn.Module):
    """The AD model: AV encoder -> V2 query adapter -> AV tokens + adapter prompts -> frozen LLaMA.

    ``llm_path`` is a local Hugging Face LLaMA directory (weights + tokenizer), e.g. LLaMA-7B
    converted with transformers' ``convert_llama_weights_to_hf``; nothing is downloaded.
    ``llm_config`` (a ``LlamaConfig`` mapping, e.g. ``LLAMA_7B``) builds a randomly initialised
    LLM without tokenizer instead: for parameter counts (on the ``meta`` device) and tests.
    ``mask`` / ``attention`` and every other keyword (``visual_dim``, ``tokens_per_modality``,
    ``dim``, ``num_layers``, ``num_heads``, ``extra_layers``, ...) go to ``AudioVisualEncoder``.
    """

    def __init__(
        self,
        llm_path: str | None = None,
        *,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        adapter_dim: int = 512,
        adapter_depth: int = 8,
        adapter_heads: int = 16,
        num_queries: int = 16,
        adapter_attention: str = "sdpa",
        adapter_layers: int = 31,
        bias_tuning: bool = True,
        bias_targets: Sequence[str] = V2_BIAS_TARGETS,
        scale_tuning: bool = False,
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] = V2_LORA_TARGETS,
        llm_dtype: str = "float32",
        llm_attn_implementation: str = "sdpa",
        llm_config: dict | None = None,
        initial_groups: Sequence[str] = ("av", "adapter", "gate"),
        **encoder: Any,
    ) -> None:
        super().__init__()
        if llm_dtype not in DTYPES:
            raise ValueError(f"model.llm_dtype={llm_dtype!r}; choose one of {sorted(DTYPES)}")
        from transformers import LlamaConfig, LlamaForCausalLM

        if llm_config is not None:
            config = LlamaConfig(**dict(llm_config), attn_implementation=llm_attn_implementation)
            self.llm = LlamaForCausalLM(config).to(DTYPES[llm_dtype])
            self.tokenizer, self.prompt_ids = None, None
        else:
            check_paths({"model.llm_path": llm_path}, what="LLaMA checkpoint")
            self.llm = LlamaForCausalLM.from_pretrained(
                llm_path,
                dtype=DTYPES[llm_dtype],
                attn_implementation=llm_attn_implementation,
                local_files_only=True,
            )
            self.tokenizer = load_tokenizer(llm_path)
            self.prompt_ids = encode_prompt(self.tokenizer)
        self.llm.requires_grad_(False)
        config = self.llm.config
        width, n_layers = config.hidden_size, config.num_hidden_layers
        if not 1 <= adapter_layers <= n_layers:
            raise ValueError(
                f"model.adapter_layers={adapter_layers}; the LLM has {n_layers} layers"
            )

        self.av_encoder = AudioVisualEncoder(mask=mask, attention=attention, **encoder)
        self.av_adapter = AVQueryAdapter(
            self.av_encoder.dim,
            width,
            num_tokens=2 * self.av_encoder.tokens,
            dim=adapter_dim,
            depth=adapter_depth,
            num_heads=adapter_heads,
            num_queries=num_queries,
            attention=adapter_attention,
        )
        # nn.Embedding's N(0, 1) initialisation, as LLaMA-Adapter V2's ``adapter_query``
        self.adapter_prompts = nn.Parameter(torch.randn(adapter_layers, num_queries, width))

        # 1. bias (+ scale) tuning, 2. LoRA around the biased linears, 3. the adapter prompts
        bias_params: list[nn.Parameter] = []
        if bias_tuning:
            for layer in self.llm.model.layers:
                for block in (layer.self_attn, layer.mlp):
                    for name in bias_targets:
                        if isinstance(getattr(block, name, None), nn.Linear):
                            bias_params += add_bias_scale(getattr(block, name), scale_tuning)
        if lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha or lora_rank,  # V2: scaling 1
                lora_dropout=0.0,
                target_modules=list(lora_targets),
                bias="none",
            )
            inject_adapter_in_model(lora, self.llm)
            for name, p in self.llm.named_parameters():
                if "lora_" in name:  # trained in float32 (V2 casts its trainable params to float)
                    p.data = p.data.float()
        head_dim = getattr(config, "head_dim", None) or width // config.num_attention_heads
        self.adapted: list[AdaptedLlamaAttention] = []
        for layer in self.llm.model.layers[n_layers - adapter_layers :]:
            layer.self_attn = AdaptedLlamaAttention(
                layer.self_attn, config.num_attention_heads, config.num_key_value_heads, head_dim
            )
            self.adapted.append(layer.self_attn)
        self.groups: dict[str, list[nn.Parameter]] = {
            "av": list(self.av_encoder.parameters()),
            "adapter": list(self.av_adapter.parameters()) + [self.adapter_prompts],
            "gate": [a.gate for a in self.adapted],
            "bias": bias_params,
            "norm": [p for n, p in self.llm.named_parameters() if "norm" in n],
            "lora": [p for n, p in self.llm.named_parameters() if "lora_" in n],
        }
        tunable = {id(p) for params in self.groups.values() for p in params}
        # the pretrained LLM weights: never trained, left out of checkpoints
        self.llm_frozen_names = {
            f"llm.{name}" for name, p in self.llm.named_parameters() if id(p) not in tunable
        }
        self.set_trainable(initial_groups)

    # ------------------------------------------------------------------ parameters
    def set_trainable(self, groups: Iterable[str]) -> None:
        """Train exactly the named groups; everything else (the LLM above all) is frozen."""
        groups = list(groups)
        unknown = sorted(set(groups) - set(PARAMETER_GROUPS))
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; choose from {PARAMETER_GROUPS}")
        self.requires_grad_(False)
        for name in groups:
            for p in self.groups[name]:
                p.requires_grad_(True)

    def group_parameters(self, groups: Iterable[str]) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for name in groups:
            for p in self.groups[name]:
                seen[id(p)] = p
        return list(seen.values())

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per part (the LLM's own, each group, the AV encoder's mask / control)."""
        from stamp import mask_parameter_count

        tunable = {id(p) for ps in self.groups.values() for p in ps}
        out = {"llm": sum(p.numel() for p in self.llm.parameters() if id(p) not in tunable)}
        out["norm_in_llm"] = sum(p.numel() for p in self.groups["norm"])
        out["av_encoder"] = sum(p.numel() for p in self.av_encoder.parameters())
        out["av_mask_or_control"] = mask_parameter_count(self.av_encoder)
        for name in ("adapter", "gate", "bias", "lora"):
            out[name] = sum(p.numel() for p in self.groups[name])
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    # ------------------------------------------------------------------ forward
    def av_tokens(self, visual: Tensor, audio: Tensor, padding_mask: Tensor | None) -> Tensor:
        """(B, num_queries, LLM width) audiovisual tokens added to every adapter prompt."""
        return self.av_adapter(self.av_encoder(visual, audio, padding_mask), padding_mask)

    def _set_prompts(self, av: Tensor | None) -> None:
        for i, layer in enumerate(self.adapted):
            layer.prompt = None if av is None else self.adapter_prompts[i] + av

    def llm_forward(self, av: Tensor, **llm_kwargs):
        """One LLM call with the adapter prompts of this batch in place."""
        self._set_prompts(av)
        try:
            return self.llm(**llm_kwargs)
        finally:
            self._set_prompts(None)

    def forward(
        self,
        visual: Tensor,
        audio: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ):
        """Teacher-forced LLM output (``.loss`` on the labelled response tokens, ``.logits``)."""
        av = self.av_tokens(visual, audio, padding_mask)
        return self.llm_forward(
            av, input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False
        )

    @torch.no_grad()
    def generate(
        self,
        visual: Tensor,
        audio: Tensor,
        padding_mask: Tensor | None = None,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy decoding (temperature 0) after the shared prompt, with the KV cache."""
        from transformers import DynamicCache

        av = self.av_tokens(visual, audio, padding_mask)
        batch = av.shape[0]
        ids = torch.tensor(self.prompt_ids, device=av.device).expand(batch, -1)
        eos = self.tokenizer.eos_token_id
        cache = DynamicCache()
        generated = torch.empty(batch, 0, dtype=torch.long, device=av.device)
        done = torch.zeros(batch, dtype=torch.bool, device=av.device)
        step_ids = ids
        for _ in range(max_new_tokens):
            out = self.llm_forward(av, input_ids=step_ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            next_ids = out.logits[:, -1].argmax(-1)
            next_ids = torch.where(done, torch.full_like(next_ids, eos), next_ids)
            generated = torch.cat([generated, next_ids[:, None]], dim=1)
            done |= next_ids == eos
            if bool(done.all()):
                break
            step_ids = next_ids[:, None]
        texts = []
        for row in generated.tolist():
            row = row[: row.index(eos)] if eos in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts


# Table 3 rows: mask settings and the paper's totals (billions)
TABLE3 = {
    "baseline": ({"type": "none"}, None, 6.93),
    "extra_linear": ({"type": "extra_linear", "depth": 16}, None, 7.07),
    "extra_layers": ({"type": "extra_layers", "depth": 16}, 39, 7.20),
    "extra_layers_matched": ({"type": "extra_layers", "depth": 16}, None, None),
    "multilayer": ({"type": "multilayer", "depth": 16}, None, 7.07),
}


def table3_parameter_totals(full: bool = True, **model_kwargs) -> dict[str, dict]:
    """Parameter totals of the Table 3 models at the paper's sizes (LLaMA-7B on ``meta``: no
    weights needed); ``extra_layers`` uses the count that reproduces the paper's 7.20B.
    ``full=False`` builds the whole model once (baseline) and, for the other rows, only the AV
    encoder that differs (the rows differ nowhere else): same numbers, a fraction of the time."""
    rows: dict[str, dict] = {}
    base: LlamaAdapterAV | None = None
    for row, (mask, extra_layers, paper) in TABLE3.items():
        with torch.device("meta"):
            if full or base is None:
                model = LlamaAdapterAV(
                    llm_config=LLAMA_7B,
                    mask=MaskConfig(**mask),
                    attention=AttentionConfig(),
                    extra_layers=extra_layers,
                    **model_kwargs,
                )
                base = base or model
            else:
                model = base
                kwargs = {k: model_kwargs[k] for k in ("dim", "num_layers") if k in model_kwargs}
                model.av_encoder = AudioVisualEncoder(
                    mask=MaskConfig(**mask),
                    attention=AttentionConfig(),
                    extra_layers=extra_layers,
                    **kwargs,
                )
                model.groups["av"] = list(model.av_encoder.parameters())
        rows[row] = {"paper_B": paper, **model.parameter_breakdown()}
        rows[row]["extra_layers"] = model.av_encoder.encoder.num_extra_layers
    return rows


if __name__ == "__main__":  # python -m tasks.mad_ad.model: Table 3's parameter totals
    for name, row in table3_parameter_totals().items():
        paper = row["paper_B"]
        gap = (
            ""
            if paper is None
            else f"  paper {paper:.2f}B  ({row['total'] / 1e9 / paper - 1:+.2%})"
        )
        print(f"{name:22s} {row['total']:>14,d} = {row['total'] / 1e9:.3f}B{gap}  {row}")
