"""The all-MLP decoder of SegFormer (Xie et al. 2021, §3.2, Eq. 4).

Every stage of the backbone is projected by a linear layer to ``channels``, upsampled to the first (shallowest)
stage's size, and the maps are concatenated (deepest first, as the released code does), fused by a 1×1
conv-BN-ReLU, and classified after dropout. It is a multi-stage head (``reads_stages``): it is built with the
backbone's ``stage_channels`` and called with the list of stage maps, so it fuses whatever stages the backbone
gives — four for the MiT encoders and the built-in CNNs, two (aux and out) for a backbone that declares no stages.

Widths: the paper's decoder has 256 channels for MiT-B0 and B1 and 768 for B2 to B5 (its Table 1 and released
configs); ``BACKBONE_OPTIONS`` gives those defaults per backbone, and every other backbone gets 256. Module names
follow the released code where they can (``linear_c.{i}.proj``, Hugging Face's too), so its checkpoints convert
(:mod:`segmodels.models.backbones.mit_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["BACKBONE_OPTIONS", "SegFormerHead"]

# Default options per backbone, where the paper's differ from the class's (build_model applies them, a config's
# model.head_options override them).
BACKBONE_OPTIONS = MappingProxyType({"mitb2": MappingProxyType({"channels": 768})})


class _MLP(nn.Module):
    """A linear layer over the channels of a (N, C, H, W) map (the released code's per-stage ``MLP``)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As a 1×1 convolution of the linear layer's weights: the same map, without transposing it twice.
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class SegFormerHead(nn.Module):
    reads_stages = True  # built with the stage channels, called with the list of stage maps (shallow to deep)
    BACKBONE_OPTIONS = BACKBONE_OPTIONS

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 256,  # the decoder's width C (the paper's 256 for MiT-B0/B1, 768 for B2: BACKBONE_OPTIONS)
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, int) or not in_channels:
            raise ValueError(f"the SegFormer head reads a list of stages, got in_channels={in_channels!r}")
        self.linear_c = nn.ModuleList(_MLP(c, channels) for c in in_channels)
        self.linear_fuse = Conv2dNormActivation(len(in_channels) * channels, channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, stages: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        size = stages[0].shape[-2:]
        maps = [
            F.interpolate(mlp(x), size=size, mode="bilinear", align_corners=False) if x.shape[-2:] != size else mlp(x)
            for mlp, x in zip(self.linear_c, stages, strict=True)
        ]
        fused = self.linear_fuse(torch.cat(maps[::-1], dim=1))
        return {"out": self.classifier(self.dropout(fused))}
