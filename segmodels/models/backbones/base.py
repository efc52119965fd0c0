"""What every backbone shares: the feature contract, the stride → dilation rewrite and the registry.

A backbone is a :class:`Backbone`: its ``forward`` returns a dict of feature maps with at least "out" (the deepest
map, the one a context head reads) and "aux" (the map the auxiliary head reads, the stage before the last), and its
``feature_info`` declares the channels and reduction (input size / feature size) of every map it returns; heads
read their input channels from it (the idea of timm's ``feature_info``). "out" must have reduction
``output_stride``.

The stage contract: ``stages`` names the maps of the feature pyramid, shallow to deep (:func:`stage_keys`:
``("stage1", "stage2", "aux", "out")`` for four stages, so the last two stages are "aux" and "out" and a head of
one map reads the same tensor either way); ``stage_channels`` and ``stage_strides`` are their widths and
reductions. A multi-stage head (SegFormer's MLP decoder) reads every stage; the others read "out". A backbone
that declares no stages has two, ("aux", "out"). The built-in backbones give four: the ends of the stride-4, 8,
16 and 32 stages of the undilated network (after dilation the deeper ones keep stride 8 or 16). ``body`` may
return a dict keyed like ``feature_info`` or a list of the stage maps in the order of ``stages``.

``register_backbone(name, spec_or_builder, *, label=None, short=None)`` puts a backbone in ``BACKBONE_SPECS`` and
its names in :mod:`segmodels.models.catalog` (label and short name required for a name the catalog lacks; for a
catalogued one they may be left out, or must match). What it takes:

* a :class:`BackboneSpec`: ``constructor(weights=None)`` makes the network (here torchvision's classification
  network), ``pretrained`` weights are loaded into it (``weights``: the ImageNet weights behind "imagenet", None
  when there are none; a state-dict path is checked against the network's own keys; or ``loader``, a function of
  its own for both), then ``wrap(network, output_stride)`` cuts and dilates it into a :class:`Backbone`;
  ``output_strides`` lists the strides it can give (a transformer: 32 only);
* or a plain builder, ``builder(output_stride) -> Backbone``, for a network without pretrained weights
  (``pretrained`` must then be None): e.g. ``lambda output_stride: Backbone(body, feature_info)`` where ``body``
  is any module returning ``{"out": ..., "aux": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models._api import WeightsEnum

from segmodels.models import catalog

__all__ = [
    "BACKBONE_SPECS",
    "OUTPUT_STRIDES",
    "Backbone",
    "BackboneSpec",
    "FeatureInfo",
    "dilate_stages",
    "last_channels",
    "register_backbone",
    "stage_keys",
]

OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    channels: int
    reduction: int  # input size / feature size


def stage_keys(count: int) -> tuple[str, ...]:
    """The keys of ``count`` stages, shallow to deep: ``stage1`` ... and the last two "aux" and "out"."""
    if count < 1:
        raise ValueError(f"a backbone has at least one stage, got {count}")
    if count == 1:
        return ("out",)
    return (*(f"stage{i}" for i in range(1, count - 1)), "aux", "out")


class Backbone(nn.Module):
    """Feature extractor: ``forward(x)`` returns ``{"out": deepest map, "aux": the map the auxiliary head reads}``
    and the other maps named in ``stages`` (see the module docstring)."""

    def __init__(
        self, body: nn.Module, feature_info: dict[str, FeatureInfo], *, stages: Sequence[str] = ("aux", "out")
    ) -> None:
        super().__init__()
        missing = [key for key in stages if key not in feature_info]
        if missing or not stages:
            raise ValueError(
                f"stages {tuple(stages)} must be non-empty keys of feature_info ({', '.join(feature_info)})"
            )
        self.body = body
        self.feature_info = feature_info
        self.stages = tuple(stages)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.feature_info[key].channels for key in self.stages)

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return tuple(self.feature_info[key].reduction for key in self.stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.body(x)
        if isinstance(maps, (list, tuple)):
            return dict(zip(self.stages, maps, strict=True))
        return dict(maps)


@dataclass(frozen=True)
class BackboneSpec:
    """How to make one backbone from a network, e.g. torchvision's classification network."""

    constructor: Callable[..., nn.Module]  # called with weights=None
    wrap: Callable[[nn.Module, int], Backbone]  # (network, output stride) -> Backbone
    weights: WeightsEnum | None = None  # ImageNet weights behind pretrained="imagenet"; None: there are none
    dropped: tuple[str, ...] = ()  # state-dict key prefixes of the classification parts the backbone cuts off
    # loader(network, name=..., pretrained=...): loads "imagenet" or a state-dict path itself (replaces ``weights``)
    loader: Callable[..., None] | None = None
    output_strides: tuple[int, ...] = OUTPUT_STRIDES  # the strides ``wrap`` can give


