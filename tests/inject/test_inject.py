"""stamp.inject on tiny random models of every supported family: the function is unchanged at
injection, training moves it, only STAMP trains when asked, save / load round-trips, targets
select layers, and the backends agree."""

from __future__ import annotations

import pytest
import torch

import stamp
from stamp.injection import InjectedStamp, injected_modules
from tests.inject.models import FAMILIES, run

IMPLS = ("eager", "sdpa")


def loss_of(out: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of the output (a squared norm would be constant after a
    final LayerNorm)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    return (out.float() * w).sum()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_outputs_unchanged_at_injection(name, impl):
    family = FAMILIES[name]
    model = family.build(impl).eval()
    with torch.no_grad():
        before = run(family, model)
        stamp.inject(model)
        after = run(family, model)
    stamps = injected_modules(model)
    assert len(stamps) == family.layers
    # eager stays eager; SDPA with a multiplicative mask runs on the fused STAMP kernel
    assert {s.backend.value for s in stamps.values()} == {"eager" if impl == "eager" else "fused"}
    assert (after - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["bert", "clip_text", "llama", "timm_vit"])
@pytest.mark.parametrize(
    "mask",
    [
        {"fusion": "add"},
        {"per_head": True},
        {"generator": "lowrank", "rank": 4},
        {"generator": "lowrank", "rank": 4, "per_head": True, "fusion": "add"},
    ],
    ids=["add", "per_head", "lowrank", "lowrank_per_head_add"],
)
def test_generator_options_start_at_identity(name, mask):
    family = FAMILIES[name]
    model = family.build("sdpa").eval()
    with torch.no_grad():
        before = run(family, model)
        stamp.inject(model, mask=mask)
        after = run(family, model)
    gens = [s.generator for s in injected_modules(model).values()]
    assert len(gens) == 2
    if mask.get("generator") == "lowrank":
        assert all(isinstance(g, stamp.LowRankMaskGenerator) for g in gens)
    assert all((g.heads is not None) == mask.get("per_head", False) for g in gens)
    if mask.get("fusion") == "add":  # SDPA can add M: it stays on SDPA
        assert {s.backend.value for s in injected_modules(model).values()} == {"sdpa"}
    assert (after - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(FAMILIES))
def test_only_stamp_trains_and_one_step_changes_outputs(name):
    family = FAMILIES[name]
    model = stamp.inject(family.build("eager"))
    model.train()
    for m in model.modules():  # no dropout: the comparison below is deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    n_trainable = stamp.mark_only_stamp_trainable(model)
    stamp_ids = {id(p) for s in injected_modules(model).values() for p in s.parameters()}
    assert n_trainable == sum(p.numel() for p in model.parameters() if id(p) in stamp_ids) > 0
    assert all(p.requires_grad == (id(p) in stamp_ids) for p in model.parameters())
    frozen = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k not in stamp.stamp_state_dict(model)
    }
    with torch.no_grad():
        before = run(family, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = loss_of(run(family, model))
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = run(family, model)
    assert (after - before).abs().max().item() > 1e-4  # far above the injection tolerance
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items())


