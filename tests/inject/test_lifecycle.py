"""The adapter's life after ``stamp.inject``: ``unload`` gives the original modules back bit for
bit; ``save`` writes a peft-style directory (config, safetensors, model card) that ``load`` reads
back by a path or a Hub id (from a local Hub cache: no network here), ``push_to_hub`` uploads
exactly that directory; a model of another architecture or config is refused with what differs.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors import safe_open
from safetensors.torch import save_file

import stamp
from stamp.injection import injected_modules
from stamp.injection import lifecycle as life
from tests.inject.models import FAMILIES, TINY, run

REPO = "stamp-tests/tiny-bert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _train_one_step(name: str, model: torch.nn.Module) -> None:
    """One SGD step on the STAMP generators only (a fixed random projection of the output)."""
    family = FAMILIES[name]
    stamp.mark_only_stamp_trainable(model)
    out = run(family, model.train())
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out.float() * w).sum().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.eval()


def _trained(name: str = "bert", impl: str = "eager", mask: dict | None = None):
    model = stamp.inject(FAMILIES[name].build(impl).eval(), mask=mask)
    _train_one_step(name, model)
    return model


def _state(model: torch.nn.Module) -> dict:
    """What unload must restore: every module object with its class, the state_dict, hooks."""
    return {
        "modules": [(n, m, type(m)) for n, m in model.named_modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [
            (n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()
        ],
        "configs": {n: m.config for n, m in model.named_modules() if hasattr(m, "config")},
    }


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["bert", "vit", "clip", "llama", "timm_vit"])
def test_unload_gives_back_the_original_bit_for_bit(name, impl):
    family = FAMILIES[name]
    model = family.build(impl).eval()
    with torch.no_grad():
        before = run(family, model)
    original = _state(model)
    stamp.inject(model, mask={"fusion": "add", "init": "kaiming"})  # M != identity: it acts
    _train_one_step(name, model)
    with torch.no_grad():
        assert not torch.equal(run(family, model), before)

    assert stamp.unload(model) is model
    with torch.no_grad():
        assert torch.equal(run(family, model), before)
    now = _state(model)
    assert [(n, type(m)) for n, m, _ in now["modules"]] == [
        (n, cls) for n, _, cls in original["modules"]
    ]
    assert all(
        a is b for (_, a, _), (_, b, _) in zip(now["modules"], original["modules"], strict=True)
    )
    assert list(now["state"]) == list(original["state"])
    assert all(torch.equal(now["state"][k], v) for k, v in original["state"].items())
    assert now["hooks"] == original["hooks"]
    assert all(now["configs"][n] is c for n, c in original["configs"].items())
    assert not injected_modules(model)
    assert not any(life.UNDO_ATTR in m.__dict__ for m in model.modules())
    assert not any("stamp" in vars(m) or "_stamp_hook" in vars(m) for m in model.modules())
    with pytest.raises(ValueError, match="no module of this model was changed by stamp.inject"):
        stamp.unload(model)


def test_unload_two_injections_and_copies():
    family = FAMILIES["bert"]
    model = family.build("eager").eval()
    with torch.no_grad():
        before = run(family, model)
    keys = list(model.state_dict())
    stamp.inject(model, targets=["layer.0"], mask={"init": "kaiming"})
    stamp.inject(model, targets=["layer.1"], mask={"init": "kaiming"})
    clone = copy.deepcopy(model)
    pickled = pickle.loads(pickle.dumps(model))  # what torch.save(model) does
    stamp.unload(clone)  # the copies carry their own record
    stamp.unload(pickled)
    assert len(injected_modules(model)) == 2 and not injected_modules(clone)
    stamp.unload(model)
    with torch.no_grad():
        assert torch.equal(run(family, model), before)
        assert torch.equal(run(family, clone), before)
        assert torch.equal(run(family, pickled), before)
    assert list(model.state_dict()) == keys == list(clone.state_dict())
    assert list(pickled.state_dict()) == keys


def test_unload_after_a_dtype_change_keeps_the_change():
    """Only what inject changed is put back: a later .double() of the base weights stays."""
    family = FAMILIES["timm_vit"]
    model = family.build("eager").eval()
    reference = copy.deepcopy(model).double()
    stamp.inject(model, mask={"init": "kaiming"})
    stamp.unload(model.double())
    assert all(v.dtype == torch.float64 for v in model.state_dict().values())
    x = family.inputs()["x"].double()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_an_injection_that_fails_half_way_leaves_the_model_as_it_was(monkeypatch):
    from stamp.injection import hf

    model = FAMILIES["bert"].build("eager")
    original = _state(model)
    make = hf.make_stamp
    calls = []

    def second_one_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return make(*args, **kwargs)

    monkeypatch.setattr(hf, "make_stamp", second_one_fails)
    with pytest.raises(RuntimeError, match="simulated"):
        stamp.inject(model)
    assert len(calls) == 2  # the first layer had been injected
    now = _state(model)
    assert [(n, type(m)) for n, m, _ in now["modules"]] == [
        (n, cls) for n, _, cls in original["modules"]
    ]
    assert list(now["state"]) == list(original["state"]) and now["hooks"] == original["hooks"]
    assert all(now["configs"][n] is c for n, c in original["configs"].items())


def test_save_writes_a_peft_style_directory_without_pickle(tmp_path):
    model = _trained("bert")
    assert stamp.save(model, tmp_path / "adapter", base_model="bert-base-uncased") == (
        tmp_path / "adapter"
    )
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert files == {"stamp_config.json", "adapter_model.safetensors", "README.md"}
    config = json.loads((tmp_path / "adapter" / "stamp_config.json").read_text())
    assert config["format"] == "stamp-adapter/2"
    assert config["targets"] == list(injected_modules(model))
    assert config["mask"]["type"] == "multilayer" and config["mask"]["fusion"] == "mul"
    own = stamp.stamp_state_dict(model)
    assert config["parameters"] == sum(v.numel() for v in own.values())
    base = config["base_model"]
    assert base["class"] == "transformers.models.bert.modeling_bert.BertModel"
    assert base["name_or_path"] == "bert-base-uncased"
    assert base["config"]["hidden_size"] == 32 and "_attn_implementation" not in base["config"]
    assert set(base["layout"]) == set(model.state_dict()) - set(own)  # base tensors only
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(own)  # STAMP's weights only
        assert all(torch.equal(f.get_tensor(k), v) for k, v in own.items())
    card = ModelCard.load(tmp_path / "adapter" / "README.md")
    assert card.data.library_name == "stamp" and card.data.base_model == "bert-base-uncased"
    assert f"STAMP parameters: {config['parameters']:,}" in card.text
    assert 'stamp.load(model, "<this repository' in card.text


def test_save_load_round_trip_never_unpickles(tmp_path, monkeypatch):
    for name in ("bert", "timm_vit"):
        model = _trained(name, mask={"generator": "lowrank", "rank": 4, "per_head": True})
        stamp.save(model, tmp_path / name)

        def refuse(*args, **kwargs):
            raise AssertionError("the adapter format must not unpickle")

        with monkeypatch.context() as m:
            for target, attr in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
                m.setattr(target, attr, refuse)
            fresh = stamp.load(FAMILIES[name].build("eager").eval(), str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(run(FAMILIES[name], fresh), run(FAMILIES[name], model))
        stamp.unload(fresh)  # a loaded adapter unloads like an injected one
        assert not injected_modules(fresh)


def _hub_cache(adapter: Path, cache: Path, repo: str = REPO) -> Path:
    """``adapter`` placed in a Hugging Face Hub cache as huggingface_hub lays one out."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(adapter, root / "snapshots" / COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_load_by_hub_id_from_the_cache(tmp_path, offline):
    model = _trained("bert")
    cache = _hub_cache(stamp.save(model, tmp_path / "adapter"), tmp_path / "hub")
    for revision in (None, COMMIT):
        fresh = FAMILIES["bert"].build("eager").eval()
        stamp.load(fresh, REPO, cache_dir=cache, revision=revision)
        with torch.no_grad():
            assert torch.equal(run(FAMILIES["bert"], fresh), run(FAMILIES["bert"], model))


