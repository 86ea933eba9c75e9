"""The demo generator's sweep knobs (issue 29) and the four controlled-sweep experiment files.

No training here: the knobs are checked on the generated tensors, the experiment files by
composing them (tests/pipeline/test_configs.py instantiates every experiment file too)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from omegaconf import OmegaConf

from tasks.demo.data import DemoDataModule, make_demo_split
from tests.helpers import compose_cfg

# configs/task/demo.yaml's generator settings (everything else at make_demo_split's defaults)
DEMO = dict(num_classes=8, candidates=3, distractor_ratio=0.8, noise=1.0)
# sha256 of the three splits (64 clips each) at DEMO, measured before the knobs were added
DEFAULT_HASH = "3e8ff488836b84ac74c6f770caff9ef573266c76350febe27b33fac553c6fadf"


def _hash(**overrides) -> str:
    digest = hashlib.sha256()
    for offset in range(3):
        tensors = make_demo_split(64, 1234, split_offset=offset, **{**DEMO, **overrides})
        for key in sorted(k for k in tensors if not k.endswith("_relevance")):  # labels: new
            digest.update(key.encode())
            digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_default_data_is_unchanged_by_the_knobs():
    assert _hash() == DEFAULT_HASH
    explicit = dict(visual_noise=1.0, audio_noise=1.0, visual_rate=1, audio_rate=1)
    assert _hash(**explicit, fixed_positions=False) == DEFAULT_HASH
    assert _hash(fixed_positions=True) != DEFAULT_HASH


def _prototypes(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """make_demo_split's class prototypes and salience directions: p_vis, p_aud, s_vis, s_aud."""
    gen = torch.Generator().manual_seed(seed)
    p_vis, p_aud = torch.randn(8, 32, generator=gen), torch.randn(8, 16, generator=gen)
    return p_vis, p_aud, 2.0 * torch.randn(32, generator=gen), 2.0 * torch.randn(16, generator=gen)


def _events(tensors: dict, stream: str, seed: int = 0) -> torch.Tensor:
    """(n, L) bool: the marked event tokens, found by the salience direction of ``seed``."""
    _, _, s_vis, s_aud = _prototypes(seed)
    salience = s_vis if stream == "visual" else s_aud
    x = tensors[stream]
    # event = prototype + salience + noise: the projection on the salience direction separates
    # them from decoys and noise at noise 0
    return (x @ salience) / salience.norm() ** 2 > 0.5


def test_lengths_follow_the_length_knob():
    t = make_demo_split(200, 0, **DEMO, visual_len=(96, 192), audio_len=(40, 50))
    assert t["visual"].shape[1] == 192 and t["audio"].shape[1] == 50
    valid_v = (~t["visual_pad"]).sum(1)
    valid_a = (~t["audio_pad"]).sum(1)
    assert valid_v.min() >= 96 and valid_v.max() <= 192 and valid_v.unique().numel() > 20
    assert valid_a.min() >= 40 and valid_a.max() <= 50


def test_fixed_positions_put_every_event_in_the_same_slots():
    base = dict(DEMO, noise=0.0, distractor_ratio=0.0)
    fixed = make_demo_split(300, 0, **base, fixed_positions=True)
    for stream in ("visual", "audio"):
        events = _events(fixed, stream)
        assert (events.sum(1) == 3).all()
        # slots (i + 0.5) * 12 / 3 inside the shortest stream: 2, 6, 10 in every clip
        assert events.any(0).nonzero().flatten().tolist() == [2, 6, 10]
    random = _events(make_demo_split(300, 0, **base), "visual")
    assert (random.sum(1) == 3).all() and random.any(0).sum() > 12
    # the label is the class of the event in both streams, in a random one of the three slots
    p_vis, _, s_vis, _ = _prototypes()
    shared_slot = []
    for i in range(300):
        slots = [2, 6, 10]
        events = fixed["visual"][i, slots] - s_vis
        classes = (events[:, None] - p_vis).norm(dim=-1).argmin(1).tolist()
        shared_slot.append(classes.index(int(fixed["label"][i])))
    assert set(shared_slot) == {0, 1, 2}


def test_rate_makes_every_block_span_k_tokens():
    base = dict(DEMO, noise=0.0)
    t = make_demo_split(100, 0, **base, audio_rate=4, audio_len=(48, 96))
    audio, pad = t["audio"], t["audio_pad"]
    assert audio.shape[1] == 96
    assert ((~pad).sum(1) % 4 == 0).all()
    blocks = audio.reshape(100, 24, 4, 16)
    # at noise 0 the 4 tokens of a block are equal (events, decoys and empty noise blocks)
    assert torch.equal(blocks, blocks[:, :, :1].expand_as(blocks))
    events = _events(t, "audio")
    assert (events.sum(1) == 12).all()  # 3 events x 4 tokens
    # with noise, each token of a block gets its own draw
    noisy = make_demo_split(10, 0, **DEMO, audio_rate=4, audio_len=(48, 96))["audio"]
    assert not torch.equal(noisy[:, 0::4], noisy[:, 1::4])


