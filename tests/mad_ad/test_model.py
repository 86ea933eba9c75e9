"""LLaMA-Adapter V2 on a frozen tiny LLaMA: zero-init identity, trainable sets, decoding."""

from __future__ import annotations

import pytest
import torch
from mad_testing import TINY_AV, make_model
from transformers import LlamaForCausalLM

from stamp import mask_parameter_count
from tasks.mad_ad.data import encode_example
from tasks.mad_ad.model import BiasScaleLinear

S, DV = TINY_AV["tokens_per_modality"], TINY_AV["visual_dim"]


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
    assert "adapter_prompts" in stage1
    assert {n for n in stage1 if n.endswith(".gate")} == {
        f"llm.model.layers.{i}.self_attn.gate" for i in range(2)
    }
    assert all(
        n.startswith(("av_encoder.", "av_to_llm.", "adapter_prompts")) or n.endswith(".gate")
        for n in stage1
    )
    assert not any(n.endswith((".bias", ".scale")) and n.startswith("llm.") for n in stage1)

    model.set_trainable(["bias", "gate", "av"])
    stage2 = trainable_names(model)
    llm_side = {n for n in stage2 if n.startswith("llm.")}
    expected_bias = {
        f"llm.model.layers.{i}.{block}.{name}.{kind}"
        for i in range(2)
        for block, names in (
            ("self_attn.attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for name in names
        for kind in ("bias", "scale")
    }
    gates = {f"llm.model.layers.{i}.self_attn.gate" for i in range(2)}
    assert llm_side == expected_bias | gates
    assert "adapter_prompts" not in stage2
    assert {n for n in stage2 if n.startswith("av_")} == {n for n in stage1 if n.startswith("av_")}
    with pytest.raises(ValueError, match="unknown parameter groups"):
        model.set_trainable(["lora"])


def test_bias_scale_linear_is_identity_at_init():
    base = torch.nn.Linear(8, 6, bias=False)
    wrapped = BiasScaleLinear(base, with_scale=True)
    x = torch.randn(3, 8)
    assert torch.equal(wrapped(x), base(x))
    with torch.no_grad():
        wrapped.bias.fill_(1.0)
        wrapped.scale.fill_(2.0)
    assert torch.allclose(wrapped(x), 2 * (base(x) + 1))
    assert torch.allclose(wrapped.project_without_bias(x), 2 * base(x))


@pytest.mark.parametrize(
    "groups, lr",
    # stage 1 learns only through the zero-init gates at first: a high lr opens them quickly
    [(["av", "adapter", "gate"], 5e-2), (["bias", "gate", "av"], 1e-2)],
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


def test_all_av_outputs_as_prompt_when_no_queries(tiny_llama):
    model = make_model(tiny_llama, num_queries=0)
    visual, audio = features(2)
    assert model.av_tokens(visual, audio, None).shape[1] == 2 * S
    assert model.adapter_prompts.shape[1] == 2 * S
    assert model.av_encoder.encoder.n_max == 2 * S


def test_missing_llm_path_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.llm_path"):
        make_model(tmp_path / "absent")
