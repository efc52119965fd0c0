"""The model zoo: backbones × heads, named ``{backbone}-{head}`` (e.g. ``resnet50-ppm``).

The names live in :mod:`segmodels.models.catalog` (torch-free); the builders in the registries of the backbones
and heads packages. ``register_backbone`` / ``register_head`` add a model of your own to both (see the catalog's
docstring). This module is light (no torch import) so configs can validate model names cheaply; ``build_model``,
``SegmentationModel``, ``count_parameters``, ``count_flops`` and the ``register_*`` functions are imported on
first use. ``BACKBONES``, ``HEADS``, ``CASCADE_HEADS`` and ``HEAD_OPTIONS`` are read from the catalog on each access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segmodels.models import catalog
from segmodels.models.catalog import list_models, parse_model_name

if TYPE_CHECKING:
    from segmodels.models.backbones.base import register_backbone
    from segmodels.models.complexity import count_flops, count_parameters
    from segmodels.models.heads import register_head
    from segmodels.models.segmentor import SegmentationModel, build_model

__all__ = [
    "SegmentationModel",
    "build_model",
    "catalog",
    "count_flops",
    "count_parameters",
    "list_models",
    "parse_model_name",
    "register_backbone",
    "register_head",
]

_LAZY = {
    "SegmentationModel": "segmodels.models.segmentor",
    "build_model": "segmodels.models.segmentor",
    "count_flops": "segmodels.models.complexity",
    "count_parameters": "segmodels.models.complexity",
    "register_backbone": "segmodels.models.backbones.base",
    "register_head": "segmodels.models.heads",
}
# Names of the earlier flat registry, each a snapshot of the catalog taken when it is read.
_LIVE = {
    "BACKBONES": catalog.backbones,
    "HEADS": catalog.heads,
    "CASCADE_HEADS": catalog.cascade_heads,
    "HEAD_OPTIONS": lambda: {name: dict(catalog.head(name).options) for name in catalog.heads()},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
