"""FCN head: no context module, the baseline the context modules are measured against.

3×3 conv-BN-ReLU, dropout, 1×1 classifier, as the classifier of a dilated FCN (Long et al. 2015;
the "FCN" of torchvision's segmentation models). The same head, narrower, is the auxiliary head on the
backbone's "aux" stage (PSPNet's deep supervision, Zhao et al. 2017).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 512, dropout: float = 0.1) -> None:
        # channels=512: the width of PPM's, ASPP's and OCR's last 3×3 conv, so only the context module differs.
        super().__init__()
        self.conv = Conv2dNormActivation(in_channels, channels, kernel_size=3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.dropout(self.conv(x)))}
