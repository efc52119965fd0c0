"""Backbones: torchvision classification networks, dilated to output stride 8 (or 16, 32), cut before the classifier.

``build_backbone(name, output_stride=8, pretrained=None)`` returns a :class:`Backbone` whose forward
gives ``{"out": ..., "aux": ...}`` and whose ``feature_info`` declares both maps' channels and reduction.
Any backbone registered with :func:`register_backbone` (a spec or a plain builder, see ``base``) is built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from segmodels.models.backbones import mobilenet, resnet  # noqa: F401  (fill the registry)
from segmodels.models.backbones.base import (
    BACKBONE_SPECS,
    OUTPUT_STRIDES,
    Backbone,
    BackboneSpec,
    FeatureInfo,
    dilate_stages,
    register_backbone,
)
from segmodels.models.backbones.weights import imagenet_file, load_pretrained, read_state_dict

__all__ = [
    "BACKBONE_SPECS",
    "OUTPUT_STRIDES",
    "Backbone",
    "BackboneSpec",
    "FeatureInfo",
    "build_backbone",
    "dilate_stages",
    "imagenet_file",
    "read_state_dict",
    "register_backbone",
]


def build_backbone(name: str, *, output_stride: int = 8, pretrained: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; ``pretrained`` is None (random init), "imagenet" or a state-dict path."""
    if name not in BACKBONE_SPECS:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(BACKBONE_SPECS)}")
    spec = BACKBONE_SPECS[name]
    if not isinstance(spec, BackboneSpec):  # a plain builder(output_stride): no weights to load
        if pretrained is not None:
            raise ValueError(f"backbone '{name}' was registered as a builder without weights: pretrained must be "
                             f"None, got {str(pretrained)!r}")  # fmt: skip
        backbone = spec(output_stride)
    else:
        model = spec.constructor(weights=None)
        if pretrained == "imagenet" and spec.weights is None:
            raise ValueError(f"backbone '{name}' has no ImageNet weights: pretrained must be None or a state-dict path")
        if pretrained is not None:
            load_pretrained(model, name=name, weights=spec.weights, dropped=spec.dropped, pretrained=pretrained)
        backbone = spec.wrap(model, output_stride)
    info = getattr(backbone, "feature_info", None)
    if not isinstance(backbone, nn.Module) or not isinstance(info, Mapping) or not {"out", "aux"} <= set(info):
        raise TypeError(
            f"backbone '{name}' built a {type(backbone).__name__} without feature_info for 'out' and "
            "'aux': a backbone is a segmodels.models.backbones.Backbone (or has its feature_info)"
        )
    return backbone