def test_load_by_hub_id_from_hf_hub_cache(tmp_path, offline, monkeypatch):
    model = _trained("bert")
    cache = _hub_cache(stamp.save(model, tmp_path / "adapter"), tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # what HF_HUB_CACHE=... sets
    fresh = stamp.load(FAMILIES["bert"].build("eager").eval(), REPO)
    with torch.no_grad():
        assert torch.equal(run(FAMILIES["bert"], fresh), run(FAMILIES["bert"], model))


def test_without_network_the_cache_answers_and_nothing_waits(tmp_path, monkeypatch):
    """Online mode, but the Hub cannot be reached: the look-up has a timeout, then the cache."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    httpx = sys.modules[HTTPError.__module__]  # huggingface_hub's HTTP client (httpx)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    timeouts = []

    def unreachable(self, repo_id, **kwargs):  # what httpx raises when the name does not resolve
        timeouts.append(kwargs.get("timeout"))
        raise httpx.ConnectError(f"cannot reach the Hub for {repo_id} (simulated)")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    model = _trained("bert")
    cache = _hub_cache(stamp.save(model, tmp_path / "adapter"), tmp_path / "hub")
    fresh = stamp.load(FAMILIES["bert"].build("eager").eval(), REPO, cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(run(FAMILIES["bert"], fresh), run(FAMILIES["bert"], model))
    with pytest.raises(FileNotFoundError, match="'someone/else' could not be fetched .*simulated"):
        stamp.load(FAMILIES["bert"].build("eager"), "someone/else", cache_dir=cache)
    assert timeouts == [life.HUB_TIMEOUT, life.HUB_TIMEOUT] and life.HUB_TIMEOUT <= 10


def test_a_missing_hub_id_fails_at_once_naming_it(tmp_path, offline):
    model = FAMILIES["bert"].build("eager")
    with pytest.raises(FileNotFoundError) as err:
        stamp.load(model, "someone/not-cached", cache_dir=tmp_path / "empty")
    message = str(err.value)
    assert "'someone/not-cached' is not a local directory" in message
    assert "Provide the directory stamp.save wrote" in message and "HF_HUB_CACHE" in message
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub"):
        stamp.load(model, "no/such/dir")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        stamp.load(model, tmp_path / "absent")  # a Path is never looked up on the Hub
    assert not injected_modules(model)


class FolderHub:
    """Stands in for ``huggingface_hub.HfApi``: keeps a copy of what would be uploaded."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.root / repo_id)
        return f"commit of {repo_id}"


def test_push_to_hub_uploads_the_saved_directory(tmp_path, offline):
    model = _trained("timm_vit")
    hub = FolderHub(tmp_path / "hub")
    assert stamp.push_to_hub(model, REPO, private=True, api=hub) == f"commit of {REPO}"
    assert [c[:2] for c in hub.calls] == [("create_repo", REPO), ("upload_folder", REPO)]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    uploaded = tmp_path / "hub" / REPO
    assert {p.name for p in uploaded.iterdir()} == {
        "stamp_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    assert f'stamp.load(model, "{REPO}")' in (uploaded / "README.md").read_text()
    cache = _hub_cache(uploaded, tmp_path / "cache")  # as a download would leave it
    fresh = stamp.load(FAMILIES["timm_vit"].build("eager").eval(), REPO, cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(run(FAMILIES["timm_vit"], fresh), run(FAMILIES["timm_vit"], model))
    # the real client, offline: refused at once, naming the repository and the way out
    with pytest.raises(OSError, match=rf"could not upload to the Hub repository '{REPO}'.*"):
        stamp.push_to_hub(model, REPO)


def _bert(**overrides) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = {**TINY, **overrides}
    return BertModel(BertConfig(vocab_size=100, max_position_embeddings=32, **config)).eval()


def test_a_model_of_another_config_is_refused_with_what_differs(tmp_path):
    stamp.save(_trained("bert"), tmp_path)  # hidden 32, 2 layers, vocab 100
    wider = _bert(hidden_size=48)
    keys = list(wider.state_dict())
    with pytest.raises(ValueError) as err:
        stamp.load(wider, tmp_path)
    message = str(err.value)
    assert "saved from transformers.models.bert.modeling_bert.BertModel" in message
    assert "config.hidden_size: saved 32, model 48" in message
    assert "shape of base tensor embeddings.word_embeddings.weight: saved (100, 32)" in message
    # the STAMP tensors that do not fit (the generator reads 48 features here)
    assert re.search(
        r"shape of encoder\.layer\.0\.attention\.self\.stamp\.generator\.\S+: file", message
    )
    assert list(wider.state_dict()) == keys and not injected_modules(wider)  # left as it was
    with pytest.raises(ValueError, match="shape of encoder.layer.0.attention.self.stamp"):
        stamp.load(wider, tmp_path, check_base=False)  # STAMP's own tensors must still fit
    assert not injected_modules(wider)

    deeper = _bert(num_hidden_layers=3)
    with pytest.raises(ValueError, match="only in the model: encoder.layer.2.attention.self"):
        stamp.load(deeper, tmp_path)

    # STAMP fits a BERT with another vocabulary, but it is another base model
    other_vocab = _bert()
    other_vocab.resize_token_embeddings(120)
    with pytest.raises(ValueError, match="word_embeddings.weight: saved \\(100, 32\\), model"):
        stamp.load(other_vocab, tmp_path)
    stamp.load(other_vocab, tmp_path, check_base=False)
    assert len(injected_modules(other_vocab)) == 2

    with pytest.raises(ValueError) as err:
        stamp.load(FAMILIES["vit"].build("eager"), tmp_path)
    message = str(err.value)
    assert "base model class: saved transformers.models.bert.modeling_bert.BertModel" in message
    assert "no supported attention module named encoder.layer.0.attention.self" in message


def test_first_format_directories_still_load(tmp_path, monkeypatch):
    model = _trained("bert")
    config = stamp.injection.api.injection_config(model)
    (tmp_path / "stamp_config.json").write_text(json.dumps({"format": "stamp-inject/1", **config}))
    save_file(dict(stamp.stamp_state_dict(model)), str(tmp_path / "stamp_model.safetensors"))
    fresh = stamp.load(FAMILIES["bert"].build("eager").eval(), tmp_path)
    with torch.no_grad():
        assert torch.equal(run(FAMILIES["bert"], fresh), run(FAMILIES["bert"], model))
    # its torch.save fallback is a pickle: refused without reading it
    (tmp_path / "stamp_model.safetensors").unlink()
    torch.save(stamp.stamp_state_dict(model), tmp_path / "stamp_model.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(ValueError, match="is a torch.save \\(pickle\\) file"):
        stamp.load(FAMILIES["bert"].build("eager"), tmp_path)
