"""Object-contextual representations (OCR; Yuan et al. 2020, "Object-Contextual Representations for
Semantic Segmentation", §3).

1. Soft object regions: the logits of the auxiliary FCN head on the stage before the last (K maps, one
   per class), supervised by the segmentation labels through the auxiliary loss (the paper's weight 0.4).
   This is the paper's ResNet cascade as released (openseg.pytorch; mmsegmentation's ``ocrnet_r50-d8``:
   an FCNHead on layer3 whose logits feed the OCRHead on layer4), so the model passes them in.
2. Pixel representations: a 3×3 conv-BN-ReLU reduces the backbone feature to ``mid_channels``.
3. Object region representations (spatial gather): each region is the average of the pixel
   representations weighted by that region's map, softmax-normalised over the pixels.
4. Pixel-region relations: query (from pixels), key and value (from regions) through two, two and one
   1×1 conv-BN-ReLU transforms to ``key_channels``; softmax over regions of the scaled dot products.
5. The object-contextual representation (relation-weighted sum of values, back to ``mid_channels``) is
   concatenated with the pixel representation and fused by a 1×1 conv-BN-ReLU before dropout and the
   classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["OCRHead", "SpatialGather"]


def _conv1x1(in_channels: int, out_channels: int) -> Conv2dNormActivation:
    return Conv2dNormActivation(in_channels, out_channels, kernel_size=1)


class SpatialGather(nn.Module):
    """Object region representations: (N, C, K, 1), each region's softmax-weighted average of the pixels."""

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        if regions.shape[-2:] != pixels.shape[-2:]:  # output stride 32: the aux stage stays at stride 16
            regions = F.interpolate(regions, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        weights = regions.flatten(2).softmax(dim=-1)  # (N, K, hw)
        return torch.bmm(weights, pixels.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)


class OCRHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        mid_channels: int = 512,  # pixel and object representations (the paper's 512)
        key_channels: int = 256,  # query/key/value transforms (the paper's 256)
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pixel = Conv2dNormActivation(in_channels, mid_channels, kernel_size=3)
        self.gather = SpatialGather()
        self.query = nn.Sequential(_conv1x1(mid_channels, key_channels), _conv1x1(key_channels, key_channels))
        self.key = nn.Sequential(_conv1x1(mid_channels, key_channels), _conv1x1(key_channels, key_channels))
        self.value = _conv1x1(mid_channels, key_channels)
        self.up = _conv1x1(key_channels, mid_channels)
        self.fuse = _conv1x1(2 * mid_channels, mid_channels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)
        self.scale = key_channels**-0.5

    def forward(self, x: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
        """``regions``: (N, K, h', w') soft object-region logits, the auxiliary head's."""
        pixels = self.pixel(x)  # (N, C, h, w)
        n, _, h, w = pixels.shape
        objects = self.gather(pixels, regions)  # (N, C, K, 1), a map for the 1×1 convs
        query = self.query(pixels).flatten(2).transpose(1, 2)  # (N, hw, Ck)
        key = self.key(objects).flatten(2)  # (N, Ck, K)
        value = self.value(objects).flatten(2).transpose(1, 2)  # (N, K, Ck)
        relation = (torch.bmm(query, key) * self.scale).softmax(dim=-1)  # (N, hw, K)
        context = torch.bmm(relation, value).transpose(1, 2).reshape(n, -1, h, w)
        fused = self.fuse(torch.cat([self.up(context), pixels], dim=1))
        return {"out": self.classifier(self.dropout(fused))}
