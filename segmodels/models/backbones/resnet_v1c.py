"""ResNet-V1c backbones, the ResNets behind mmsegmentation's published PSPNet, DeepLabV3 and FCN results.

ResNet-V1c (He et al. 2019, "Bag of Tricks for Image Classification with Convolutional Neural Networks", §4.1,
"ResNet-C") replaces the 7×7 stem convolution by three 3×3 conv-BN-ReLU (32, 32 and 64 channels, the first at
stride 2); the rest is ResNet-V1b, torchvision's (the stride on a bottleneck's 3×3 convolution, a strided 1×1
convolution in the shortcut). mmsegmentation's ``ResNetV1c`` is this network. The networks here are timm's
``ResNet`` class with its deep stem (``stem_type="deep"``, ``stem_width=32``): timm's ``resnet50c`` and
``resnet101c``, and the same class with BasicBlocks for ``resnet18c``, which timm does not register.

Dilation is mmsegmentation's (``R-*-D8``: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), ``contract_dilation=True``)
and differs from the torchvision backbones' (:mod:`~segmodels.models.backbones.resnet`, where every block of a
dilated layer takes the layer's dilation):

* a layer that would halve the resolution below ``output_stride`` gets stride 1 and doubles the dilation
  (layer3: 2, layer4: 4 at output stride 8; layer4: 2 at 16);
* the first block of a dilated layer uses half the layer's dilation (``contract_dilation``: 1 in layer3, 2 in
  layer4), its later blocks the layer's own;
* the dilated convolution of a block is its 3×3 (a bottleneck's ``conv2``), in a BasicBlock the first 3×3 only
  (``conv1``; mmsegmentation's BasicBlock keeps its second 3×3 at dilation 1).

Weights (``pretrained="imagenet"``): for ``resnet50c`` and ``resnet101c``, timm's default pretrained tag of the
model (``gluon_in1k``, GluonCV's ResNet-V1c ImageNet weights), loaded by timm with the offline handling of
:mod:`~segmodels.models.backbones.timm_encoders`; for ``resnet18c``, for which timm has none, mmsegmentation's own
file (``open-mmlab://resnet18_v1c``), from the torch hub cache or downloaded like torchvision's weights. A path is a
state dict in timm's key layout or in mmsegmentation's (``stem.0`` ... ``stem.7`` for the stem, optionally under
``backbone.``): mmsegmentation's ``resnet50_v1c`` and ``resnet101_v1c`` files load that way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from segmodels.models.backbones.base import (
    OUTPUT_STRIDES,
    Backbone,
    BackboneSpec,
    FeatureInfo,
    last_channels,
    register_backbone,
    stage_keys,
)
from segmodels.models.backbones.weights import check_keys, fetch_state_dict, hub_cache_file, read_state_dict

__all__ = ["MMSEG_IMAGENET", "V1C_LAYERS", "dilate_v1c", "from_mmseg", "load_v1c_pretrained", "wrap_resnet_v1c"]

_STEM_STRIDE = 4  # the stem's first conv (stride 2) and the max-pool (stride 2) before layer1
_STEM_WIDTH = 32  # the deep stem's first two convs; the third gives 64
_DROPPED = ("fc.",)  # the classifier, cut off by the backbone
# Blocks per layer and the block type, as mmsegmentation's ResNet.arch_settings.
V1C_LAYERS = {"resnet18c": ("basic", (2, 2, 2, 2)), "resnet50c": ("bottleneck", (3, 4, 6, 3)),
              "resnet101c": ("bottleneck", (3, 4, 23, 3))}  # fmt: skip
# mmsegmentation's ImageNet file of a V1c network timm has no weights for (its pretrained='open-mmlab://...').
MMSEG_IMAGENET = {"resnet18c": "https://download.openmmlab.com/pretrain/third_party/resnet18_v1c-b5776b93.pth"}


def _network(name: str, weights: None = None) -> nn.Module:
    """timm's ResNet-V1c classification network ``name`` (random init); ``weights`` is the spec's contract (None)."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    block, layers = V1C_LAYERS[name]
    return ResNet(block=BasicBlock if block == "basic" else Bottleneck, layers=layers, stem_width=_STEM_WIDTH,
                  stem_type="deep")  # fmt: skip


def _dilated_conv(block: nn.Module) -> nn.Conv2d:
    """The block's convolution that carries the stride and the dilation: a bottleneck's 3×3, a BasicBlock's first."""
    return block.conv2 if hasattr(block, "conv3") else block.conv1


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    kh, kw = conv.kernel_size
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)


