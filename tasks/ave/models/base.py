"""What the three AVE models share: their output, the official trainability rule and the
supplement's parameter counting."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from stamp import mask_modules


@dataclass
class AVEOutput:
    """One forward pass over B videos of T one-second segments.

    ``logits`` (B, T, C): segment scores whose argmax is the model's official prediction
    (for MA-AVT with the background token: class ``bg_label`` when sigmoid(bg) > 0.5, else the
    foreground argmax). The rest feeds ``model.losses``: ``fg_logits`` (B*T, C), ``bg_logits``
    (B*T,), ``shared`` the per-block (audio, visual) mean of MA-AVT's shared tokens, each
    (B*T, D), in block order.
    """

    logits: Tensor
    fg_logits: Tensor | None = None
    bg_logits: Tensor | None = None
    shared: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class AVEModel(nn.Module):
    """Base of MA-AVT, LAVISH and MBT.

    Trainability follows the official training scripts (``train_avm_vit.py`` /
    ``train_baseline_vit.py``): a parameter whose name contains ``cls_token`` trains (the frozen
    ViT's own [CLS] token included), one inside a frozen backbone (``ViT``, ``AViT``, ``IViT``)
    does not, everything else does. STAMP generators inside the backbone train too.
    Counting follows the supplement: the contrastive projectors, discarded at test time, are not
    counted in ``total`` or ``trainable`` (they are reported as ``projector``).
    """

    frozen_prefixes: tuple[str, ...] = ("ViT.",)
    projector_prefixes: tuple[str, ...] = ()
    full_tune: bool = False

    def _mask_parameter_ids(self) -> set[int]:
        return {id(p) for m in mask_modules(self) for p in m.parameters()}

    def freeze(self) -> None:
        """Set ``requires_grad`` by the official rule (called at the end of ``__init__``)."""
        mask_ids = self._mask_parameter_ids()  # STAMP's generators train inside the ViT too
        for name, p in self.named_parameters():
            trainable = self.full_tune or "cls_token" in name or id(p) in mask_ids
            p.requires_grad_(trainable or not name.startswith(self.frozen_prefixes))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the official optimiser updates (projectors included: they train)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_report(self) -> dict[str, int]:
        """``total`` / ``trainable`` as the supplement counts them (projectors left out), and
        ``frozen``, ``projector`` (contrastive heads, training only), ``stamp`` (generators)."""
        total = trainable = projector = stamp = 0
        mask_ids = self._mask_parameter_ids()
        for name, p in self.named_parameters():
            n = p.numel()
            if name.startswith(self.projector_prefixes):
                projector += n
                continue
            total += n
            trainable += n if p.requires_grad else 0
            stamp += n if id(p) in mask_ids else 0
        return {
            "total": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "projector": projector,
            "stamp": stamp,
        }

    def load_official_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a state dict of the official class (``checkpoint['state_dict']`` of
        ``train_avm_vit.py``): the parameter names are the same; DDP's ``module.`` prefix and
        MA-AVT's never-used ``logit_scale`` are dropped, everything else must match exactly."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("logit_scale")}
        result = self.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"official state dict does not fit {type(self).__name__}: missing "
                f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}"
            )

    def losses(self, out: AVEOutput, labels: Tensor) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError


def as_three_channels(audio: Tensor) -> Tensor:
    """(B, T, H, W) fbank -> (B*T, 3, H, W): the official ``repeat(audio, 'b t len dim -> b t c
    len dim', c=3)``, the 1-channel spectrogram copied into the patch embedding's 3 channels."""
    return audio.flatten(0, 1).unsqueeze(1).expand(-1, 3, -1, -1)
