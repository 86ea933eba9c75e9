r"""Check these ports against the official classes, on the same weights.

    python -m tasks.ave.models.official_check --official-dir ~/src/MA-AVT

``--official-dir`` is a local clone of github.com/enyac-group/MA-AVT (nothing of it is copied
here). Its ``models/all_nets.py`` is imported as is; when ``einops`` / ``ipdb`` (its imports) are
not installed, minimal stand-ins cover the few ``repeat`` / ``rearrange`` patterns it uses, and
``timm.create_model`` is called with ``pretrained=False`` (random weights: no download). Each
official class is built with the flags of its training command (MA-AVT: the README's; LAVISH:
LAVISH's AVE command), its ``state_dict`` is loaded into the port with
``load_official_state_dict``, and the largest absolute differences of the logits and losses are
printed. LAVISH's zero-initialised gates and BatchNorm statistics are randomised first so the
adapters contribute; MBT is compared at T = 1 (the official class averages its [CLS] over the
segments). Exit status 1 when a difference exceeds ``--tol``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from tasks.ave.models import build_model

MA_AVT_FLAGS = {  # README: --LSA --bg_cls --unimodal_token --multimodal_token ...
    "vis_encoder_type": "vit",
    "pretrained": False,
    "ngpu": 1,
    "rank": 0,
    "num_class": 29,
    "contrastive": "blockwise_sep",
    "LSA": True,
    "lavish_adapter": False,
    "unimodal_token": True,
    "multimodal_token": True,
    "layerwise_token": None,
    "layerwise_attn": None,
    "n_audio_tokens": 5,
    "n_vis_tokens": 5,
    "n_shared_tokens": 5,
    "bg_cls": True,
    "bg_label": 28,
    "grad_mod": False,
    # LAVISH's AVE command
    "Adapter_downsample": 8,
    "num_conv_group": 2,
    "is_bn": 1,
    "is_gate": 1,
    "is_multimodal": 1,
    "is_before_layernorm": 1,
    "is_post_layernorm": 1,
    "num_tokens": 2,
    "start_tune_layers": 0,
}


def _einops_stand_in() -> types.ModuleType:
    """``repeat`` / ``rearrange`` for the patterns of the official models only."""

    def repeat(x: Tensor, pattern: str, **sizes: int) -> Tensor:
        p = " ".join(pattern.split())
        if p == "b t len dim -> b t c len dim":
            return x.unsqueeze(2).repeat(1, 1, sizes["c"], 1, 1)
        if p in ("len dim -> b len dim", "t d -> b t d"):
            return x.unsqueeze(0).repeat(sizes["b"], 1, 1)
        raise NotImplementedError(f"einops stand-in: {pattern!r}")

    def rearrange(x: Tensor, pattern: str, **sizes: int) -> Tensor:
        p = " ".join(pattern.split())
        if p in ("b t c w h -> (b t) c w h", "b t p -> (b t) p"):
            return x.flatten(0, 1)
        raise NotImplementedError(f"einops stand-in: {pattern!r}")

    module = types.ModuleType("einops")
    module.repeat, module.rearrange = repeat, rearrange
    return module


def _ipdb_stand_in() -> types.ModuleType:
    module = types.ModuleType("ipdb")
    module.set_trace = lambda *args, **kwargs: None
    return module


@contextlib.contextmanager
def official_models(official_dir: Path) -> Iterator[types.ModuleType]:
    """The clone's ``models.all_nets`` module, importable offline; undone on exit."""
    if not (official_dir / "models" / "all_nets.py").is_file():
        raise FileNotFoundError(f"{official_dir}/models/all_nets.py not found (a MA-AVT clone?)")
    create = timm.create_model
    stand_ins = {}
    for name, make in (("einops", _einops_stand_in), ("ipdb", _ipdb_stand_in)):
        try:
            __import__(name)
        except ImportError:
            stand_ins[name] = make()
    sys.modules.update(stand_ins)
    sys.path.insert(0, str(official_dir))
    timm.create_model = lambda name, pretrained=False, **kw: create(name, pretrained=False, **kw)
    own_group = not dist.is_initialized()
    if own_group:  # calc_cnt_loss all-gathers over the process group
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import models.all_nets as all_nets

            yield all_nets
    finally:
        timm.create_model = create
        sys.path.remove(str(official_dir))
        for name in [*stand_ins, *(m for m in sys.modules if m.split(".")[0] == "models")]:
            sys.modules.pop(name, None)
        if own_group:
            dist.destroy_process_group()