def test_noise_per_modality():
    clean = dict(DEMO, distractor_ratio=1.0)
    quiet = make_demo_split(100, 0, **clean, visual_noise=0.0, audio_noise=3.0)
    # no noise on the visual stream: every valid token is exactly a (marked) prototype
    p_vis = _prototypes()[0]
    visual = quiet["visual"][~quiet["visual_pad"]]
    decoys = visual[(visual[:, None] - p_vis).norm(dim=-1).min(1).values < 1e-5]
    assert len(decoys) == len(visual) - 300  # everything but the 3 events per clip
    loud = make_demo_split(100, 0, **clean, visual_noise=0.0, audio_noise=0.0)
    valid = ~quiet["audio_pad"]
    assert (quiet["audio"] - loud["audio"])[valid].std() == pytest.approx(3.0, rel=0.05)
    assert torch.equal(quiet["visual"], loud["visual"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(audio_rate=4, audio_len=(12, 22)), "multiples of the stream's rate"),
        (dict(audio_rate=8, audio_len=(16, 24)), "candidates <= min / rate"),
    ],
)
def test_bad_knobs_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_demo_split(4, 0, **DEMO, **kwargs)


def test_datamodule_passes_the_knobs(tmp_path):
    dm = DemoDataModule(
        num_train=8, num_val=8, num_test=8, **DEMO, audio_rate=2, audio_len=(12, 24)
    )
    dm.setup()
    assert dm.splits["train"].tensors["audio"].shape == (8, 24, 16)
    assert dm.spec["audio_rate"] == 2


SWEEPS = {
    "demo_length": ("long", {"visual_len": [24, 48], "audio_len": [24, 48]}),
    "demo_modality": ("audio-rate2", {"audio_rate": 2, "audio_len": [24, 48]}),
    "demo_positions": ("fixed", {"fixed_positions": True}),
    "demo_data_size": ("n500", {"num_train": 500}),
}
VARIANTS = "none,global-mlp,global-lowrank,multilayer-mlp,multilayer-lowrank"


@pytest.mark.parametrize("experiment", sorted(SWEEPS))
def test_sweep_experiments_compose(experiment, tmp_path):
    point, data = SWEEPS[experiment]
    default = compose_cfg([f"experiment={experiment}"], tmp_path)
    task = compose_cfg(["task=demo"], tmp_path)
    # the default point is the demo's default data, so its runs are shared by the four sweeps
    assert OmegaConf.to_container(default.data, resolve=True) == OmegaConf.to_container(
        task.data, resolve=True
    )
    params = default.hydra.sweeper.params
    assert params.variant == VARIANTS and params.seed == "0,1,2"
    assert params.point.split(",")[0] == "default" and point in params.point.split(",")
    cfg = compose_cfg(
        [f"experiment={experiment}", f"point={point}", "variant=global-lowrank"], tmp_path
    )
    resolved = OmegaConf.to_container(cfg.data, resolve=True)
    assert {k: resolved[k] for k in data} == data
    assert (cfg.mask.type, cfg.mask.generator, cfg.mask.init) == ("global", "lowrank", "kaiming")
    assert cfg.row == f"{point}/global-lowrank" and cfg.table == experiment
    assert cfg.model.max_audio == resolved["audio_len"][1]


def test_converged_proxy_is_the_proxy_made_small(tmp_path):
    """qvhighlights_proxy_converged reuses qvhighlights_proxy's variants and shrinks the rest."""
    cfg = compose_cfg(["experiment=qvhighlights_proxy_converged", "variant=none"], tmp_path)
    assert cfg.experiment == cfg.table == "qvhighlights_proxy_converged"
    assert cfg.mask.type == "none"
    assert (cfg.model.hidden_dim, cfg.model.num_heads, cfg.trainer.max_epochs) == (32, 4, 200)
    assert cfg.data.annotation_dir.endswith("qvhighlights_proxy_small/annotations")
    assert cfg.hydra.sweeper.params.variant == "none,multilayer-kaiming"
    stamp = compose_cfg(["experiment=qvhighlights_proxy_converged"], tmp_path)
    assert (stamp.mask.type, stamp.mask.init, stamp.mask.depth) == ("multilayer", "kaiming", 32)


def test_relevance_labels_follow_the_rate_and_fixed_positions():
    """The per-token key categories at rate 2 with fixed positions: each event block is two
    label / other-event tokens at the fixed slots, and padding is labelled per token."""
    from tasks.demo.data import KEY_CATEGORIES

    t = make_demo_split(50, 0, **DEMO, audio_rate=2, audio_len=(24, 48), fixed_positions=True)
    codes = {name: i for i, name in enumerate(KEY_CATEGORIES.names)}
    kind, pad = t["audio_relevance"], t["audio_pad"]
    assert kind.shape == pad.shape == t["audio"].shape[:2]
    assert torch.equal(kind == codes["padding"], pad)
    label = (kind == codes["label_event"]).float()
    assert torch.equal(label.sum(1), torch.full((50,), 2.0))  # one event block of 2 tokens
    events = (kind == codes["label_event"]) | (kind == codes["other_event"])
    assert torch.equal(events[:, 0::2], events[:, 1::2])  # whole blocks
    slots = events[:, 0::2].any(0).nonzero().flatten().tolist()
    assert len(slots) == 3  # the same 3 fixed blocks in every clip
