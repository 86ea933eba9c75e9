"""stamp.inject on PyTorch's ``nn.MultiheadAttention``, module by module, against PyTorch's own
forward with the same weights: batch-first and sequence-first, self- and cross-attention (also
with ``kdim`` / ``vdim``), boolean and float key padding and attention masks (2-D and 3-D),
``need_weights`` (averaged and per head), dropout in training, unbatched inputs, ``add_bias_kv``
and ``add_zero_attn``; the mask modes
(multi-layer MLP, per head, low rank) start at the identity and train."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import stamp
from stamp.injection.mha import StampMultiheadAttention

B, NQ, NK, DIM, HEADS = 2, 5, 7, 32, 4


def inputs(batch_first: bool, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query, key, value) in the module's layout; ``key is query`` for self-attention."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, NQ, DIM, generator=g)
    width = 24 if kind == "cross_kdim" else DIM
    ctx = torch.randn(B, NK, width, generator=g)
    val = torch.randn(B, NK, 16 if kind == "cross_kdim" else DIM, generator=g)
    if kind == "self":
        ctx = val = x
    if not batch_first:
        x, ctx, val = (t.transpose(0, 1) for t in (x, ctx, val))
        if kind == "self":
            ctx = val = x
    return x, ctx, val


def mask_cases(kind: str) -> dict[str, dict]:
    """Keyword arguments of every mask form PyTorch accepts (blocked entries keep a free key in
    every row, so no row is all -inf)."""
    nk = NQ if kind == "self" else NK
    g = torch.Generator().manual_seed(2)
    pad = torch.zeros(B, nk, dtype=torch.bool)
    pad[1, nk - 2 :] = True
    blocked = torch.rand(NQ, nk, generator=g) > 0.6
    blocked[:, 0] = False
    blocked3 = torch.rand(B * HEADS, NQ, nk, generator=g) > 0.6
    blocked3[..., 0] = False
    causal = nn.Transformer.generate_square_subsequent_mask(NQ)
    cases = {
        "none": {},
        "pad_bool": {"key_padding_mask": pad},
        "pad_float": {"key_padding_mask": pad.float().masked_fill(pad, -1e4)},
        "mask2d_bool": {"attn_mask": blocked},
        "mask2d_float": {"attn_mask": torch.randn(NQ, nk, generator=g)},
        "mask3d_bool_pad": {"attn_mask": blocked3, "key_padding_mask": pad},
        "mask3d_float": {"attn_mask": torch.randn(B * HEADS, NQ, nk, generator=g)},
    }
    if kind == "self":
        cases["causal"] = {"attn_mask": causal, "is_causal": True}
    return cases


def build(batch_first: bool, kind: str, **kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    extra = {"kdim": 24, "vdim": 16} if kind == "cross_kdim" else {}
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first, **extra, **kwargs)
    with torch.no_grad():  # PyTorch initialises the biases at 0: make them count
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
    return mha


def injected(mha: nn.MultiheadAttention, **kwargs) -> nn.ModuleDict:
    model = nn.ModuleDict({"attn": copy.deepcopy(mha)})
    stamp.inject(model, **{"n_max": NK, **kwargs})
    return model


KINDS = ["self", "cross", "cross_kdim"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_outputs_and_weights_equal_pytorch_at_injection(batch_first, kind):
    reference = build(batch_first, kind).eval()
    model = injected(reference)
    attn = model["attn"]
    assert isinstance(attn, StampMultiheadAttention) and isinstance(attn, nn.MultiheadAttention)
    assert {n for n, _ in attn.named_parameters() if ".stamp." not in f".{n}"} == {
        n for n, _ in reference.named_parameters()
    }  # the original weights, under their own names
    q, k, v = inputs(batch_first, kind)
    for case, kwargs in mask_cases(kind).items():
        for need_weights, average in ((False, True), (True, True), (True, False)):
            with torch.no_grad():
                want = reference(q, k, v, need_weights=need_weights, **kwargs)
                got = attn(
                    q, k, v, need_weights=need_weights, average_attn_weights=average, **kwargs
                )
                if need_weights and not average:
                    want = reference(q, k, v, average_attn_weights=False, **kwargs)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=case)
            if need_weights:
                torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5, msg=case)
            else:
                assert got[1] is None and want[1] is None
    # the masks matter: without them the output differs
    with torch.no_grad():
        masked = attn(q, k, v, **mask_cases(kind)["mask2d_bool"])[0]
        assert (masked - attn(q, k, v)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_dropout_in_training_draws_as_pytorch(kind):
    """Train mode with attention dropout: PyTorch's weights path and STAMP's eager path drop the
    same probabilities under the same seed, so the outputs are equal (dropout is applied)."""
    reference = build(True, kind, dropout=0.3).train()
    model = injected(reference, attention="eager").train()
    q, k, v = inputs(True, kind)
    pad = mask_cases(kind)["pad_bool"]
    torch.manual_seed(7)
    want, _ = reference(q, k, v, need_weights=True, **pad)
    torch.manual_seed(7)
    got, _ = model["attn"](q, k, v, need_weights=True, **pad)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (got - model["attn"].eval()(q, k, v, **pad)[0]).abs().max() > 1e-3


def test_unbatched_inputs_equal_pytorch():
    reference = build(False, "cross").eval()
    model = injected(reference)
    q, k, v = (t[:, 0] for t in inputs(False, "cross"))  # (N, E)
    with torch.no_grad():
        want, want_w = reference(q, k, v)
        got, got_w = model["attn"](q, k, v)
    assert got.shape == (NQ, DIM) and got_w.shape == (NQ, NK)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum()


MODES = {
    "multilayer": {},
    "add": {"fusion": "add"},
    "per_head": {"per_head": True},
    "lowrank": {"generator": "lowrank", "rank": 4},
    "lowrank_per_head": {"generator": "lowrank", "rank": 4, "per_head": True},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_mask_modes_start_at_identity_and_one_step_moves_them(mode, kind):
    reference = build(False, kind).eval()
    model = injected(reference, mask=MODES[mode])
    q, k, v = inputs(False, kind)
    pad = mask_cases(kind)["pad_bool"]
    with torch.no_grad():
        want = reference(q, k, v, need_weights=False, **pad)[0]
        before = model["attn"](q, k, v, need_weights=False, **pad)[0]
    torch.testing.assert_close(before, want, atol=1e-5, rtol=1e-5)
    generator = model["attn"].stamp.generator
    assert (generator.heads is not None) == ("per_head" in mode)
    if mode.startswith("lowrank"):
        # a cross-attention's low-rank generator reads the key tokens (mapped to the model
        # width when kdim differs), as StampCrossAttentionLayer's
        assert (generator.context_in is not None) == (kind == "cross_kdim")
    n = stamp.mark_only_stamp_trainable(model)
    assert n == sum(p.numel() for p in generator.parameters())
    frozen = {k_: t.clone() for k_, t in model.state_dict().items() if ".stamp." not in k_}
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_of(model["attn"](q, k, v, need_weights=False, **pad)[0]).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model["attn"](q, k, v, need_weights=False, **pad)[0]
    assert (after - before).abs().max() > 1e-4
    assert all(torch.equal(model.state_dict()[k_], t) for k_, t in frozen.items())


def test_lowrank_cross_attention_mask_reads_the_key_tokens():
    """M of a cross-attention's low-rank generator changes with the key tokens (the MLP
    generator's does not: its columns are key positions); the stamp tells self from cross by
    the last call."""
    reference = build(True, "cross")
    model = injected(reference, mask={"generator": "lowrank", "init": "kaiming", "rank": 4})
    q, k, v = inputs(True, "cross")
    stamp_ = model["attn"].stamp
    with torch.no_grad():
        stamp_.capture(q, context=k)
        m1 = stamp_.mask_for(q, k)
        stamp_.capture(q, context=k + 1.0)
        m2 = stamp_.mask_for(q, k)
    assert m1.shape == (B, NQ, NK)
    assert (m1 - m2).abs().max() > 1e-3
    model["attn"](q, k, v)
    assert stamp_.cross is True
    model["attn"](q, q, q)
    assert stamp_.cross is False


@pytest.mark.parametrize("backend", ["fused", "sdpa", "eager"])
def test_backends_agree(backend):
    reference = build(True, "cross").eval()
    fusion = "add" if backend == "sdpa" else "mul"
    mask = {"fusion": fusion, "init": "kaiming"}  # a token-dependent M from the start
    torch.manual_seed(3)
    eager = injected(reference, mask=mask, attention="eager")
    torch.manual_seed(3)
    other = injected(reference, mask=mask, attention=backend)
    q, k, v = inputs(True, "cross")
    kwargs = mask_cases("cross")["mask3d_bool_pad"]
    with torch.no_grad():
        want = eager["attn"](q, k, v, need_weights=False, **kwargs)[0]
        got = other["attn"](q, k, v, need_weights=False, **kwargs)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "extra",
    [{"add_bias_kv": True}, {"add_zero_attn": True}, {"add_bias_kv": True, "add_zero_attn": True}],
    ids=["bias_kv", "zero_attn", "both"],
)
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_keys_from_no_token_as_pytorch(kind, extra):
    """add_bias_kv / add_zero_attn append keys after the tokens' (PyTorch's order, masks padded
    with 0 / False): PyTorch's outputs and weights at injection; M covers the token keys only
    (those keep the identity), also for the low-rank generator, which reads the key tokens."""
    reference = build(False, kind, **extra).eval()
    q, k, v = inputs(False, kind)
    cases = mask_cases(kind)
    for mask in (None, {"generator": "lowrank", "rank": 4}):
        model = injected(reference, mask=mask)
        for case in ("none", "pad_bool", "mask3d_bool_pad", "mask2d_float"):
            with torch.no_grad():
                want = reference(q, k, v, **cases[case])
                got = model["attn"](q, k, v, **cases[case])
            n_keys = (NQ if kind == "self" else NK) + len(extra)
            assert got[1].shape == want[1].shape == (B, NQ, n_keys)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=case)
            torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5, msg=case)
    # a trained M changes the token keys' logits, never the extra keys'
    model = injected(reference, mask={"init": "kaiming", "fusion": "add"}, attention="eager")
    with torch.no_grad(), stamp.record_attention(model) as records:
        model["attn"](q, k, v)
    m = records[0]["mask"]
    assert m.shape[-1] == (NQ if kind == "self" else NK) + len(extra)
    assert m[..., -len(extra) :].abs().max() == 0 and m[..., : -len(extra)].abs().max() > 0


def test_checked_as_pytorch():
    with pytest.raises(ValueError, match="pass n_max= or use mask.generator=lowrank"):
        stamp.inject(nn.ModuleDict({"attn": nn.MultiheadAttention(DIM, HEADS)}))
    model = injected(build(True, "self"))
    q, k, v = inputs(True, "self")
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        model["attn"](q, k, v, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        model["attn"](q, k, v, attn_mask=torch.zeros(NQ, NQ + 1))
    longer = torch.randn(B, NK + 2, DIM)  # more keys than the MLP generator has columns
    with pytest.raises(ValueError, match=f"built for n_max={NK}"):
        model["attn"](longer, longer, longer)


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_of_the_original_weights_equal_pytorch(bias):
    """At injection the module is PyTorch's function: the gradients reaching its own weights
    (and the inputs) are PyTorch's too (train mode, no dropout, padding and a float mask)."""
    reference = build(True, "cross", bias=bias).train()
    model = injected(reference, attention="eager").train()
    q, k, v = (t.clone().requires_grad_() for t in inputs(True, "cross"))
    kwargs = {**mask_cases("cross")["pad_float"], **mask_cases("cross")["mask2d_float"]}
    loss_of(reference(q, k, v, need_weights=False, **kwargs)[0]).backward()
    want = {n: p.grad.clone() for n, p in reference.named_parameters()}
    want_q = q.grad.clone()
    q.grad = None
    loss_of(model["attn"](q, k, v, need_weights=False, **kwargs)[0]).backward()
    for name, p in model["attn"].named_parameters():
        if not name.startswith("stamp."):
            torch.testing.assert_close(p.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(q.grad, want_q, atol=1e-5, rtol=1e-4)
    assert model["attn"].stamp.generator.out.weight.grad.abs().max() > 0  # M learns from step 1
