"""Audiovisual STAMP encoder + LLaMA-Adapter V2 on a frozen Hugging Face LLaMA.

Following LLaMA-Adapter V2 (Gao et al., 2023; OpenGVLab/LLaMA-Adapter,
``llama_adapter_v2_multimodal7b``), with CLIP images replaced by audiovisual tokens:

* ``AudioVisualEncoder``: 25 visual (CLIP, 5 fps) + 25 audio (OpenL3, 5 Hz) features, each
  projected (Linear + LayerNorm, like ``clip_proj``/``clip_proj_norm``) with a learned position
  and modality embedding, and ``num_queries`` learned query tokens in front (``visual_query``);
  a ``stamp.StampEncoder`` encodes them, so every ``mask=`` mode applies. The query outputs
  (or, with ``num_queries=0``, all 50 AV outputs) are the AV tokens, projected to the LLM width
  (Linear + LayerNorm, ``visual_proj``/``visual_proj_norm``).
* ``AdaptedLlamaAttention`` wraps the HF attention of the top ``adapter_layers`` layers: per layer a
  learned adapter prompt, plus the AV tokens, is projected by the layer's own (frozen) k/v
  projections; the queries attend to it in a separate softmax whose output is scaled by a
  zero-initialised per-head ``tanh`` gate and added before the output projection. At
  initialisation the model is exactly the frozen LLM.
* ``BiasScaleLinear`` adds a zero-init bias (+ optional one-init scale) to every attention / MLP
  linear of the LLM (V2's bias tuning), trained in stage 2.

Parameter groups (``av``, ``adapter``, ``gate``, ``bias``, ``norm``) are switched on per training
stage by the LightningModule; the LLM's own weights are never trained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, StampEncoder, as_attention_config, as_mask_config
from tasks.mad_ad.data import check_paths, encode_prompt, load_tokenizer

log = logging.getLogger(__name__)

PARAMETER_GROUPS = ("av", "adapter", "gate", "bias", "norm")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class AudioVisualEncoder(nn.Module):
    """Visual + audio feature windows -> AV tokens (B, num_queries or 2S, dim) via STAMP."""

    def __init__(
        self,
        *,
        mask: MaskConfig,
        attention: AttentionConfig,
        visual_dim: int = 512,
        audio_dim: int = 512,
        tokens_per_modality: int = 25,
        dim: int = 768,
        num_layers: int = 16,
        num_heads: int = 16,
        ffn_dim: int | None = None,
        num_queries: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_queries, self.tokens = num_queries, tokens_per_modality
        self.visual_proj = nn.Sequential(nn.Linear(visual_dim, dim), nn.LayerNorm(dim))
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, dim), nn.LayerNorm(dim))
        self.position = nn.Parameter(torch.zeros(tokens_per_modality, dim))
        self.modality = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.queries = nn.Parameter(torch.randn(num_queries, dim)) if num_queries else None
        self.encoder = StampEncoder(
            num_layers,
            dim,
            num_heads,
            ffn_dim or 4 * dim,
            n_max=num_queries + 2 * tokens_per_modality,
            mask=mask,
            attention=attention,
            dropout=dropout,
            activation="gelu",
            norm_first=True,  # timm ``Block`` as in LLaMA-Adapter V2's visual blocks
            norm_eps=1e-6,
            final_norm=True,
        )

    @property
    def num_output_tokens(self) -> int:
        return self.num_queries or 2 * self.tokens

    def modality_boundaries(self) -> list[int]:
        """Token indices where the visual and the audio tokens start (for mask plots)."""
        return [self.num_queries, self.num_queries + self.tokens]

    def forward(self, visual: Tensor, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if visual.shape[1] != self.tokens or audio.shape[1] != self.tokens:
            raise ValueError(
                f"expected {self.tokens} visual and audio tokens, got {visual.shape[1]} and "
                f"{audio.shape[1]} (data.tokens_per_modality vs model.tokens_per_modality)"
            )
        v = self.visual_proj(visual) + self.position + self.modality[0]
        a = self.audio_proj(audio) + self.position + self.modality[1]
        x = torch.cat([v, a], dim=1)
        if self.queries is not None:
            x = torch.cat([self.queries.expand(x.shape[0], -1, -1), x], dim=1)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (self.num_queries, 0), value=False)
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        x = self.encoder(x, key_padding_mask=padding_mask)
        return x[:, : self.num_queries] if self.queries is not None else x


class BiasScaleLinear(nn.Module):
    """``scale * (W x + b)`` around a frozen linear; bias zeros, scale ones (identity at init)."""

    def __init__(self, base: nn.Linear, with_scale: bool = False) -> None:
        super().__init__()
        self.base = base
        self.bias = nn.Parameter(torch.zeros(base.out_features))
        self.scale = nn.Parameter(torch.ones(base.out_features)) if with_scale else None

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x) + self.bias.to(x.dtype)
        return y if self.scale is None else y * self.scale.to(x.dtype)

    def project_without_bias(self, x: Tensor) -> Tensor:
        """The linear part only (what an added attention term goes through)."""
        y = F.linear(x, self.base.weight)
        return y if self.scale is None else y * self.scale.to(x.dtype)


def _project_without_bias(linear: nn.Module, x: Tensor) -> Tensor:
    if isinstance(linear, BiasScaleLinear):
        return linear.project_without_bias(x)
    return F.linear(x, linear.weight)


class AdaptedLlamaAttention(nn.Module):
    """HF Llama attention + LLaMA-Adapter zero-init gated attention to an adapter prompt.

    ``out = o_proj(softmax(q K^T) V + tanh(g_h) softmax(q K_p^T) V_p)``, with K_p, V_p the layer's
    k/v projections of the prompt (no rotary embedding, no causal mask), g zero-initialised per
    head. The prompt (B, P, hidden) is set by ``LlamaAdapterAV`` around each LLM call.
    """

    def __init__(self, attn: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn = attn
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.gate = nn.Parameter(torch.zeros(1, num_heads, 1, 1))
        self.prompt: Tensor | None = None
        self._query: Tensor | None = None
        attn.q_proj.register_forward_hook(self._keep_query)  # reuse q, don't recompute it

    def _keep_query(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self.prompt is not None:
            self._query = output

    def forward(self, hidden_states: Tensor, position_embeddings=None, **kwargs):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        out, weights = self.attn(hidden_states, position_embeddings=position_embeddings, **kwargs)
        if self.prompt is None:
            return out, weights
        query, self._query = self._query, None
        batch, length, _ = hidden_states.shape
        q = query.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        prompt = self.prompt.to(hidden_states.dtype)
        if prompt.shape[0] != batch:
            prompt = prompt.expand(batch, -1, -1)
        heads = (batch, prompt.shape[1], self.num_kv_heads, self.head_dim)
        k = self.attn.k_proj(prompt).view(heads).transpose(1, 2)
        v = self.attn.v_proj(prompt).view(heads).transpose(1, 2)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        probs = F.softmax(scores.float(), dim=-1).to(q.dtype)
        adapted = torch.matmul(torch.tanh(self.gate).to(q.dtype) * probs, v)
        adapted = adapted.transpose(1, 2).reshape(batch, length, -1)
        return out + _project_without_bias(self.attn.o_proj, adapted), weights


class LlamaAdapterAV(nn.Module):
    """The AD model: AV encoder -> AV tokens + adapter prompts -> frozen LLaMA with adapters.

    ``llm_path`` is a local Hugging Face LLaMA directory (weights + tokenizer), e.g. LLaMA-7B
    converted with transformers' ``convert_llama_weights_to_hf``; nothing is downloaded.
    """

    def __init__(
        self,
        llm_path: str | None,
        *,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
        visual_dim: int = 512,
        audio_dim: int = 512,
        tokens_per_modality: int = 25,
        dim: int = 768,
        num_layers: int = 16,
        num_heads: int = 16,
        ffn_dim: int | None = None,
        num_queries: int = 16,
        dropout: float = 0.0,
        adapter_layers: int = 31,
        bias_tuning: bool = True,
        scale_tuning: bool = False,
        llm_dtype: str = "float32",
        llm_attn_implementation: str = "sdpa",
        initial_groups: Sequence[str] = ("av", "adapter", "gate"),
    ) -> None:
        super().__init__()
        check_paths({"model.llm_path": llm_path}, what="LLaMA checkpoint")
        if llm_dtype not in DTYPES:
            raise ValueError(f"model.llm_dtype={llm_dtype!r}; choose one of {sorted(DTYPES)}")
        from transformers import LlamaForCausalLM

        self.llm = LlamaForCausalLM.from_pretrained(
            llm_path,
            dtype=DTYPES[llm_dtype],
            attn_implementation=llm_attn_implementation,
            local_files_only=True,
        )
        self.llm.requires_grad_(False)
        self.tokenizer = load_tokenizer(llm_path)
        self.prompt_ids = encode_prompt(self.tokenizer)
        config = self.llm.config
        width, n_layers = config.hidden_size, config.num_hidden_layers
        if not 1 <= adapter_layers <= n_layers:
            raise ValueError(
                f"model.adapter_layers={adapter_layers}; the LLM has {n_layers} layers"
            )

        self.av_encoder = AudioVisualEncoder(
            mask=as_mask_config(mask),
            attention=as_attention_config(attention),
            visual_dim=visual_dim,
            audio_dim=audio_dim,
            tokens_per_modality=tokens_per_modality,
            dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_queries=num_queries,
            dropout=dropout,
        )
        self.av_to_llm = nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width))
        prompt_len = self.av_encoder.num_output_tokens
        # nn.Embedding's N(0, 1) initialisation, as LLaMA-Adapter V2's ``adapter_query``
        self.adapter_prompts = nn.Parameter(torch.randn(adapter_layers, prompt_len, width))

        bias_params: list[nn.Parameter] = []
        if bias_tuning:
            for layer in self.llm.model.layers:
                for block in (layer.self_attn, layer.mlp):
                    for name in LINEAR_NAMES:
                        if isinstance(getattr(block, name, None), nn.Linear):
                            wrapped = BiasScaleLinear(getattr(block, name), scale_tuning)
                            setattr(block, name, wrapped)
                            bias_params += [
                                p for p in (wrapped.bias, wrapped.scale) if p is not None
                            ]
        head_dim = getattr(config, "head_dim", None) or width // config.num_attention_heads
        self.adapted: list[AdaptedLlamaAttention] = []
        for layer in self.llm.model.layers[n_layers - adapter_layers :]:
            layer.self_attn = AdaptedLlamaAttention(
                layer.self_attn, config.num_attention_heads, config.num_key_value_heads, head_dim
            )
            self.adapted.append(layer.self_attn)
        norms = [p for n, p in self.llm.named_parameters() if "norm" in n]
        self.groups: dict[str, list[nn.Parameter]] = {
            "av": list(self.av_encoder.parameters()) + list(self.av_to_llm.parameters()),
            "adapter": [self.adapter_prompts],
            "gate": [a.gate for a in self.adapted],
            "bias": bias_params,
            "norm": norms,
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

    # ------------------------------------------------------------------ forward
    def av_tokens(self, visual: Tensor, audio: Tensor, padding_mask: Tensor | None) -> Tensor:
        """(B, P, LLM width) audiovisual tokens added to every adapter prompt."""
        return self.av_to_llm(self.av_encoder(visual, audio, padding_mask))

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
