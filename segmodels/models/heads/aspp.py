"""Atrous spatial pyramid pooling, the context module of DeepLabV3 (Chen et al. 2017, §3.3).

Parallel branches over the same feature map, one per rate: rate 1 is a 1×1 conv-BN-ReLU (DeepLabV3's
first branch), any other rate a 3×3 conv-BN-ReLU with that dilation; optionally an image-level branch
(global average pool → 1×1 conv-BN-ReLU → upsample). The branches are concatenated and projected by a
1×1 conv-BN-ReLU (optionally followed by dropout), then a 3×3 conv-BN-ReLU, dropout and the classifier.

Rates are one argument. The default is this study's rates (1, 2, 3, 6) without image pooling, the
configuration of the study being reproduced: at output stride 8 on 1024×512 the feature map is 64×128,
and small rates keep every tap of the 3×3 filters inside it. Widths: every branch, the projection and the
3×3 conv are ``channels`` wide, 512 by default, the width of PPM's, OCR's and FCN's last 3×3 conv, and the
dropout before the classifier is theirs (0.1), with none after the projection: the heads end alike and the
context modules are compared at one width (mmsegmentation's heads share one ``channels`` too, its ASPPHead has
no dropout after the branches). ``DEEPLABV3_OPTIONS`` gives torchvision's DeepLabV3 head at output stride 8
(rates 12, 24, 36 doubled from 6, 12, 18 at stride 16, image pooling on, 256 channels, dropout 0.5 after the
projection and none before the classifier): with it this head has exactly the layers of torchvision's
``DeepLabHead``, so ``resnet50-aspp`` built with it matches ``torchvision.models.segmentation.deeplabv3_resnet50``
layer for layer (the two differ only in which first block of a dilated ResNet layer is dilated).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["DEEPLABV3_OPTIONS", "STUDY_RATES", "ASPPHead"]

STUDY_RATES = (1, 2, 3, 6)
# Keyword arguments that turn ASPPHead into torchvision's DeepLabV3 head (pass as build_model(..., head_options=...)).
DEEPLABV3_OPTIONS = MappingProxyType(
    {"rates": (1, 12, 24, 36), "image_pool": True, "channels": 256, "project_dropout": 0.5, "dropout": 0.0}
)


class _ImagePool(nn.Sequential):
    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), Conv2dNormActivation(in_channels, channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(super().forward(x), x.shape[-2:], mode="bilinear", align_corners=False)


class ASPPHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        rates: Sequence[int] = STUDY_RATES,
        image_pool: bool = False,
        channels: int = 512,  # width of every branch, the projection and the 3×3 conv: the other heads' width
        project_dropout: float = 0.0,  # after the projection (torchvision's DeepLabV3: 0.5)
        dropout: float = 0.1,  # before the classifier, as in the other heads of the study
    ) -> None:
        super().__init__()
        if not rates or min(rates) < 1:
            raise ValueError(f"ASPP rates must be positive integers, got {tuple(rates)}")
        branches: list[nn.Module] = [
            Conv2dNormActivation(in_channels, channels, kernel_size=1)
            if rate == 1
            else Conv2dNormActivation(in_channels, channels, kernel_size=3, dilation=rate)
            for rate in rates
        ]
        if image_pool:
            branches.append(_ImagePool(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            Conv2dNormActivation(len(branches) * channels, channels, kernel_size=1), nn.Dropout(project_dropout)
        )
        self.conv = Conv2dNormActivation(channels, channels, kernel_size=3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        context = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        return {"out": self.classifier(self.dropout(self.conv(context)))}