def dilate_v1c(
    layers: Sequence[nn.Sequential], *, output_stride: int, input_stride: int = _STEM_STRIDE,
    contract_dilation: bool = True,
) -> list[int]:  # fmt: skip
    """Turn the strides of ``layers`` (ResNet layers whose first block may halve the resolution) into dilations so
    the network's stride stops at ``output_stride``, the way mmsegmentation's ResNet does (see the module
    docstring); ``contract_dilation``: the first block of a dilated layer takes half the layer's dilation. Only
    strides, dilations and paddings change. Returns the stride of each layer's output."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride}")
    stride, dilation, strides = input_stride, 1, []
    for layer in layers:
        first = layer[0]
        if _dilated_conv(first).stride != (1, 1):
            if stride < output_stride:
                stride *= 2
            else:
                dilation *= 2
                _dilated_conv(first).stride = (1, 1)
                first.downsample[0].stride = (1, 1)
                first.stride = 1
        for index, block in enumerate(layer):
            own = dilation // 2 if index == 0 and contract_dilation and dilation > 1 else dilation
            _set_dilation(_dilated_conv(block), own)
            block.dilation = own
        strides.append(stride)
    return strides


def wrap_resnet_v1c(model: nn.Module, output_stride: int) -> Backbone:
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    strides = dilate_v1c(stages, output_stride=output_stride)
    keys = stage_keys(len(stages))
    # The children run in order up to layer4 (stem convs, bn1, act1, maxpool, layers); global_pool and fc are left.
    body = IntermediateLayerGetter(model, return_layers={f"layer{i}": key for i, key in enumerate(keys, 1)})
    info = {key: FeatureInfo(last_channels(s), r) for key, s, r in zip(keys, stages, strides, strict=True)}
    return Backbone(body, info, stages=keys)


# mmsegmentation's deep stem (stem.0 conv, .1 BN, .2 ReLU, .3 conv, .4 BN, .5 ReLU, .6 conv, .7 BN) → timm's (conv1.0
# to conv1.6, then bn1). The layers' keys (layerN.i.conv1, .bn1, .downsample.0) are the same in both.
_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}
_NOT_BACKBONE = ("head.", "neck.", "decode_head.", "auxiliary_head.")  # a classifier's or a segmentor's other parts


def from_mmseg(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ResNetV1c state dict in mmsegmentation's (mmcv's) layout → timm's keys; the backbone of a whole model
    (keys under ``backbone.``) is taken, its other parts left."""
    out = {}
    for key, value in state.items():
        if key.startswith(_NOT_BACKBONE):
            continue
        key = key.removeprefix("backbone.")
        if m := re.fullmatch(r"stem\.(\d+)\.(.+)", key):
            if m[1] not in _STEM:
                raise ValueError(f"not a key of ResNetV1c's deep stem: {key}")
            key = f"{_STEM[m[1]]}.{m[2]}"
        out[key] = value
    return out


def _read(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return read_state_dict(path)  # weights_only=True


def _imagenet(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict of ``name`` and where it came from (see the module docstring)."""
    if name in MMSEG_IMAGENET:
        url = MMSEG_IMAGENET[name]
        file = hub_cache_file(url)
        state = read_state_dict(file) if file.is_file() else fetch_state_dict(
            url, file, what=f"ImageNet weights for {name} (mmsegmentation's {Path(url).name})")  # fmt: skip
        return state, str(file)
    from segmodels.models.backbones.timm_encoders import timm_classifier_state

    return timm_classifier_state(name), f"timm's ImageNet weights of {name}"


def load_v1c_pretrained(model: nn.Module, *, name: str, pretrained: str | os.PathLike[str]) -> None:
    """Load "imagenet" or a state-dict file (timm's or mmsegmentation's layout) into the network ``model``."""
    state: Any
    state, source = _imagenet(name) if pretrained == "imagenet" else (_read(pretrained), str(pretrained))
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(re.match(r"(backbone\.)?stem\.", k) for k in state):
        try:
            state = from_mmseg(state)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
    check_keys(model, state, _DROPPED, source, layout="timm's (or mmsegmentation's)")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_DROPPED)}, strict=False)


for _name in V1C_LAYERS:
    register_backbone(_name, BackboneSpec(partial(_network, _name), wrap_resnet_v1c, loader=load_v1c_pretrained))
