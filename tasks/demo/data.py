"""Synthetic audiovisual token task, generated deterministically from a seed.

Audio-visual correspondence among distractors. Each clip has a visual and an audio token stream
of random lengths. Each stream holds ``candidates`` marked event tokens (an event-class
prototype plus a shared "salience" direction) at random positions; exactly one event class is
marked in *both* streams, and it is the label. Every other token is a distractor: a decoy (the
prototype of a random class, unmarked) with probability ``distractor_ratio``, noise otherwise.
One modality alone gets at most 1/candidates of the clips right; the answer is the relation
across the two modalities, hidden among up to ``visual_len[1] + audio_len[1]`` tokens.

Every token also gets its kind (``visual_relevance`` / ``audio_relevance``, codes of
``KEY_CATEGORIES``): the event of the label's class, another event, decoy, noise, padding. A
batch lays them out as the classifier's keys (``DemoBatch.key_relevance``) for the mask
diagnostics (``stamp.diagnostics``: where the mask puts its weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stamp.diagnostics import KeyCategories
from tasks.common.runtime.data import EpochShuffleSampler, current_epoch

# What a demo key is (code i = names[i]): the [CLS] token, the event of the label's class (marked
# in both streams), an event of another class (marked in one stream), a decoy, noise, padding.
# The events are what the answer needs (the label is the class marked in both streams).
KEY_CATEGORIES = KeyCategories(
    names=("cls", "label_event", "other_event", "decoy", "noise", "padding"),
    relevant=("label_event", "other_event"),
    irrelevant=("decoy", "noise"),
)
CLS, LABEL_EVENT, OTHER_EVENT, DECOY, NOISE, PADDING = range(len(KEY_CATEGORIES.names))


@dataclass
class DemoBatch:
    visual: Tensor  # (B, max_visual, Dv), zero-padded
    audio: Tensor  # (B, max_audio, Da)
    visual_pad: Tensor  # (B, max_visual) bool, True = padding
    audio_pad: Tensor  # (B, max_audio)
    label: Tensor  # (B,)
    visual_relevance: Tensor | None = None  # (B, max_visual) long, codes of KEY_CATEGORIES
    audio_relevance: Tensor | None = None  # (B, max_audio)

    @property
    def key_relevance(self) -> Tensor | None:
        """(B, 1 + max_visual + max_audio) codes in ``DemoClassifier``'s key order: [CLS],
        the visual stream, the audio stream. Every encoder layer attends over that one joint
        sequence, so both streams' keys are labelled in every layer."""
        if self.visual_relevance is None or self.audio_relevance is None:
            return None
        cls = self.visual_relevance.new_full((len(self.label), 1), CLS)
        return torch.cat([cls, self.visual_relevance, self.audio_relevance], dim=1)


