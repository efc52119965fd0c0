"""Backbones: torchvision classification networks, dilated to output stride 8 (or 16, 32), cut before the classifier.

``build_backbone(name, output_stride=8, pretrained=None)`` returns a :class:`Backbone` whose forward
gives ``{"out": ..., "aux": ...}`` and whose ``feature_info`` declares both maps' channels and reduction.
"""

from __future__ import annotations

from pathlib import Path

from segmodels.models.backbones import mobilenet, resnet  # noqa: F401  (fill the registry)
from segmodels.models.backbones.base import (
    BACKBONE_SPECS,
    OUTPUT_STRIDES,
    Backbone,
    BackboneSpec,
    FeatureInfo,
    dilate_stages,
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
]


def build_backbone(name: str, *, output_stride: int = 8, pretrained: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; ``pretrained`` is None (random init), "imagenet" or a state-dict path."""
    if name not in BACKBONE_SPECS:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(BACKBONE_SPECS)}")
    spec = BACKBONE_SPECS[name]
    model = spec.constructor(weights=None)
    if pretrained is not None:
        load_pretrained(model, name=name, weights=spec.weights, dropped=spec.dropped, pretrained=pretrained)
    return spec.wrap(model, output_stride)