def _trained(name: str, mask=None):
    """An injected model after one step on every STAMP parameter (so M is not the identity)."""
    family = FAMILIES[name]
    model = stamp.inject(family.build("eager"), mask=mask)
    stamp.mark_only_stamp_trainable(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_of(run(family, model)).backward()
    opt.step()
    return model.eval()


LOWRANK_PER_HEAD = {"generator": "lowrank", "rank": 4, "per_head": True, "fusion": "add"}


@pytest.mark.parametrize(
    "name, mask",
    [
        ("bert", None),
        ("clip", None),
        ("llama", None),
        ("timm_vit", None),
        ("llama", LOWRANK_PER_HEAD),
    ],
)
def test_save_load_round_trip(name, mask, tmp_path):
    family = FAMILIES[name]
    model = _trained(name, mask)
    path = stamp.save(model, tmp_path / "adapter")
    assert (path / "adapter_model.safetensors").exists() and (path / "stamp_config.json").exists()
    fresh = family.build("eager").eval()  # the same base weights, no STAMP
    stamp.load(fresh, tmp_path / "adapter")  # injects with the saved config, then loads
    with torch.no_grad():
        assert torch.equal(run(family, fresh), run(family, model))
    # an injected model loads too
    again = stamp.inject(family.build("eager").eval(), mask=mask)
    stamp.load(again, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(run(family, again), run(family, model))


def test_load_names_what_differs(tmp_path):
    stamp.save(_trained("bert"), tmp_path)
    other = stamp.inject(FAMILIES["bert"].build("eager"), mask={"fusion": "add"})
    with pytest.raises(ValueError, match="mask.fusion: saved 'mul', model 'add'"):
        stamp.load(other, tmp_path)
    partial = stamp.inject(FAMILIES["bert"].build("eager"), targets=["layer.0"])
    with pytest.raises(ValueError, match="targets: only saved"):
        stamp.load(partial, tmp_path)
    with pytest.raises(ValueError, match="no supported attention module named"):
        stamp.load(FAMILIES["vit"].build("eager"), tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model"):
        stamp.load(FAMILIES["bert"].build("eager"), tmp_path)


def test_targets_select_layers():
    bert = stamp.inject(FAMILIES["bert"].build("sdpa"), targets=["layer.1"])
    assert list(injected_modules(bert)) == ["encoder.layer.1.attention.self"]
    untouched = bert.encoder.layer[0].attention.self
    assert untouched.config is bert.config and not hasattr(untouched, "stamp")

    llama = stamp.inject(
        FAMILIES["llama"].build("sdpa"), targets=lambda n, m: n.endswith("0.self_attn")
    )
    assert list(injected_modules(llama)) == ["model.layers.0.self_attn"]

    clip = stamp.inject(FAMILIES["clip"].build("sdpa"), targets="text_model")
    assert len(injected_modules(clip)) == 2
    assert all(n.startswith("text_model.") for n in injected_modules(clip))
    assert sum(isinstance(m, stamp.MaskGenerator) for m in clip.modules()) == 2

    with pytest.raises(ValueError, match="matches no supported attention module"):
        stamp.inject(FAMILIES["bert"].build("sdpa"), targets=["layer.7"])
    with pytest.raises(ValueError, match="already injected"):
        stamp.inject(bert, targets=["layer.1"])


def test_default_n_max_is_the_models_longest_sequence():
    n_max = {
        n: s.n_max
        for n, s in injected_modules(stamp.inject(FAMILIES["clip"].build("eager"))).items()
    }
    assert n_max["text_model.encoder.layers.0.self_attn"] == 16  # max_position_embeddings
    assert n_max["vision_model.encoder.layers.0.self_attn"] == 17  # (16/4)^2 patches + [CLS]
    timm = stamp.inject(FAMILIES["timm_vit"].build("eager"))
    assert {s.n_max for s in injected_modules(timm).values()} == {17}
    assert {
        s.n_max
        for s in injected_modules(stamp.inject(FAMILIES["bert"].build("eager"), n_max=20)).values()
    } == {20}


@pytest.mark.parametrize("name", ["bert", "llama", "timm_vit"])
def test_eager_and_fused_backends_agree(name):
    family = FAMILIES[name]
    mask = {"init": "kaiming"}  # a token-dependent M, not the identity
    outs, grads = [], []
    for backend in ("eager", "fused"):
        torch.manual_seed(3)
        model = stamp.inject(family.build("eager").eval(), mask=mask, attention=backend)
        assert {s.backend.value for s in injected_modules(model).values()} == {backend}
        out = run(family, model)
        loss_of(out).backward()
        outs.append(out.detach())
        grads.append(
            torch.cat(
                [
                    s.generator.first_linear.weight.grad.flatten()
                    for s in injected_modules(model).values()
                ]
            )
        )
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_sdpa_cannot_multiply_and_sparse_is_refused():
    with pytest.raises(ValueError, match="sdpa cannot fuse a multiplicative mask"):
        stamp.inject(FAMILIES["bert"].build("sdpa"), attention="sdpa")
    with pytest.raises(ValueError, match=r"stamp.inject supports mask types \['none', 'global'"):
        stamp.inject(FAMILIES["bert"].build("sdpa"), mask={"type": "sparse"})


def test_injected_modules_record_for_diagnostics():
    model = _trained("bert")
    with stamp.record_attention(model) as records:
        run(FAMILIES["bert"], model)
    assert [r["name"] for r in records] == [
        f"encoder.layer.{i}.attention.self.stamp" for i in (0, 1)
    ]
    rec = records[0]
    assert rec["attn"].shape == (2, 4, 10, 10) and rec["mask"].shape == (2, 10, 10)
    torch.testing.assert_close(rec["attn"].sum(-1), torch.ones(2, 4, 10))
    assert isinstance(dict(model.named_modules())[records[0]["name"]], InjectedStamp)


def test_mask_statistics_on_an_injected_model():
    from stamp.diagnostics import MaskStatistics, generator_grad_norms

    model = _trained("llama", mask={"generator": "lowrank", "rank": 4})
    stats = MaskStatistics(model)
    stats.start()
    loss_of(run(FAMILIES["llama"], model)).backward()
    stats.stop()
    summary = stats.summary(generator_grad_norms(model))
    assert list(summary) == [f"model.layers.{i}.self_attn.stamp" for i in (0, 1)]
    row = summary["model.layers.0.self_attn.stamp"]
    assert row["token_dependence"] > 0 and row["grad_norm_first"] > 0
    assert row["entropy"] != row["entropy_unmasked"]


def test_gradient_checkpointing_deepcopy_and_pickle():
    import copy
    import io

    family = FAMILIES["llama"]
    grads = []
    for checkpointing in (False, True):
        model = stamp.inject(
            family.build("eager"), mask={"init": "kaiming", "generator": "lowrank"}
        )
        if checkpointing:  # HF re-runs each layer in the backward: the pre-hook runs again
            model.activation_checkpointing_enable()
        model.train()
        loss_of(run(family, model)).backward()
        grads.append(
            torch.cat(
                [
                    s.generator.first_linear.weight.grad.flatten()
                    for s in injected_modules(model).values()
                ]
            )
        )
    assert grads[0].norm() > 0 and torch.equal(grads[0], grads[1])

    model = _trained("bert")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    with torch.no_grad():
        expected = run(FAMILIES["bert"], model)
        for clone in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
            assert len(injected_modules(clone)) == 2
            assert torch.equal(run(FAMILIES["bert"], clone), expected)


@pytest.mark.slow
def test_flex_backend_agrees_with_eager():  # compiles flex attention on CPU (~20 s)
    family = FAMILIES["bert"]
    outs = []
    for backend in ("eager", "flex"):
        model = stamp.inject(
            family.build("eager").eval(), mask={"init": "kaiming"}, attention=backend
        )
        with torch.no_grad():
            outs.append(run(family, model))
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5


def test_a_models_own_scaling_is_kept():
    family = FAMILIES["llama"]
    model = family.build("sdpa").eval()
    for layer in model.model.layers:
        layer.self_attn.scaling = 0.3  # not head_dim ** -0.5 = 0.354
    with torch.no_grad():
        before = run(family, model)
        stamp.inject(model)
        after = run(family, model)
    assert (after - before).abs().max().item() <= 1e-5


def test_hf_init_weights_leaves_the_generators_alone():
    family = FAMILIES["bert"]
    model = family.build("eager").eval()
    with torch.no_grad():
        before = run(family, model)
        stamp.inject(model)
        model.init_weights()  # would draw the generators' Linears with BERT's N(0, 0.02)
        assert (run(family, model) - before).abs().max().item() <= 1e-5
    for s in injected_modules(model).values():
        assert s.generator.out.weight.abs().max() == 0 and torch.all(s.generator.out.bias == 1)


def test_sliding_window_model_works_but_not_its_truncated_cache():
    from transformers import DynamicCache, MistralConfig, MistralForCausalLM

    from tests.inject.models import TINY

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=100, num_key_value_heads=2, sliding_window=4, attn_implementation="sdpa", **TINY
    )
    model = MistralForCausalLM(cfg).eval()
    ids = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        stamp.inject(model)  # the window is in the mask Mistral builds
        assert (model(input_ids=ids).logits - before).abs().max().item() <= 1e-5
        cache = DynamicCache(config=cfg)  # keeps only the last keys of the window
        model(input_ids=ids[:, :6], cache=cache, use_cache=True)
        with pytest.raises(NotImplementedError, match="sliding-window"):
            model(input_ids=ids[:, 6:7], cache=cache, use_cache=True)


def test_unsupported_implementation_and_attention_probabilities():
    model = FAMILIES["bert"].build("eager")
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' is not supported"):
        stamp.inject(model)
    model = stamp.inject(FAMILIES["bert"].build("eager").eval())
    with torch.no_grad():
        out = model(**FAMILIES["bert"].inputs(), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 10))