def _randomise_gates_and_bn(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def compare(
    official_dir: str | Path, vit: str = "tiny", batch: int = 2, segments: int = 3, seed: int = 0
) -> dict[str, float]:
    """Largest |official - port| of each output, name -> value (see the module doc)."""
    torch.manual_seed(seed)
    audio, frames = (
        torch.randn(batch, segments, 224, 224),
        torch.randn(batch, segments, 3, 224, 224),
    )
    classes = torch.randint(0, 29, (batch, segments))
    classes[0, 0] = 28  # at least one background and one event segment
    classes[-1, -1] = 3
    labels = F.one_hot(classes, 29).float()
    flags = types.SimpleNamespace(**MA_AVT_FLAGS, vit_type=vit)
    diffs: dict[str, float] = {}
    with official_models(Path(official_dir)) as nets, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layerwise in (None, "common"):
            flags.layerwise_token = layerwise
            official = nets.MA_AVT(flags).eval()
            port = build_model({"name": "ma_avt", "vit": vit, "layerwise_token": layerwise})
            port.eval().load_official_state_dict(official.state_dict())
            with torch.no_grad():
                ref = official.forward_vit(audio, frames, classes)
                out = port(audio, frames)
                losses = port.losses(out, labels)
            tag = f"ma_avt[layerwise_token={layerwise}]"
            diffs[f"{tag} p_fg"] = _max_diff(ref["p_fg"], out.fg_logits)
            diffs[f"{tag} p_bg"] = _max_diff(ref["p_bg"], out.bg_logits)
            for key, ours in (("fg", "fg"), ("bg", "bg"), ("cnt", "contrastive"), ("", "total")):
                diffs[f"{tag} {key or 'total'} loss"] = _max_diff(
                    ref[f"{key}_loss" if key else "loss"], losses[ours]
                )
        flags.layerwise_token = None
        official = nets.LAVISH(flags)
        _randomise_gates_and_bn(official)
        port = build_model({"name": "lavish", "vit": vit})
        port.load_official_state_dict(official.state_dict())
        for mode in ("eval", "train"):
            official.train(mode == "train")
            port.train(mode == "train")
            with torch.no_grad():
                ref = official(audio, frames, classes)
                ours = port(audio, frames).logits.reshape(-1, 29)
            diffs[f"lavish[{mode}] logits"] = _max_diff(ref, ours)
        official = nets.MBT(flags).eval()
        port = build_model({"name": "mbt", "vit": vit}).eval()
        port.load_official_state_dict(official.state_dict())
        with torch.no_grad():
            ref = official(audio[:, :1], frames[:, :1], classes)
            ours = port(audio[:, :1], frames[:, :1]).logits.reshape(batch, 29)
        diffs["mbt[T=1] logits"] = _max_diff(ref, ours)
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", type=Path, required=True, help="MA-AVT clone")
    parser.add_argument("--vit", default="tiny", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    diffs = compare(args.official_dir, vit=args.vit, segments=args.segments)
    for name, value in diffs.items():
        print(f"{name:<44} max |official - port| = {value:.2e}")
    worst = max(diffs.values())
    print(f"worst {worst:.2e} (tolerance {args.tol:.0e})")
    return int(worst > args.tol)


if __name__ == "__main__":
    raise SystemExit(main())
