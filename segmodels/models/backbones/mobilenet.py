"""Dilated MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Large (Howard et al. 2019) backbones.

Both come from torchvision's constructors; output stride 8 comes from :func:`dilate_stages` applied block
by block to ``features``: the depthwise convolution of the first block that would halve the resolution
below 1/8 gets stride 1, and it and every later depthwise convolution get dilation 2, then 4 after the
next stride-2 block, with padding ``dilation * (k - 1) // 2`` for their k×k kernels.

MobileNetV2: "out" is the 320-channel block 17 (the 1×1 conv to 1280 channels and the classifier are
dropped, as in the study), "aux" the end of the 96-channel stage (block 13, stride 16 → 8). The four stages
end at blocks 3 (24 channels, stride 4), 6 (32, stride 8), 13 and 17; MobileNetV3-Large's at blocks 3 (24),
6 (40), 12 and 16.

MobileNetV3-Large: what a correct stride-8 segmentation backbone needs, and what went wrong before.

* Which blocks dilate. The 16 inverted-residual blocks reach stride 8 at the 40-channel stage
  (blocks 4-6, 5×5 kernels). Everything from the stride-16 stage on is dilated: block 7 (80 channels,
  the one with stride 2) becomes stride 1, and blocks 7-12 (80 and 112 channels, 3×3) take dilation 2;
  block 13 (160 channels, stride 2) becomes stride 1 and blocks 13-15 (5×5) take dilation 4. torchvision's
  ``mobilenet_v3_large(dilated=True)``, used by its LR-ASPP and DeepLabV3-MobileNetV3, dilates only
  blocks 13-15 (output stride 16); at output_stride=16 this module builds exactly that network, and at 8
  it goes one stage further, as the ResNets do.
* Padding for 5×5 kernels. Half of the dilated depthwise convolutions are 5×5, whose padding must be
  ``2 * dilation`` (8 at dilation 4), not ``dilation``: with the 3×3 rule the maps shrink by 2·d per
  block and the residual additions no longer line up (or, if the feature is taken without residuals,
  borders are silently cropped).
* Which features feed the head. "out" is block 16, the 1×1 conv from 160 to 960 channels with BN and
  hardswish: that expansion belongs to the feature extractor (torchvision takes it as "out" for LR-ASPP
  and DeepLabV3), whereas block 15's 160 channels are the linear bottleneck of an inverted residual —
  a projection without activation meant to be expanded again, a poor input for a context module. Only
  the pooling and the classifier are dropped. "aux" is the end of the 112-channel stage (block 12,
  stride 16 → 8), the stage before the last, which is where PSPNet puts its auxiliary loss and where
  this study supervises ResNet (layer3) and MobileNetV2 (96 channels). torchvision's DeepLabV3 instead
  takes the 40-channel stride-8 stage as "aux", an index it shares with LR-ASPP, whose decoder needs a
  high-resolution low-level skip; our heads have no decoder, so the auxiliary loss supervises the deeper stage.
* What must stay intact. Squeeze-and-excitation and hardswish are part of what the ImageNet weights
  compute: dropping SE or swapping hardswish for ReLU (both common to "simplify" the network or speed it
  up) leaves the pretrained weights computing something they were not trained for. Its BatchNorms keep
  torchvision's eps 1e-3; their momentum of 0.01 is the constructor's, and training sets every backbone's to
  ``model.bn_momentum`` (0.1): with 0.01 the running statistics trail the weights for hundreds of steps,
  and a short schedule evaluates with statistics of a network that no longer exists.
* Why it is not faster than MobileNetV2 here. The backbone is not the problem: at output stride 8 and
  1024×512 it costs 24 GFLOPs against MobileNetV2's 31 (``count_flops``, a multiply-add counted as 2).
  The head is: the 960-channel "out" map feeds it at 1/8 resolution, so PPM's fusing 3×3 convolution
  reads 960 + 4·240 channels instead of 320 + 4·80, three times as many, and the PPM model costs 170
  GFLOPs against 79 (at output stride 16: 44 against 22). On a GPU, SE's global pooling and
  hardswish add memory-bound passes over large expanded maps that FLOP counts do not show. The
  MobileNetV3 paper (§6.3) segments at output stride 16 and halves the channels of the last block
  ("reduced tail"), those channels having been sized for 1000 ImageNet classes; the reduced tail changes
  weight shapes, so it cannot start from the ImageNet checkpoint and is not used. Narrowing the head
  (``head_options``, e.g. PPM ``bin_channels``) trims the cost but not the 960 channels its 3×3
  convolution reads; a 1×1 reduction in front of the head would, at the price of a layer the other
  backbones do not have, so the study keeps the heads identical across backbones instead.
"""

from __future__ import annotations

from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter

from segmodels.models.backbones.base import (
    Backbone,
    BackboneSpec,
    FeatureInfo,
    dilate_stages,
    last_channels,
    register_backbone,
    stage_keys,
)

__all__ = ["wrap_mobilenet_v2", "wrap_mobilenet_v3_large"]


def _wrap_features(features: nn.Sequential, output_stride: int, *, stage_ends: tuple[int, ...]) -> Backbone:
    """``stage_ends``: the block ending each stage of the undilated network (strides 4, 8, 16, 32), the last
    being "out" and the one before "aux"."""
    # Slicing a Sequential keeps the original child names ("0" … "17"), so the body's state-dict keys
    # are torchvision's with the "features." prefix removed.
    kept = features[: stage_ends[-1] + 1]
    strides = dilate_stages(list(kept), input_stride=1, output_stride=output_stride)
    keys = stage_keys(len(stage_ends))
    body = IntermediateLayerGetter(kept, return_layers={str(i): key for i, key in zip(stage_ends, keys, strict=True)})
    info = {key: FeatureInfo(last_channels(kept[i]), strides[i]) for i, key in zip(stage_ends, keys, strict=True)}
    return Backbone(body, info, stages=keys)


def wrap_mobilenet_v2(model: nn.Module, output_stride: int) -> Backbone:
    # Block 17 is the last inverted residual (320 channels); block 18 (1×1 conv to 1280) is dropped.
    return _wrap_features(model.features, output_stride, stage_ends=(3, 6, 13, 17))


def wrap_mobilenet_v3_large(model: nn.Module, output_stride: int) -> Backbone:
    # Block 16 is the 1×1 conv to 960 channels, kept (see the module docstring); block 12 ends the 112-channel stage.
    return _wrap_features(model.features, output_stride, stage_ends=(3, 6, 12, 16))


register_backbone(
    "mobilenetv2",
    BackboneSpec(
        models.mobilenet_v2,
        wrap_mobilenet_v2,
        weights=models.MobileNet_V2_Weights.IMAGENET1K_V1,
        dropped=("features.18.", "classifier."),
    ),
)
register_backbone(
    "mobilenetv3",
    BackboneSpec(
        models.mobilenet_v3_large,
        wrap_mobilenet_v3_large,
        weights=models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        dropped=("classifier.",),
    ),
)
