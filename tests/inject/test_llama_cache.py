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
