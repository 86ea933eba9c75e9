"""LAVISH (Lin et al., CVPR 2023) as ``LAVISH`` / ``VisualAdapter`` in enyac-group/MA-AVT
``models/all_nets.py`` (the same adapter as GenjiB/LAVISH ``AVE/nets/net_trans.py``), with the
flags of LAVISH's AVE command: ``--Adapter_downsample 8 --num_conv_group 2 --num_tokens 2
--is_bn 1 --is_gate 1 --is_before_layernorm 1 --is_post_layernorm 1 --is_multimodal 1``.

Each frozen ViT block gets four adapters (audio / visual, before the attention ``p1`` and
before the MLP ``p2``). An adapter first lets a few latent tokens gather the *other* modality
and the own tokens attend to them (the cross-modal part), then runs a LayerNorm, a grouped 1x1
conv bottleneck with BatchNorm and ReLU, BatchNorm, LayerNorm and a zero-initialised gate; its
output is added after the block's attention (p1) or MLP (p2) residual. The final [CLS] tokens
(audio, visual) go through Linear(2D, 512) -> Linear(512, C) (no activation between them, as in
the code), one prediction per segment.

LAVISH* of Table 7 ("deeper convolution in intermediate adapter modules", no public code) is
built here as ``bottleneck_dim=152`` plus one more grouped 1x1 conv + BatchNorm + ReLU inside
the bottleneck (``extra_convs=1``): 7.3 M trainable at ViT-B, the paper's count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.ave.losses import lavish_bce_loss, segment_ce_loss
from tasks.ave.models.backbone import FrozenViT
from tasks.ave.models.base import AVEModel, AVEOutput, as_three_channels


class VisualAdapter(nn.Module):
    """LAVISH's multimodal bottleneck adapter (``adapter_kind="bottleneck"``,
    ``is_multimodal=1``), on token tensors (B, N, D); parameter names as the official class.

    Args:
        dim: D. bottleneck_dim: the conv bottleneck width (official: D // reduction_factor).
        num_tokens: latent tokens that read the other modality. groups: of the 1x1 convs.
        use_bn / use_gate / ln_before / ln_post: the ``--is_bn`` / gate / LayerNorm flags.
        extra_convs: further grouped 1x1 conv + BN + ReLU layers in the bottleneck (LAVISH*).
    """

    def __init__(
        self,
        dim: int,
        bottleneck_dim: int,
        *,
        num_tokens: int = 2,
        groups: int = 2,
        use_bn: bool = True,
        use_gate: bool = True,
        ln_before: bool = True,
        ln_post: bool = True,
        extra_convs: int = 0,
    ) -> None:
        super().__init__()
        self.use_bn = use_bn
        self.gate = nn.Parameter(torch.zeros(1)) if use_gate else None
        self.my_tokens = nn.Parameter(torch.rand(num_tokens, dim))
        self.gate_av = nn.Parameter(torch.zeros(1))
        self.gate_tk = nn.Parameter(torch.ones(1))
        self.activation = nn.ReLU()
        self.down_sampler = nn.Conv2d(dim, bottleneck_dim, 1, groups=groups, bias=False)
        self.mid_samplers = nn.ModuleList(
            nn.Conv2d(bottleneck_dim, bottleneck_dim, 1, groups=groups, bias=False)
            for _ in range(extra_convs)
        )
        self.up_sampler = nn.Conv2d(bottleneck_dim, dim, 1, groups=groups, bias=False)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(bottleneck_dim)
            self.mid_bns = nn.ModuleList(nn.BatchNorm2d(bottleneck_dim) for _ in range(extra_convs))
            self.bn2 = nn.BatchNorm2d(dim)
        self.ln_before = nn.LayerNorm(dim) if ln_before else None
        self.ln_post = nn.LayerNorm(dim) if ln_post else None

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        """x (B, N, D) this stream's tokens, other (B, M, D) the other stream's -> (B, N, D)."""
        tokens = self.my_tokens.expand(x.shape[0], -1, -1)
        read = F.softmax(tokens @ other.transpose(1, 2), dim=-1)  # tokens gather the other stream
        tokens = tokens + self.gate_tk * (read @ other)
        spread = F.softmax(x @ tokens.transpose(1, 2), dim=-1)  # each token reads the latents
        x = x + self.gate_av * (spread @ tokens)
        if self.ln_before is not None:
            x = self.ln_before(x)
        z = x.transpose(1, 2).unsqueeze(-1)  # (B, D, N, 1): the official conv layout
        z = self.down_sampler(z)
        if self.use_bn:
            z = self.bn1(z)
        z = self.activation(z)
        for k, conv in enumerate(self.mid_samplers):
            z = conv(z)
            z = self.mid_bns[k](z) if self.use_bn else z
            z = self.activation(z)
        z = self.up_sampler(z)
        if self.use_bn:
            z = self.bn2(z)
        out = z.squeeze(-1).transpose(1, 2)
        if self.ln_post is not None:
            out = self.ln_post(out)
        return self.gate * out if self.gate is not None else out


class LAVISH(AVEModel):
    """LAVISH on a frozen timm ViT shared by both streams (``models/all_nets.py: LAVISH``).

    Args:
        vit: the ``FrozenViT``. num_classes: C. adapter_reduction: ``--Adapter_downsample``.
        adapter_tokens: ``--num_tokens``. num_conv_group, adapter_bn, adapter_gate,
        adapter_ln_before, adapter_ln_post: the adapter flags (``adapter_gate`` applies to
        the audio adapters; the visual ones always have a gate, as in the code).
        head_hidden: width of ``mlp_class``. loss: ``ce`` (train_baseline_vit.py) or ``bce``
        (LAVISH's AVE main_trans.py). bottleneck_dim / extra_convs: LAVISH* (see module doc).
        start_tune_layer: blocks before it get no adapter (``--start_tune_layers``, 0).
    """

    def __init__(
        self,
        vit: FrozenViT,
        *,
        num_classes: int = 29,
        adapter_reduction: int = 8,
        adapter_tokens: int = 2,
        num_conv_group: int = 2,
        adapter_bn: bool = True,
        adapter_gate: bool = True,
        adapter_ln_before: bool = True,
        adapter_ln_post: bool = True,
        head_hidden: int = 512,
        loss: str = "ce",
        bottleneck_dim: int | None = None,
        extra_convs: int = 0,
        start_tune_layer: int = 0,
    ) -> None:
        super().__init__()
        if loss not in ("ce", "bce"):
            raise ValueError(f"model.loss={loss!r}; choose ce or bce")
        self.ViT = vit
        dim = vit.dim
        self.loss_kind, self.start_tune_layer = loss, start_tune_layer
        self.total_layers = len(vit.v.blocks)
        self.mlp_class = nn.Linear(dim * 2, head_hidden)
        self.mlp_class_2 = nn.Linear(head_hidden, num_classes)
        width = bottleneck_dim if bottleneck_dim is not None else dim // adapter_reduction

        def adapters(gate: bool) -> nn.ModuleList:
            return nn.ModuleList(
                VisualAdapter(
                    dim,
                    width,
                    num_tokens=adapter_tokens,
                    groups=num_conv_group,
                    use_bn=adapter_bn,
                    use_gate=gate,
                    ln_before=adapter_ln_before,
                    ln_post=adapter_ln_post,
                    extra_convs=extra_convs,
                )
                for _ in range(self.total_layers)
            )

        self.audio_adapter_blocks_p1 = adapters(adapter_gate)
        self.vis_adapter_blocks_p1 = adapters(True)
        self.audio_adapter_blocks_p2 = adapters(adapter_gate)
        self.vis_adapter_blocks_p2 = adapters(True)
        self.freeze()

    def forward(self, audio: Tensor, frames: Tensor) -> AVEOutput:
        """audio (B, T, H, W), frames (B, T, 3, H, W) -> segment logits (B, T, C)."""
        b, t = frames.shape[:2]
        vit = self.ViT
        f_a = vit.embed(as_three_channels(audio))
        f_v = vit.embed(frames.flatten(0, 1))
        mask_a = mask_v = None
        for step, i in enumerate(range(self.start_tune_layer, self.total_layers)):
            blk = vit.v.blocks[i]
            mask_a, mask_v = vit.layer_mask(step, f_a, mask_a), vit.layer_mask(step, f_v, mask_v)
            f_a_res = self.audio_adapter_blocks_p1[i](f_a, f_v)
            f_v_res = self.vis_adapter_blocks_p1[i](f_v, f_a)
            f_v = f_v + blk.drop_path1(blk.ls1(vit.attention(i, f_v, mask_v))) + f_v_res
            f_a = f_a + blk.drop_path1(blk.ls1(vit.attention(i, f_a, mask_a))) + f_a_res
            f_a_res = self.audio_adapter_blocks_p2[i](f_a, f_v)
            f_v_res = self.vis_adapter_blocks_p2[i](f_v, f_a)
            f_v = f_v + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(f_v)))) + f_v_res
            f_a = f_a + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(f_a)))) + f_a_res
        f_v, f_a = vit.v.norm(f_v), vit.v.norm(f_a)
        logits = self.mlp_class_2(self.mlp_class(torch.cat((f_a[:, 0], f_v[:, 0]), dim=-1)))
        return AVEOutput(logits=logits.view(b, t, -1))

    def losses(self, out: AVEOutput, labels: Tensor) -> dict[str, Tensor]:
        """``ce`` (or LAVISH's ``bce``) = ``total``."""
        if self.loss_kind == "bce":
            loss = lavish_bce_loss(out.logits, labels)
        else:
            loss = segment_ce_loss(out.logits, labels)
        return {self.loss_kind: loss, "total": loss}
