"""Demo classifier: [CLS, visual tokens, audio tokens] through a StampEncoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stamp import AttentionConfig, MaskConfig, StampEncoder


class DemoClassifier(nn.Module):
    """Each stream is projected to ``dim`` and padded to its fixed maximum length, so token j
    always sits at position j of the sequence of N = 1 + max_visual + max_audio tokens (the
    generator's columns keep their meaning across batches). The learned position table fixes N
    whatever ``mask.generator``; with ``lowrank`` the STAMP encoder itself takes any length."""

    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        max_visual: int,
        max_audio: int,
        num_classes: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        mask: MaskConfig | None = None,
        attention: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        self.max_visual, self.max_audio = max_visual, max_audio
        self.n_tokens = 1 + max_visual + max_audio
        self.visual_proj = nn.Linear(visual_dim, dim)
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.n_tokens, dim) * 0.02)
        self.modality = nn.Parameter(torch.randn(3, dim) * 0.02)  # cls, visual, audio
        self.encoder = StampEncoder(
            num_layers,
            dim,
            num_heads,
            ffn_dim,
            n_max=self.n_tokens,
            mask=mask,
            attention=attention,
            dropout=dropout,
            norm_first=True,
            final_norm=True,
        )
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, visual: Tensor, audio: Tensor) -> Tensor:
        for name, x, most in (
            ("visual", visual, self.max_visual),
            ("audio", audio, self.max_audio),
        ):
            if x.shape[1] > most:
                raise ValueError(
                    f"demo: a batch's {name} stream has {x.shape[1]} tokens, more than the "
                    f"model's {most} positions (model.max_{name}); make data.{name}_len[1] at "
                    f"most model.max_{name} (by default model.max_{name} follows it)"
                )
        B = visual.shape[0]
        x = torch.cat(
            [
                self.cls.expand(B, -1, -1) + self.modality[0],
                self.visual_proj(visual) + self.modality[1],
                self.audio_proj(audio) + self.modality[2],
            ],
            dim=1,
        )
        return x + self.pos[:, : x.shape[1]]

    def forward(
        self, visual: Tensor, audio: Tensor, visual_pad: Tensor, audio_pad: Tensor
    ) -> Tensor:
        cls_pad = torch.zeros_like(visual_pad[:, :1])
        padding = torch.cat([cls_pad, visual_pad, audio_pad], dim=1)
        x = self.encoder(self.tokens(visual, audio), key_padding_mask=padding)
        return self.head(x[:, 0])

    def modality_boundaries(self) -> list[int]:
        """Token indices where a new modality starts (for mask plots): visual, audio."""
        return [1, 1 + self.max_visual]
