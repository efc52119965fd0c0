"""Dilated ResNet backbones (He et al. 2016) from torchvision's constructors.

At output stride 8, layer3 and layer4 keep the stride-8 resolution: every 3×3 convolution of layer3 gets
dilation 2 / padding 2 / stride 1 and every one of layer4 dilation 4 / padding 4 / stride 1, and the
1×1 downsample convolutions of both get stride 1 (PSPNet's dilated ResNet, Zhao et al. 2017). In a
BasicBlock (resnet18) both 3×3 convolutions are dilated; in a Bottleneck (resnet50/101) the 3×3 is
conv2. torchvision's BasicBlock refuses ``dilation > 1`` at construction, so the built modules are
changed instead, the same way for both block types. (torchvision's ``replace_stride_with_dilation``
differs only in that the first block of a dilated layer keeps the previous layer's dilation; mmsegmentation's
``contract_dilation`` does the same, and the ResNet-V1c backbones of :mod:`resnet_v1c` follow it.)

"out" is layer4 (512 or 2048 channels), "aux" is layer3 (256 or 1024), the stage PSPNet's auxiliary
loss supervises; the four stages are layer1 to layer4 (strides 4, 8, 8, 8 at output stride 8).
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

__all__ = ["wrap_resnet"]

_STEM_STRIDE = 4  # conv1 (stride 2) and the max-pool (stride 2) before layer1


def wrap_resnet(model: nn.Module, output_stride: int) -> Backbone:
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    strides = dilate_stages(stages, input_stride=_STEM_STRIDE, output_stride=output_stride)
    keys = stage_keys(len(stages))
    # IntermediateLayerGetter keeps the children up to layer4 and so drops avgpool and fc.
    body = IntermediateLayerGetter(model, return_layers={f"layer{i}": key for i, key in enumerate(keys, 1)})
    info = {
        key: FeatureInfo(last_channels(stage), stride) for key, stage, stride in zip(keys, stages, strides, strict=True)
    }
    return Backbone(body, info, stages=keys)


_DROPPED = ("fc.",)

# ImageNet weights: IMAGENET1K_V1 for all three, the weights torchvision's own segmentation models
# (FCN, DeepLabV3) start from, so results stay comparable with theirs.
for _name, _constructor, _weights in (
    ("resnet18", models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    ("resnet50", models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    ("resnet101", models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
):
    register_backbone(_name, BackboneSpec(_constructor, wrap_resnet, weights=_weights, dropped=_DROPPED))
