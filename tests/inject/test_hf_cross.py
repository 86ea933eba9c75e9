"""stamp.inject into Hugging Face encoder-decoders: BART (encoder self, decoder self + cross), T5
(self + cross, relative position bias kept) and Whisper's decoder (self + cross over the
encoder), on tiny random models.

A cross-attention's M comes from the query tokens (one column per key position) and, for the
low-rank generator, from the key tokens too, as the paper's QD-DETR layers compute it
(``StampCrossAttentionLayer``); the injected module is checked against ``StampAttention`` with
the same weights. Outputs are unchanged at injection, move after one training step, and
``generate`` with a KV cache gives the logits of one forward without cache.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stamp
from stamp.injection import injected_modules
from stamp.injection.cross import InjectedCrossStamp

IMPLS = ("eager", "sdpa")
MASKS = {
    "mlp": None,
    "per_head_add": {"per_head": True, "fusion": "add"},
    "lowrank": {"generator": "lowrank", "rank": 4},
    "lowrank_per_head": {"generator": "lowrank", "rank": 4, "per_head": True},
}
T5_N_MAX = 16  # T5 has relative positions only: the MLP generator's key columns are given


def bart(impl: str) -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=100,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=2,  # the decoder's modules have their own head count
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
        attn_implementation=impl,
    )
    return BartForConditionalGeneration(config)


def t5(impl: str) -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        attn_implementation=impl,
    )
    return T5ForConditionalGeneration(config)


def whisper(impl: str) -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=100,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,  # 32 mel frames -> 16 encoder tokens
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        attn_implementation=impl,
    )
    return WhisperForConditionalGeneration(config)


BUILD = {"bart": bart, "t5": t5, "whisper": whisper}
# what each test injects: every module of BART and T5, Whisper's decoder (self + cross)
INJECT = {
    "bart": dict(kind="both"),
    "t5": dict(kind="both", n_max=T5_N_MAX),
    "whisper": dict(kind="both", targets="decoder"),
}


def _source(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if name == "whisper":
        return {"input_features": torch.randn(2, 8, 32, generator=g)}
    ids = torch.randint(3, 100, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding in the second sample (the cross-attention's keys)
    return {"input_ids": ids, "attention_mask": mask}


def _inputs(name: str) -> dict:
    decoder = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(2))
    return {**_source(name), "decoder_input_ids": decoder}


def _logits(name: str, model: nn.Module) -> torch.Tensor:
    return model(**_inputs(name)).logits


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _train_one_step(name: str, model: nn.Module) -> nn.Module:
    """One Adam step on the STAMP parameters only (M leaves the identity)."""
    _no_dropout(model).train()
    stamp.mark_only_stamp_trainable(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = _logits(name, model)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * w).sum().backward()
    opt.step()
    return model.eval()


def test_kind_selects_self_cross_or_both_attention():
    names = {
        kind: set(injected_modules(stamp.inject(bart("eager"), kind=kind)))
        for kind in ("self", "cross", "both")
    }
    assert names["cross"] == {f"model.decoder.layers.{i}.encoder_attn" for i in range(2)}
    assert names["self"] == {
        f"model.{part}.layers.{i}.self_attn" for part in ("encoder", "decoder") for i in range(2)
    }
    assert names["both"] == names["self"] | names["cross"]
    model = stamp.inject(bart("eager"), kind="both")
    assert len(names["self"]) == 4 and len(names["cross"]) == 2 and len(names["both"]) == 6
    stamps = injected_modules(model)  # kind="both"
    cross = {n for n, s in stamps.items() if isinstance(s, InjectedCrossStamp)}
    assert cross == names["cross"] and all(stamps[n].cross for n in cross)
    # the decoder's modules have 2 heads, the encoder's 4 (BART's config reads the encoder's)
    assert stamps["model.decoder.layers.0.encoder_attn"].num_heads == 2
    assert stamps["model.encoder.layers.0.self_attn"].num_heads == 4
    t5_cross = set(injected_modules(stamp.inject(t5("eager"), kind="cross", n_max=T5_N_MAX)))
    assert t5_cross == {f"decoder.block.{i}.layer.1.EncDecAttention" for i in range(2)}
    with pytest.raises(ValueError, match="kind='crossed'; choose one of: self, cross, both"):
        stamp.inject(bart("eager"), kind="crossed")
    with pytest.raises(ValueError, match="matches no supported attention module of kind='cross'"):
        stamp.inject(bart("eager"), targets="encoder", kind="cross")


def test_default_n_max_is_each_modules_longest_key_sequence():
    stamps = injected_modules(stamp.inject(whisper("eager"), kind="both"))
    assert stamps["model.encoder.layers.0.self_attn"].n_max == 16  # max_source_positions
    assert stamps["model.decoder.layers.0.self_attn"].n_max == 32  # max_target_positions
    assert stamps["model.decoder.layers.0.encoder_attn"].n_max == 16  # the encoder's tokens
    bart_stamps = injected_modules(stamp.inject(bart("eager"), kind="both")).values()
    assert {s.n_max for s in bart_stamps} == {32}  # max_position_embeddings, both sides
    with pytest.raises(ValueError, match="cannot tell the longest sequence"):
        stamp.inject(t5("eager"), kind="cross")  # T5: relative positions only
    lowrank = stamp.inject(t5("eager"), mask={"generator": "lowrank"}, kind="cross")
    assert {s.n_max for s in injected_modules(lowrank).values()} == {None}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("name", list(BUILD))
def test_outputs_unchanged_at_injection(name, mask, impl):
    model = BUILD[name](impl).eval()
    with torch.no_grad():
        before = _logits(name, model)
        stamp.inject(model, mask=MASKS[mask], **INJECT[name])
        after = _logits(name, model)
    stamps = injected_modules(model)
    assert sum(isinstance(s, InjectedCrossStamp) for s in stamps.values()) == 2
    assert len(stamps) == (4 if name == "whisper" else 6)
    assert (after - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mask", ["mlp", "lowrank"])
@pytest.mark.parametrize("name", list(BUILD))
def test_one_training_step_changes_outputs_through_cross_attention(name, mask):
    model = stamp.inject(BUILD[name]("eager"), mask=MASKS[mask], **INJECT[name])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".stamp." not in k}
    with torch.no_grad():
        before = _logits(name, model.eval())
    _train_one_step(name, model)
    stamps = injected_modules(model)
    for s in stamps.values():  # every generator, the cross-attentions' included, got a gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
    with torch.no_grad():
        after = _logits(name, model)
    assert (after - before).abs().max().item() > 1e-4
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())


@pytest.mark.parametrize("mask", ["mlp", "lowrank_per_head"])
def test_cross_attention_equals_stamp_attention_with_the_same_weights(mask):
    """The injected BART cross-attention computes the paper's cross-attention layer: M from the
    query tokens over the key positions (low-rank: and from the key tokens), fused into the
    logits, as ``StampAttention`` (the QD-DETR layers' core) with the same weights."""
    model = _train_one_step("bart", stamp.inject(bart("eager"), mask=MASKS[mask], kind="cross"))
    attn = model.model.decoder.layers[1].encoder_attn
    seen = {}

    def keep(module, args, kwargs, output):
        seen.update(kwargs, hidden=args[0] if args else kwargs["hidden_states"], out=output[0])

    handle = attn.register_forward_hook(keep, with_kwargs=True)
    with torch.no_grad():
        _logits("bart", model)
    handle.remove()
    x, context = seen["hidden"], seen["key_value_states"]
    reference = stamp.StampAttention(32, 2, cross=True, context_dim=32).eval()
    with torch.no_grad():
        reference.q.weight.copy_(attn.q_proj.weight)
        reference.q.bias.copy_(attn.q_proj.bias)
        reference.kv.weight.copy_(torch.cat([attn.k_proj.weight, attn.v_proj.weight]))
        reference.kv.bias.copy_(torch.cat([attn.k_proj.bias, attn.v_proj.bias]))
        reference.proj.load_state_dict(attn.out_proj.state_dict())
        # StampLayer's call for a cross-attention: the generator reads x and the context
        m = attn.stamp.generator(x, n_keys=context.shape[1], context=context)
        expected = reference(x, context, mask=m, attn_bias=seen["attention_mask"])
    assert (m - 1.0).abs().max() > 1e-3  # trained: not the identity of fusion=mul
    torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-5)


