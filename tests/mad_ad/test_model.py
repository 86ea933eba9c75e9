"""LLaMA-Adapter V2 on a frozen tiny LLaMA: zero-init identity, trainable sets, decoding."""

from __future__ import annotations

import pytest
import torch
from mad_testing import TINY_AV, make_model
from transformers import LlamaForCausalLM

from stamp import mask_parameter_count
from tasks.mad_ad.data import encode_example

S, DV = TINY_AV["tokens_per_modality"], TINY_AV["visual_dim"]
HIDDEN, INTERMEDIATE = 64, 128  # the tiny LLaMA of conftest.py
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def features(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, S, DV, generator=g), torch.randn(batch, S, DV, generator=g)


def example_batch(model, texts: list[str]) -> dict:
    pairs = [encode_example(model.tokenizer, t, "### Response:", 16) for t in texts]
    n = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(texts), n), model.tokenizer.eos_token_id)
    labels = torch.full((len(texts), n), -100)
    attention = torch.zeros((len(texts), n), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        ids[i, : len(x)], labels[i, : len(y)], attention[i, : len(x)] = (
            torch.tensor(x),
            torch.tensor(y),
            1,
        )
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def test_zero_init_gates_give_the_frozen_llm(tiny_llama):
    model = make_model(tiny_llama).eval()
    frozen = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    visual, audio = features()
    batch = example_batch(model, ["Tony opens the door.", "She leaves."])
    with torch.no_grad():
        adapted = model(visual, audio, batch["input_ids"], batch["attention_mask"]).logits
        expected = frozen(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(adapted, expected)
        for layer in model.adapted:
            layer.gate.fill_(0.5)
        changed = model(visual, audio, batch["input_ids"], batch["attention_mask"]).logits
    assert not torch.allclose(changed, expected, atol=1e-4)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_exactly_the_stage_parameters_are_trainable(tiny_llama):
    model = make_model(tiny_llama, scale_tuning=True)
    frozen_llm = set(model.llm_frozen_names)
    assert frozen_llm and not frozen_llm & trainable_names(model)
    stage1 = trainable_names(model)  # the constructor's default: av + adapter + gate
    gates = {f"llm.model.layers.{i}.self_attn.gate" for i in range(2)}
    assert {n for n in stage1 if n.startswith("llm.")} == gates
    assert {n.split(".")[0] for n in stage1 if not n.startswith("llm.")} == {
        "av_encoder",
        "av_adapter",
        "adapter_prompts",
    }

    model.set_trainable(["bias", "norm", "lora", "gate", "av"])
    stage2 = trainable_names(model)
    llm_side = {n for n in stage2 if n.startswith("llm.")}
    prefix = "llm.model.layers.{i}.{block}.{name}"
    # V2's bias tuning: q, o and the MLP (k / v have none); LoRA on all seven, around them
    expected_bias = {
        (prefix + ".base_layer.{kind}").format(i=i, block=block, name=name, kind=kind)
        for i in range(2)
        for block, names in (("self_attn.attn", ("q_proj", "o_proj")), ("mlp", MLP))
        for name in names
        for kind in ("tuned_bias", "tuned_scale")
    }
    expected_lora = {
        (prefix + ".lora_{ab}.default.weight").format(i=i, block=block, name=name, ab=ab)
        for i in range(2)
        for block, names in (("self_attn.attn", ATTN), ("mlp", MLP))
        for name in names
        for ab in "AB"
    }
    norms = {n for n in llm_side if "norm" in n}
    assert len(norms) == 2 * 2 + 1  # two RMSNorms per layer + the final one
    assert llm_side == expected_bias | expected_lora | gates | norms
    assert not any(n.startswith(("adapter_prompts", "av_adapter")) for n in stage2)
    assert {n for n in stage2 if n.startswith("av_")} == {
        n for n in stage1 if n.startswith("av_encoder")
    }
    with pytest.raises(ValueError, match="unknown parameter groups"):
        model.set_trainable(["everything"])


def test_bias_scale_and_lora_are_identity_at_init_and_then_act(tiny_llama):
    model = make_model(tiny_llama, scale_tuning=True).eval()
    frozen = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.llm(ids).logits, frozen(ids).logits)
        q = model.llm.model.layers[0].self_attn.attn.q_proj
        x = torch.randn(3, q.in_features)
        weight = frozen.model.layers[0].self_attn.q_proj.weight
        base = q.base_layer
        base.tuned_bias.fill_(0.5)
        base.tuned_scale.fill_(2.0)
        q.lora_B["default"].weight.normal_()
        a, b = q.lora_A["default"].weight, q.lora_B["default"].weight
        rank = a.shape[0]
        assert rank == TINY_AV["lora_rank"] and q.scaling["default"] == 1.0  # alpha = rank
        # V2's order: (W x + b) * s, then + B A x
        expected = (x @ weight.T + 0.5) * 2.0 + x @ a.T @ b.T
        torch.testing.assert_close(q(x), expected)
        assert not torch.allclose(model.llm(ids).logits, frozen(ids).logits, atol=1e-4)
    assert sum(p.numel() for p in model.groups["lora"]) == 2 * (
        4 * rank * (2 * HIDDEN) + 3 * rank * (HIDDEN + INTERMEDIATE)
    )


def test_adapter_attention_matches_the_v2_formula(tiny_llama):
    """One adapted layer against LLaMA-Adapter V2's ``Attention.forward`` written out here."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    model = make_model(tiny_llama).eval()
    layer = model.adapted[-1]
    attn = layer.attn
    with torch.no_grad():
        layer.gate.normal_()
        for name in ("q_proj", "o_proj"):
            getattr(attn, name).base_layer.tuned_bias.normal_()
        for name in ATTN:
            getattr(attn, name).lora_B["default"].weight.normal_(std=0.1)
    batch, length, heads = 2, 7, model.llm.config.num_attention_heads
    d = HIDDEN // heads
    h = torch.randn(batch, length, HIDDEN)
    prompt = torch.randn(batch, TINY_AV["num_queries"], HIDDEN)
    positions = torch.arange(length)[None].expand(batch, -1)
    cos, sin = model.llm.model.rotary_emb(h, positions)
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]
    layer.prompt = prompt
    with torch.no_grad():
        out, _ = layer(h, position_embeddings=(cos, sin), attention_mask=causal)
    layer.prompt = None

    def lin(name: str, x: torch.Tensor, lora: bool = True) -> torch.Tensor:
        m = getattr(attn, name)
        y = x @ m.base_layer.weight.T
        if hasattr(m.base_layer, "tuned_bias"):
            y = y + m.base_layer.tuned_bias
        if lora:
            y = y + x @ m.lora_A["default"].weight.T @ m.lora_B["default"].weight.T
        return y

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, d).transpose(1, 2)

    with torch.no_grad():
        q, k, v = (split(lin(n, h)) for n in ("q_proj", "k_proj", "v_proj"))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        output = (q @ k.transpose(2, 3) / d**0.5 + causal).softmax(-1) @ v
        adapter_k = split(lin("k_proj", prompt, lora=False))  # V2: self.wk(adapter), no LoRA
        adapter_v = split(lin("v_proj", prompt, lora=False))
        adapter = (q @ adapter_k.transpose(2, 3) / d**0.5).softmax(-1)
        output = output + torch.tanh(layer.gate) * adapter @ adapter_v
        expected = lin("o_proj", output.transpose(1, 2).reshape(batch, length, -1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "groups, lr",
    # stage 1 learns only through the zero-init gates at first: a high lr opens them quickly
    [(["av", "adapter", "gate"], 5e-2), (["bias", "norm", "lora", "gate", "av"], 1e-2)],
)
def test_a_few_steps_lower_the_loss(tiny_llama, groups, lr):
    torch.manual_seed(0)
    model = make_model(tiny_llama)
    model.set_trainable(groups)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    visual, audio = features(4)
    batch = example_batch(model, ["Tony opens the door."] * 2 + ["Margo closes the window."] * 2)
    losses = []
    for _ in range(6):
        loss = model(visual, audio, **batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_greedy_generation_returns_text_and_matches_uncached_decoding(tiny_llama):
    model = make_model(tiny_llama).eval()
    with torch.no_grad():
        for layer in model.adapted:
            layer.gate.fill_(0.7)  # make the adapter matter for decoding
    visual, audio = features(2)
    texts = model.generate(visual, audio, max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    # reference: recompute the whole sequence at every step, no cache
    with torch.no_grad():
        av = model.av_tokens(visual, audio, None)
        ids = torch.tensor(model.prompt_ids).expand(2, -1)
        for _ in range(6):
            logits = model.llm_forward(av, input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = model.tokenizer.eos_token_id
    for row, text in zip(ids[:, len(model.prompt_ids) :].tolist(), texts, strict=True):
        row = row[: row.index(eos)] if eos in row else row
        assert model.tokenizer.decode(row, skip_special_tokens=True).strip() == text


@pytest.mark.parametrize(
    "mask", ["none", "sparse", "global", "multilayer", "extra_linear", "extra_layers"]
)
def test_every_mask_mode_builds_and_runs(tiny_llama, mask):
    model = make_model(tiny_llama, mask=mask)
    visual, audio = features(2)
    padding = torch.zeros(2, 2 * S, dtype=torch.bool)
    padding[1, S - 2 : S] = True  # a short movie: padded visual frames
    tokens = model.av_tokens(visual, audio, padding)
    assert tokens.shape == (2, TINY_AV["num_queries"], model.llm.config.hidden_size)
    assert torch.isfinite(tokens).all()
    params = mask_parameter_count(model)
    assert (params == 0) == (mask == "none")


def test_stamp_acts_on_the_50_audiovisual_tokens_only(tiny_llama):
    model = make_model(tiny_llama, mask="multilayer")
    encoder = model.av_encoder.encoder
    assert encoder.n_max == 2 * S  # not num_queries + 2S
    assert all(layer.mask_generator.out.out_features == 2 * S for layer in encoder.layers)
    adapter = model.av_adapter.blocks
    assert mask_parameter_count(model.av_adapter) == 0 and adapter.n_max == 2 * S + 4
    assert len(adapter.layers) == TINY_AV["adapter_depth"]


def test_missing_llm_path_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.llm_path"):
        make_model(tmp_path / "absent")