def _stream(
    gen: torch.Generator,
    classes: Tensor,
    length: tuple[int, int],
    prototypes: Tensor,
    salience: Tensor,
    distractor_ratio: float,
    noise: float,
    rate: int = 1,
    fixed_positions: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Streams padded to length[1] with the marked events ``classes`` (n, K), the label's
    class first: tokens, padding, the kind of each token (``KEY_CATEGORIES`` codes).

    The content is drawn per *block* of ``rate`` tokens (an event, a decoy or noise spans
    ``rate`` consecutive tokens, each with its own noise), so a stream at rate k carries the
    same content as one at rate 1 at k times the token granularity. With ``fixed_positions``
    the K events sit at the same K evenly spaced blocks of every clip (inside the shortest
    length), in a random order per clip; the draws are the same as with random positions."""
    (n, k), (num_classes, dim) = classes.shape, prototypes.shape
    lo, hi = length[0] // rate, length[1] // rate  # in blocks
    lengths = torch.randint(lo, hi + 1, (n,), generator=gen)
    tokens = noise * torch.randn(n, hi * rate, dim, generator=gen)
    decoy = torch.rand(n, hi, generator=gen) < distractor_ratio
    decoy_class = torch.randint(0, num_classes, (n, hi), generator=gen)
    decoy_tokens = decoy.unsqueeze(-1) * prototypes[decoy_class]
    tokens = tokens + decoy_tokens.repeat_interleave(rate, dim=1)
    # K distinct blocks inside each stream's valid length
    scores = torch.rand(n, hi, generator=gen).masked_fill(
        torch.arange(hi)[None, :] >= lengths[:, None], 2.0
    )
    if fixed_positions:
        slots = ((torch.arange(k) + 0.5) * lo / k).long()
        # scores[:, :K] are K i.i.d. uniforms (K <= lo): their order is a random permutation
        positions = slots[scores[:, :k].argsort(dim=1)]
    else:
        positions = scores.argsort(dim=1)[:, :k]
    events = prototypes[classes] + salience
    events = events.unsqueeze(2) + noise * torch.randn(n, k, rate, dim, generator=gen)
    token_positions = (positions.unsqueeze(-1) * rate + torch.arange(rate)).reshape(n, k * rate)
    rows = torch.arange(n)[:, None].expand(n, k * rate)
    tokens[rows, token_positions] = events.reshape(n, k * rate, dim)
    pad = torch.arange(hi * rate)[None, :] >= (lengths * rate)[:, None]
    kind = torch.where(decoy, DECOY, NOISE)  # per block, then per token
    block_rows = torch.arange(n)[:, None].expand(n, k)
    kind[block_rows, positions] = OTHER_EVENT
    kind[block_rows[:, 0], positions[:, 0]] = LABEL_EVENT  # classes[:, 0] is the label
    kind = kind.repeat_interleave(rate, dim=1).masked_fill(pad, PADDING)
    return tokens.masked_fill(pad.unsqueeze(-1), 0.0), pad, kind


def make_demo_split(
    n: int,
    seed: int,
    num_classes: int = 6,
    candidates: int = 2,
    visual_len: tuple[int, int] = (12, 24),
    audio_len: tuple[int, int] = (12, 24),
    visual_dim: int = 32,
    audio_dim: int = 16,
    distractor_ratio: float = 0.5,
    noise: float = 0.5,
    split_offset: int = 0,
    visual_noise: float | None = None,
    audio_noise: float | None = None,
    visual_rate: int = 1,
    audio_rate: int = 1,
    fixed_positions: bool = False,
) -> dict[str, Tensor]:
    """Prototypes come from ``seed``; samples from ``seed`` and ``split_offset``.

    The knobs of the controlled sweeps (docs/stamp_diagnostics.md "Controlled sweeps"; the
    defaults give the original demo bit for bit): ``visual_len`` / ``audio_len`` set the number
    of tokens (and so of distractors) per stream; ``visual_noise`` / ``audio_noise`` override
    ``noise`` per modality; ``visual_rate`` / ``audio_rate`` = k make every event, decoy and
    noise block span k tokens of that stream (lengths are in tokens and must be multiples of k);
    ``fixed_positions`` puts the events at the same positions in every clip.
    """
    if not 0.0 <= distractor_ratio <= 1.0:
        raise ValueError(f"distractor_ratio must be in [0, 1], got {distractor_ratio}")
    if candidates < 1 or num_classes < 2 * candidates - 1:
        raise ValueError(
            f"need candidates >= 1 and num_classes >= 2 * candidates - 1 "
            f"(got candidates={candidates}, num_classes={num_classes})"
        )
    for name, (lo, hi), rate in (
        ("visual_len", visual_len, visual_rate),
        ("audio_len", audio_len, audio_rate),
    ):
        if rate < 1 or lo % rate or hi % rate:
            raise ValueError(
                f"{name} {[lo, hi]} must be multiples of the stream's rate (got rate {rate})"
            )
        if not candidates <= lo // rate <= hi // rate:
            raise ValueError(
                f"{name} must be [min, max] with candidates <= min / rate <= max / rate, "
                f"got {[lo, hi]} at rate {rate}"
            )
    proto_gen = torch.Generator().manual_seed(seed)
    p_vis = torch.randn(num_classes, visual_dim, generator=proto_gen)
    p_aud = torch.randn(num_classes, audio_dim, generator=proto_gen)
    s_vis = 2.0 * torch.randn(visual_dim, generator=proto_gen)
    s_aud = 2.0 * torch.randn(audio_dim, generator=proto_gen)
    gen = torch.Generator().manual_seed(seed + 7919 * (split_offset + 1))
    # per clip: a random class order; [0] is the shared event, then K-1 visual-only and K-1
    # audio-only events, all distinct
    order = torch.rand(n, num_classes, generator=gen).argsort(dim=1)
    label = order[:, 0]
    k = candidates
    v_classes = torch.cat([order[:, :1], order[:, 1:k]], dim=1)
    a_classes = torch.cat([order[:, :1], order[:, k : 2 * k - 1]], dim=1)
    visual, visual_pad, visual_kind = _stream(
        gen,
        v_classes,
        tuple(visual_len),
        p_vis,
        s_vis,
        distractor_ratio,
        noise if visual_noise is None else visual_noise,
        visual_rate,
        fixed_positions,
    )
    audio, audio_pad, audio_kind = _stream(
        gen,
        a_classes,
        tuple(audio_len),
        p_aud,
        s_aud,
        distractor_ratio,
        noise if audio_noise is None else audio_noise,
        audio_rate,
        fixed_positions,
    )
    return {
        "visual": visual,
        "audio": audio,
        "visual_pad": visual_pad,
        "audio_pad": audio_pad,
        "label": label,
        "visual_relevance": visual_kind,
        "audio_relevance": audio_kind,
    }


class DemoDataset(Dataset):
    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def collate(items: list[dict[str, Tensor]]) -> DemoBatch:
    return DemoBatch(**{k: torch.stack([it[k] for it in items]) for k in items[0]})


class DemoDataModule(L.LightningDataModule):
    key_relevance_categories = KEY_CATEGORIES  # what DemoBatch.key_relevance's codes mean

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 1000,
        num_classes: int = 6,
        candidates: int = 2,
        visual_len: tuple[int, int] = (12, 24),
        audio_len: tuple[int, int] = (12, 24),
        visual_dim: int = 32,
        audio_dim: int = 16,
        distractor_ratio: float = 0.5,
        noise: float = 0.5,
        visual_noise: float | None = None,
        audio_noise: float | None = None,
        visual_rate: int = 1,
        audio_rate: int = 1,
        fixed_positions: bool = False,
        seed: int = 1234,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.spec = dict(
            num_classes=num_classes,
            candidates=candidates,
            visual_len=tuple(visual_len),
            audio_len=tuple(audio_len),
            visual_dim=visual_dim,
            audio_dim=audio_dim,
            distractor_ratio=distractor_ratio,
            noise=noise,
            visual_noise=visual_noise,
            audio_noise=audio_noise,
            visual_rate=visual_rate,
            audio_rate=audio_rate,
            fixed_positions=fixed_positions,
        )
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.splits: dict[str, DemoDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for offset, (split, n) in enumerate(self.sizes.items()):
            if split not in self.splits:
                tensors = make_demo_split(n, self.seed, split_offset=offset, **self.spec)
                self.splits[split] = DemoDataset(tensors)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed, epoch=current_epoch(self))
            if shuffle
            else None,
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