def _generate(name: str, model: nn.Module, use_cache: bool, new: int = 5, **kw):
    source = _source(name)
    return model.generate(
        **source,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=use_cache,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )


@pytest.mark.parametrize("mask", ["mlp", "per_head_add", "lowrank"])
@pytest.mark.parametrize("name", list(BUILD))
def test_generate_with_cache_equals_a_forward_without_cache(name, mask):
    """After one training step: every logit of cached generation (the decoder's self-attention
    keys grow, the cross-attention's are the encoder's, kept in the cache) equals one full
    forward over the generated sequence; generating without cache picks the same tokens."""
    model = _train_one_step(
        name, stamp.inject(BUILD[name]("sdpa"), mask=MASKS[mask], **INJECT[name])
    )
    with torch.no_grad():
        cached = _generate(name, model, use_cache=True)
        plain = _generate(name, model, use_cache=False)
        sequences = cached.sequences
        full = model(**_source(name), decoder_input_ids=sequences[:, :-1]).logits
    steps = torch.stack(cached.logits, dim=1)  # (B, new tokens, vocab)
    assert torch.equal(sequences, plain.sequences)
    assert (steps - full[:, -steps.shape[1] :]).abs().max().item() <= 1e-5


def test_generate_past_n_max_fails_clearly():
    model = stamp.inject(bart("eager").eval(), targets="decoder", n_max=4)
    with pytest.raises(ValueError, match="5 key tokens but the generator was built for n_max=4"):
        with torch.no_grad():
            _generate("bart", model, use_cache=True, new=6)


