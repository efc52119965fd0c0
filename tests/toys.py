"""A backbone, a head and a metric defined outside the package (no torchvision), for the tests that register them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from segmodels.metrics import iou_per_class
from segmodels.models.backbones import Backbone, FeatureInfo


class ToyBody(nn.Module):
    """Stride-2 convolutions down to ``output_stride``; "aux" is the map one step before "out"."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        steps = int(math.log2(output_stride))
        widths = [3] + [8] * (steps - 1) + [16]
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = torch.relu(stage(x))
            maps.append(x)
        return {"aux": maps[-2], "out": maps[-1]}


def toy_backbone(output_stride: int) -> Backbone:
    info = {"out": FeatureInfo(16, output_stride), "aux": FeatureInfo(8, output_stride // 2)}
    return Backbone(ToyBody(output_stride), info)


class ToyHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, *, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(torch.relu(self.conv(x)))}


def fwiou(matrices: np.ndarray) -> np.ndarray:
    """Frequency-weighted IoU: the per-class IoUs weighted by each class's share of the labelled pixels."""
    truth = matrices.sum(axis=-1)
    weighted = np.where(truth > 0, truth * np.nan_to_num(iou_per_class(matrices)), 0.0).sum(axis=-1)
    total = truth.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, weighted / total, np.nan)
