"""The OCR head computes what mmsegmentation's OCRHead computes, on the same weights.

The reference below is a plain-torch transcription of mmsegmentation's forward pass, written under its own module
names (``bottleneck``, ``spatial_gather_module``, ``object_context_block.{query,key,value,out}_project``,
``conv_seg``); our weights are copied into it by name, so a changed softmax axis, scale, projection or concatenation
order in our head shows up as a difference in the logits.
"""

# Transcribed from open-mmlab/mmsegmentation (mmseg/models/decode_heads/ocr_head.py, utils/self_attention_block.py).

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segmodels.models import build_model
from segmodels.models.heads import OCRHead

pytestmark = pytest.mark.usefixtures("one_thread")


class _ConvModule(nn.Module):
    """mmcv's ConvModule with a BatchNorm and a ReLU: convolution (no bias before the norm), norm, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class _SpatialGatherModule(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        batch_size, num_classes = probs.shape[:2]
        channels = feats.shape[1]
        probs = F.softmax(self.scale * probs.reshape(batch_size, num_classes, -1), dim=2)  # over the pixels
        feats = feats.reshape(batch_size, channels, -1).permute(0, 2, 1)
        return torch.matmul(probs, feats).permute(0, 2, 1).unsqueeze(3)  # (N, C, K, 1)


class _ObjectAttentionBlock(nn.Module):
    """SelfAttentionBlock as OCR configures it: two convs for key and query, one for value and out, scaled dot
    products, then the bottleneck over [context, pixels]."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.query_project = nn.Sequential(_ConvModule(in_channels, channels, 1), _ConvModule(channels, channels, 1))
        self.key_project = nn.Sequential(_ConvModule(in_channels, channels, 1), _ConvModule(channels, channels, 1))
        self.value_project = _ConvModule(in_channels, channels, 1)
        self.out_project = _ConvModule(channels, in_channels, 1)
        self.bottleneck = _ConvModule(in_channels * 2, in_channels, 1)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        batch_size = query_feats.shape[0]
        query = self.query_project(query_feats)
        query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1)
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        key = key.reshape(*key.shape[:2], -1)
        value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1)
        sim_map = F.softmax((self.channels**-0.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim_map, value).permute(0, 2, 1)
        context = self.out_project(context.reshape(batch_size, -1, *query_feats.shape[2:]))
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


class _ReferenceOCRHead(nn.Module):
    def __init__(self, in_channels: int, channels: int, ocr_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = _ConvModule(in_channels, channels, 3)
        self.spatial_gather_module = _SpatialGatherModule()
        self.object_context_block = _ObjectAttentionBlock(channels, ocr_channels)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, prev_output: torch.Tensor) -> torch.Tensor:
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_output)
        return self.conv_seg(self.dropout(self.object_context_block(feats, context)))


# Our module names → the reference's; inside a conv-norm-activation, layer 0 is the conv and layer 1 the norm.
_PREFIXES = {
    "pixel.": "bottleneck.",
    "query.": "object_context_block.query_project.",
    "key.": "object_context_block.key_project.",
    "value.": "object_context_block.value_project.",
    "up.": "object_context_block.out_project.",
    "fuse.": "object_context_block.bottleneck.",
    "classifier.": "conv_seg.",
}


def _reference_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        (ours,) = [p for p in _PREFIXES if key.startswith(p)]
        theirs = _PREFIXES[ours] + key.removeprefix(ours)
        if not theirs.startswith("conv_seg."):
            theirs = re.sub(r"\.0\.(\w+)$", r".conv.\1", theirs)
            theirs = re.sub(r"\.1\.(\w+)$", r".bn.\1", theirs)
        renamed[theirs] = value
    return renamed


def _randomised(head: nn.Module, seed: int) -> nn.Module:
    """Weights that keep activations near unit scale (so attention logits spread over a few units and both softmax
    axes and the scale matter), BatchNorm affine terms and statistics far from their initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in head.state_dict().items():
            if not tensor.is_floating_point():
                continue
            u = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
            if tensor.ndim == 4:  # a convolution: uniform with the variance of 3 / fan-in
                tensor.copy_((2 * u - 1) * 3 / tensor[0].numel() ** 0.5)
            elif name.endswith(("running_var", ".1.weight")):  # variances and norm scales in [0.5, 1.5)
                tensor.copy_(0.5 + u)
            else:  # means and biases in [-0.5, 0.5)
                tensor.copy_(u - 0.5)
    return head


def _pair(in_channels: int = 16, mid: int = 12, key: int = 8, classes: int = 5) -> tuple[OCRHead, nn.Module]:
    ours = _randomised(OCRHead(in_channels, classes, mid_channels=mid, key_channels=key), seed=0).double().eval()
    reference = _ReferenceOCRHead(in_channels, mid, key, classes).double().eval()
    reference.load_state_dict(_reference_keys(ours.state_dict()), strict=True)  # every weight, both ways
    return ours, reference


def test_the_head_is_mmsegmentations_forward_on_the_same_weights() -> None:
    # mid ≠ key channels: a scale of the wrong width differs; K = 5 regions over 6×7 pixels: both softmax axes differ.
    ours, reference = _pair()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 6, 7, generator=generator, dtype=torch.float64)
    regions = 3 * torch.randn(2, 5, 6, 7, generator=generator, dtype=torch.float64)  # peaked soft regions
    with torch.no_grad():
        got, expected = ours(x, regions)["out"], reference(x, regions)
    assert got.shape == expected.shape == (2, 5, 6, 7)
    assert expected.std() > 1  # the comparison is between spread logits, not between two constants
    assert (got - expected).abs().max().item() < 1e-10


def test_the_model_feeds_the_head_its_aux_logits_unchanged() -> None:
    """In the whole model (eval mode), the head's output is the reference head's on the backbone's last map and the
    auxiliary head's logits, upsampled to the input."""
    torch.manual_seed(0)
    model = build_model("resnet18", "ocr", num_classes=5).eval()
    _randomised(model.head, seed=2)
    reference = _ReferenceOCRHead(512, 512, 256, 5).eval()
    reference.load_state_dict(_reference_keys(model.head.state_dict()), strict=True)
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = model.backbone(x)
        regions = model.aux_head(features["aux"])["out"]
        expected = F.interpolate(reference(features["out"], regions), size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)  # fmt: skip
        got = model(x)["out"]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