# Plain dict registry (timm's idea, without string-typed configs): name -> spec or builder(output_stride).
BACKBONE_SPECS: dict[str, BackboneSpec | Callable[[int], Backbone]] = {}


def register_backbone(
    name: str,
    spec_or_builder: BackboneSpec | Callable[[int], Backbone],
    *,
    label: str | None = None,
    short: str | None = None,
) -> None:
    """Register backbone ``name``'s builder here and its names in the catalog (see the module docstring)."""
    if name in BACKBONE_SPECS:
        raise ValueError(f"backbone '{name}' is registered twice")
    if not callable(spec_or_builder) and not isinstance(spec_or_builder, BackboneSpec):
        raise TypeError(f"backbone '{name}': expected a BackboneSpec or a builder(output_stride) -> Backbone, "
                        f"got {type(spec_or_builder).__name__}")  # fmt: skip
    strides = spec_or_builder.output_strides if isinstance(spec_or_builder, BackboneSpec) else None
    catalog.claim("backbone", name, label=label, short=short, output_strides=strides)
    BACKBONE_SPECS[name] = spec_or_builder


def _is_strided(conv: nn.Conv2d) -> bool:
    return any(s != 1 for s in conv.stride)


def dilate_stages(stages: Sequence[nn.Module], *, input_stride: int, output_stride: int) -> list[int]:
    """Turn strides into dilations so the network's total stride stops at ``output_stride``.

    ``stages`` are consecutive modules (ResNet layers, MobileNet blocks) that each keep the resolution or
    halve it; ``input_stride`` is the stride of the input to the first one. Once the stride has reached
    ``output_stride``, a stage that would halve the resolution gets stride 1 instead and doubles the
    dilation, and every k×k convolution (k > 1) of that stage and all later ones takes the current
    dilation with padding ``dilation * (k - 1) // 2``, so the maps keep their size and every filter keeps
    its receptive field relative to the features it was trained on (atrous convolution: Chen et al. 2017,
    DeepLab; Yu & Koltun 2016). The whole stage takes the new dilation, as in PSPNet's dilated ResNet
    (Zhao et al. 2017). Only strides, dilations and paddings change: no weight is added or dropped.
    Returns the stride of each stage's output.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride}")
    stride, dilation, strides = input_stride, 1, []
    for stage in stages:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        if any(_is_strided(c) for c in convs):
            if stride < output_stride:
                stride *= 2
            else:
                dilation *= 2
                for conv in convs:
                    conv.stride = (1, 1)
                # Blocks that cache their stride (ResNet's BasicBlock, MobileNetV2's InvertedResidual) stay truthful.
                for block in stage.modules():
                    if isinstance(getattr(block, "stride", None), int):
                        block.stride = 1
        if dilation > 1:
            for conv in convs:
                kh, kw = conv.kernel_size
                if kh > 1 or kw > 1:
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        strides.append(stride)
    return strides


def last_channels(stage: nn.Module) -> int:
    """Output channels of a stage: every stage here ends in a BatchNorm (ResNet block, inverted residual)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot tell the output channels of {type(stage).__name__}: it has no BatchNorm2d")
    return norms[-1].num_features
