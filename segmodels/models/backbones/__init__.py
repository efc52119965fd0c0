"""Backbones: torchvision classification networks, dilated to output stride 8 (or 16, 32), cut before the classifier;
the ResNet-V1c family of mmsegmentation's results (``resnet_v1c``: timm's deep-stem ResNets, dilated its way);
SegFormer's Mix Transformer encoders (``mit``, output stride 32); and any timm model with ``features_only``.

``build_backbone(name, output_stride=8, pretrained=None)`` returns a :class:`Backbone` whose forward
gives ``{"out": ..., "aux": ...}`` and its other stages, and whose ``feature_info`` declares every map's channels
and reduction (the stage contract: ``base``). Any backbone registered with :func:`register_backbone` (a spec or a
plain builder, see ``base``) is built here, and so is ``"timm:<model>"`` or a catalogued alias of a timm model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from segmodels.models import catalog
from segmodels.models.backbones import mit, mobilenet, resnet, resnet_v1c  # noqa: F401  (fill the registry)
from segmodels.models.backbones.base import (
    BACKBONE_SPECS,
    OUTPUT_STRIDES,
    Backbone,
    BackboneSpec,
    FeatureInfo,
    dilate_stages,
    register_backbone,
    stage_keys,
)
from segmodels.models.backbones.timm_encoders import TIMM_PREFIX, build_timm_backbone, timm_name_of
from segmodels.models.backbones.weights import imagenet_file, load_pretrained, read_state_dict

__all__ = [
    "BACKBONE_SPECS",
    "OUTPUT_STRIDES",
    "Backbone",
    "BackboneSpec",
    "FeatureInfo",
    "TIMM_PREFIX",
    "build_backbone",
    "build_timm_backbone",
    "dilate_stages",
    "imagenet_file",
    "read_state_dict",
    "register_backbone",
    "stage_keys",
    "timm_name_of",
]


def build_backbone(name: str, *, output_stride: int = 8, pretrained: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; ``pretrained`` is None (random init), "imagenet" or a state-dict path."""
    timm_model = timm_name_of(name)
    if timm_model is not None:
        return build_timm_backbone(timm_model, output_stride=output_stride, pretrained=pretrained)
    if name not in BACKBONE_SPECS:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(BACKBONE_SPECS)} or timm:<model>")
    spec = BACKBONE_SPECS[name]
    entry = catalog.backbone(name) if name in catalog.backbones() else None
    strides = (
        spec.output_strides if isinstance(spec, BackboneSpec) else entry.output_strides if entry else OUTPUT_STRIDES
    )
    if output_stride not in strides:
        raise ValueError(
            f"backbone '{name}' ({entry.label if entry else name}) can be built at output stride "
            f"{' or '.join(map(str, strides))} only, got {output_stride}: set model.output_stride: {strides[-1]} "
            f"for its runs (e.g. {{{name}-ppm: {{model.output_stride: {strides[-1]}}}}} in models)"
        )
    if not isinstance(spec, BackboneSpec):  # a plain builder(output_stride): no weights to load
        if pretrained is not None:
            raise ValueError(f"backbone '{name}' was registered as a builder without weights: pretrained must be "
                             f"None, got {str(pretrained)!r}")  # fmt: skip
        backbone = spec(output_stride)
    else:
        model = spec.constructor(weights=None)
        if spec.loader is not None:
            if pretrained is not None:
                spec.loader(model, name=name, pretrained=pretrained)
        elif pretrained == "imagenet" and spec.weights is None:
            raise ValueError(f"backbone '{name}' has no ImageNet weights: pretrained must be None or a state-dict path")
        elif pretrained is not None:
            load_pretrained(model, name=name, weights=spec.weights, dropped=spec.dropped, pretrained=pretrained)
        backbone = spec.wrap(model, output_stride)
    info = getattr(backbone, "feature_info", None)
    if not isinstance(backbone, nn.Module) or not isinstance(info, Mapping) or not {"out", "aux"} <= set(info):
        raise TypeError(
            f"backbone '{name}' built a {type(backbone).__name__} without feature_info for 'out' and "
            "'aux': a backbone is a segmodels.models.backbones.Backbone (or has its feature_info)"
        )
    return backbone
