"""Pyramid pooling module, the context module of PSPNet (Zhao et al. 2017, §3.3).

The feature map is average-pooled to bins×bins grids (1, 2, 3, 6), each reduced by a 1×1 conv-BN-ReLU
to ``in_channels / len(bins)`` channels, upsampled back and concatenated with the input; a 3×3
conv-BN-ReLU fuses global and local context before dropout and the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["PPMHead"]


class PPMHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        bins: Sequence[int] = (1, 2, 3, 6),
        bin_channels: int | None = None,  # default in_channels // len(bins), the paper's 1/N reduction
        channels: int = 512,  # width of the fusing 3×3 conv
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not bins or min(bins) < 1:
            raise ValueError(f"PPM bins must be positive integers, got {tuple(bins)}")
        bin_channels = bin_channels or max(1, in_channels // len(bins))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), Conv2dNormActivation(in_channels, bin_channels, kernel_size=1))
            for b in bins
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(bins) * bin_channels, channels, kernel_size=3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        pyramid = [x] + [F.interpolate(stage(x), size, mode="bilinear", align_corners=False) for stage in self.stages]
        return {"out": self.classifier(self.dropout(self.bottleneck(torch.cat(pyramid, dim=1))))}