@pytest.mark.parametrize("mask", ["mlp", "lowrank"])
def test_beam_search_with_cache_equals_without(mask):
    model = _train_one_step("bart", stamp.inject(bart("eager"), mask=MASKS[mask], kind="both"))
    kw = dict(num_beams=3, output_scores=True, eos_token_id=None)
    with torch.no_grad():
        cached = _generate("bart", model, use_cache=True, **kw)
        plain = _generate("bart", model, use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    assert (cached.sequences_scores - plain.sequences_scores).abs().max().item() <= 1e-5


def test_save_load_round_trip_with_cross_attention(tmp_path):
    mask = MASKS["lowrank_per_head"]
    model = _train_one_step("bart", stamp.inject(bart("eager"), mask=mask, kind="both"))
    stamp.save(model, tmp_path)
    fresh = stamp.load(bart("eager").eval(), tmp_path)
    assert {n: type(s) for n, s in injected_modules(fresh).items()} == {
        n: type(s) for n, s in injected_modules(model).items()
    }
    with torch.no_grad():
        assert torch.equal(_logits("bart", fresh), _logits("bart", model))


def test_a_self_attention_called_as_cross_attention_stops():
    model = stamp.inject(bart("eager"), targets="model.encoder.layers.0.self_attn")
    attn = model.model.encoder.layers[0].self_attn
    x = torch.randn(2, 3, 32)
    with pytest.raises(RuntimeError, match="self-attention but is called with key-side tokens"):
        attn(x, key_value_states=torch.randn(2, 5, 32))


# ----------------------------------------------------------------------------- identity rule
def _bert():
    from tests.inject.models import FAMILIES

    return FAMILIES["bert"]


def test_a_mask_config_without_init_starts_at_the_identity(recwarn):
    from tests.inject.models import run

    family = _bert()
    model = family.build("eager").eval()
    with torch.no_grad():
        before = run(family, model)
        stamp.inject(model, mask=stamp.MaskConfig(type="multilayer", fusion="mul"))
        after = run(family, model)
    assert {str(s.mask_cfg.init) for s in injected_modules(model).values()} == {"identity"}
    assert (after - before).abs().max().item() <= 1e-5
    assert not [w for w in recwarn if "stamp.inject" in str(w.message)]
    # the same for an encoder-decoder's cross-attention, and a mapping without init
    bart_model = bart("eager").eval()
    with torch.no_grad():
        before = _logits("bart", bart_model)
        stamp.inject(bart_model, mask=stamp.MaskConfig(per_head=True), kind="cross")
        assert (_logits("bart", bart_model) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "mask",
    [stamp.MaskConfig(init="torch"), {"init": "kaiming"}, stamp.MaskConfig(init="kaiming")],
    ids=["config_torch", "mapping_kaiming", "config_kaiming"],
)
def test_an_explicit_non_identity_init_is_honoured_with_a_warning(mask):
    from tests.inject.models import run

    family = _bert()
    model = family.build("eager").eval()
    with torch.no_grad():
        before = run(family, model)
        with pytest.warns(UserWarning, match="does not start at the identity") as caught:
            stamp.inject(model, mask=mask)
        after = run(family, model)
    assert len([w for w in caught if "stamp.inject" in str(w.message)]) == 1
    assert "\n" not in str(caught[0].message)  # one line
    init = mask["init"] if isinstance(mask, dict) else str(mask.init)
    assert {str(s.mask_cfg.init) for s in injected_modules(model).values()} == {init}
    assert (after - before).abs().max().item() > 1e-5  # the outputs did change


def test_an_explicit_identity_init_gives_no_warning(recwarn):
    stamp.inject(_bert().build("eager"), mask=stamp.MaskConfig(init="identity"))
    assert not [w for w in recwarn if "stamp.inject" in str(w.message)]


@pytest.mark.parametrize("mask", ["mlp", "lowrank"])
def test_generate_with_a_static_cache(mask):
    model = _train_one_step("bart", stamp.inject(bart("sdpa"), mask=MASKS[mask], kind="both"))
    with torch.no_grad():
        cached = _generate("bart", model, use_cache=True, cache_implementation="static")
        full = model(**_source("bart"), decoder_input_ids=cached.sequences[:, :-1]).logits
    steps = torch.stack(cached.logits, dim=1)
    assert (steps - full[:, -steps.shape[1] :]).abs().max().item() <= 1e-5


def test_whole_whisper_and_attention_probabilities_at_injection():
    """Whisper's encoder too (every module, kind="both"); the eager backend hands HF the
    attention probabilities (``output_attentions``), the cross-attention's included."""
    plain = whisper("eager").eval()
    model = stamp.inject(whisper("eager").eval(), kind="both")
    assert len(injected_modules(model)) == 6
    with torch.no_grad():
        before = plain(**_inputs("whisper"), output_attentions=True)
        after = model(**_inputs("whisper"), output_attentions=True)
    assert (after.logits - before.logits).abs().max().item() <= 1e-5
    for old, new in zip(before.cross_attentions, after.cross_attentions, strict=True):
        assert new.shape == (2, 4, 6, 16)
        assert (new - old).abs().max().item() <= 1e-6


def test_bert_as_a_decoder_with_cross_attention():
    """BertCrossAttention (key tokens: ``encoder_hidden_states``) is found by its class."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        is_decoder=True,
        add_cross_attention=True,
    )
    model = _no_dropout(BertModel(config)).eval()
    inputs = {
        "input_ids": torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1)),
        "encoder_hidden_states": torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2)),
    }
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
        stamp.inject(model, mask=MASKS["lowrank"], kind="cross")
        at_injection = model(**inputs).last_hidden_state
    assert set(injected_modules(model)) == {
        f"encoder.layer.{i}.crossattention.self" for i in range(2)
    }
    assert (at_injection - before).abs().max().item() <= 1e-5
    stamp.mark_only_stamp_trainable(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(**inputs).last_hidden_state  # a random projection (LayerNorm fixes the sum)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    opt.step()
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    assert (after - before).abs().max().item() > 1e-4


def test_mask_statistics_cover_the_cross_attention():
    from stamp.diagnostics import MaskStatistics, generator_grad_norms

    model = _train_one_step("bart", stamp.inject(bart("eager"), mask=MASKS["mlp"], kind="both"))
    stats = MaskStatistics(model)
    stats.start()
    out = _logits("bart", model)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(6))).sum().backward()
    stats.stop()
    summary = stats.summary(generator_grad_norms(model))
    assert len(summary) == 6
    row = summary["model.decoder.layers.1.encoder_attn.stamp"]
    assert row["token_dependence"] > 0 and row["grad_norm_first"] > 0
    assert row["entropy"] != row["entropy_unmasked"]


def test_cached_decoding_reads_the_cross_attention_key_factors_back(monkeypatch):
    """Low-rank cross-attention: while the model reads the encoder's keys back from its cache,
    the key factors g(X_enc) are read back too (computed once per layer and generation); the
    logits stay those of the model without cache (tested above)."""
    from stamp.mask import LowRankMaskGenerator

    calls = []
    key_factor = LowRankMaskGenerator.key_factor

    def spy(self, context):
        calls.append(tuple(context.shape))
        return key_factor(self, context)

    monkeypatch.setattr(LowRankMaskGenerator, "key_factor", spy)
    model = stamp.inject(bart("eager").eval(), mask=MASKS["lowrank"], kind="cross")
    with torch.no_grad():
        cached = _generate("bart", model, use_cache=True)
        n_cached = len(calls)
        plain = _generate("bart", model, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    for a, b in zip(cached.logits, plain.logits, strict=True):
        assert (a - b).abs().max().item() <= 1e-5
    assert n_cached == 2  # one per cross-attention layer, at the first step
    assert len(calls) - n_cached == 2 * 5  # without cache: every layer at every step


def test_global_mask_on_cross_attention_shares_one_generator_and_trains():
    """mask=global on BART's cross-attention: one generator (on the first targeted module), the
    outputs unchanged at injection, moved by one step; mixing self and cross is refused."""
    expected = _logits("bart", _no_dropout(bart("eager")).eval())
    mask = {"type": "global", "generator": "lowrank"}
    model = stamp.inject(_no_dropout(bart("eager")).eval(), mask=mask, kind="cross")
    stamps = injected_modules(model)
    assert len(stamps) == 2 and all(s.cross for s in stamps.values())
    assert sum(s.generator is not None for s in stamps.values()) == 1
    torch.testing.assert_close(_logits("bart", model), expected, rtol=1e-5, atol=1e-5)
    moved = _logits("bart", _train_one_step("bart", model))
    assert (moved - expected).abs().max() > 1e-4
    with pytest.raises(ValueError, match="inject each kind separately"):
        stamp.inject(bart("eager"), mask=mask, kind="both")
