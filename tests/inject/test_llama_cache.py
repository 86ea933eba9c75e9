"""LLaMA-family decoder with STAMP: causal masking, grouped-query attention and the KV cache.

Cached decoding (prefill, then one token at a time) must give the logits of one full forward,
for the MLP generator (columns = absolute key positions) and the low-rank one (key factors of
past tokens kept beside the cache), and ``generate`` must pick the tokens that a greedy loop
without any cache picks.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import stamp
from tests.inject.models import llama, llama_config

MASKS = {
    "identity": None,
    "mlp": {"init": "kaiming"},
    "per_head_add": {"init": "kaiming", "per_head": True, "fusion": "add"},
    "lowrank": {"init": "kaiming", "generator": "lowrank", "rank": 4},
    "lowrank_per_head": {"init": "kaiming", "generator": "lowrank", "rank": 4, "per_head": True},
}


def _ids(n: int = 9) -> torch.Tensor:
    return torch.randint(3, 100, (2, n), generator=torch.Generator().manual_seed(4))


def _cached_logits(model, ids, mask, prefill: int = 5) -> torch.Tensor:
    cache = DynamicCache(config=model.config)
    out = [
        model(
            input_ids=ids[:, :prefill],
            attention_mask=mask[:, :prefill],
            cache=cache,
            use_cache=True,
        ).logits
    ]
    for t in range(prefill, ids.shape[1]):
        out.append(
            model(
                input_ids=ids[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                cache=cache,
                use_cache=True,
            ).logits
        )
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", list(MASKS))
def test_cached_decoding_matches_the_full_forward(kind, impl):
    model = llama(impl).eval()
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second sample
    with torch.no_grad():
        original = model(input_ids=ids, attention_mask=mask).logits
        stamp.inject(model, mask=MASKS[kind])
        full = model(input_ids=ids, attention_mask=mask).logits
        cached = _cached_logits(model, ids, mask)
    valid = mask.bool()
    assert (cached - full)[valid].abs().max().item() <= 1e-5
    change = (full - original)[valid].abs().max().item()
    if kind == "identity":
        assert change <= 1e-5
    else:  # a token-dependent mask really is in the computation
        assert change > 1e-4


@pytest.mark.parametrize("kind", ["mlp", "lowrank"])
def test_generate_equals_a_greedy_loop_without_cache(kind):
    model = stamp.inject(llama("sdpa").eval(), mask=MASKS[kind])
    prompt = _ids(4)
    with torch.no_grad():
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        ids = prompt
        for _ in range(6):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("kind", ["mlp", "lowrank_add"])
def test_beam_search_with_cache_equals_without(kind, monkeypatch):
    import stamp.injection.adapter as adapter

    moved = []  # calls where beam search had reordered the cache's rows

    def spy(keys, seen):
        rows = source_rows(keys, seen)
        moved.append(rows is not None)
        return rows

    source_rows = adapter.source_rows
    monkeypatch.setattr(adapter, "source_rows", spy)
    mask = {**MASKS["lowrank"], "fusion": "add"} if kind == "lowrank_add" else MASKS[kind]
    model = stamp.inject(llama("sdpa").eval(), mask=mask)
    prompt = _ids(4)
    kw = dict(
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        do_sample=False,
        num_beams=3,
        pad_token_id=0,
        eos_token_id=None,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        plain = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    assert (cached.sequences_scores - plain.sequences_scores).abs().max().item() <= 1e-5
    if kind == "lowrank_add":  # the stored key factors followed the reordered rows
        assert any(moved)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["mlp", "lowrank"])
def test_static_cache(kind, impl):
    from transformers import StaticCache

    model = stamp.inject(llama(impl).eval(), mask=MASKS[kind])
    ids = _ids(8)
    with torch.no_grad():
        cache = StaticCache(config=model.config, max_cache_len=16)  # 16 key slots every call
        out = [model(input_ids=ids[:, :5], cache=cache, use_cache=True).logits]
        for t in range(5, 8):
            out.append(model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits)
        full = model(input_ids=ids).logits
    assert (torch.cat(out, dim=1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["mlp", "lowrank"])
def test_cropped_cache_continues_correctly(kind):
    model = stamp.inject(llama("eager").eval(), mask=MASKS[kind])
    ids = _ids(8)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :7], cache=cache, use_cache=True)
        cache.crop(-2)  # back to 5 tokens (as assisted decoding does)
        step = model(input_ids=ids[:, 5:6], cache=cache, use_cache=True).logits[:, -1]
        full = model(input_ids=ids[:, :6]).logits[:, -1]
    assert (step - full).abs().max().item() <= 1e-5


def test_lowrank_refuses_a_cache_it_has_not_seen():
    model = stamp.inject(llama("eager").eval(), mask=MASKS["lowrank"])
    ids = _ids()
    with torch.no_grad():
        cache = DynamicCache(config=llama_config("eager"))
        model(input_ids=ids[:, :5], cache=cache, use_cache=True)
        for m in stamp.injected_modules(model).values():
            m._transient.clear()  # e.g. a cache built by another process
        with pytest.raises(RuntimeError, match="cached keys whose tokens were not seen"):
            model(input_ids=ids[:, 5:6], cache=cache, use_cache=True)
