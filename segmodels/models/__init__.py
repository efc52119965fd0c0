"""The model zoo: backbones × heads, named ``{backbone}-{head}`` (e.g. ``resnet50-ppm``).

This module is light (no torch import) so configs can validate model names cheaply; ``build_model``,
``SegmentationModel``, ``count_parameters`` and ``count_flops`` are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segmodels.models.complexity import count_flops, count_parameters
    from segmodels.models.segmentor import SegmentationModel, build_model

__all__ = [
    "BACKBONES",
    "CASCADE_HEADS",
    "HEADS",
    "HEAD_OPTIONS",
    "SegmentationModel",
    "build_model",
    "count_flops",
    "count_parameters",
    "list_models",
    "parse_model_name",
]

BACKBONES = ("resnet18", "resnet50", "resnet101", "mobilenetv2", "mobilenetv3")
HEADS = ("ppm", "aspp", "ocr", "fcn")
# Heads that read the auxiliary head's logits (OCR's soft object regions): they need aux=True, in eval mode too.
CASCADE_HEADS = ("ocr",)
# Each head's keyword options as (config type, default), so a study's model.head_options is checked at load
# without importing torch. The head classes' signatures are the truth; tests/test_models.py holds this to them.
HEAD_OPTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "ppm": {"bins": (list[int], (1, 2, 3, 6)), "bin_channels": (int | None, None), "channels": (int, 512),
            "dropout": (float, 0.1)},
    "aspp": {"rates": (list[int], (1, 2, 3, 6)), "image_pool": (bool, False), "channels": (int, 256),
             "project_dropout": (float, 0.5), "dropout": (float, 0.1)},
    "ocr": {"mid_channels": (int, 512), "key_channels": (int, 256), "dropout": (float, 0.1)},
    "fcn": {"channels": (int, 512), "dropout": (float, 0.1)},
}  # fmt: skip

_LAZY = {
    "SegmentationModel": "segmodels.models.segmentor",
    "build_model": "segmodels.models.segmentor",
    "count_flops": "segmodels.models.complexity",
    "count_parameters": "segmodels.models.complexity",
}


def list_models() -> list[str]:
    """Every ``{backbone}-{head}`` name, backbones in study order, heads within each."""
    return [f"{backbone}-{head}" for backbone in BACKBONES for head in HEADS]


def parse_model_name(name: str) -> tuple[str, str]:
    """``"resnet18-ppm"`` → ``("resnet18", "ppm")``; anything else raises ValueError listing the valid names."""
    backbone, sep, head = str(name).partition("-")
    if not sep or backbone not in BACKBONES or head not in HEADS:
        raise ValueError(
            f"unknown model '{name}': expected {{backbone}}-{{head}} with backbone one of {', '.join(BACKBONES)} "
            f"and head one of {', '.join(HEADS)}"
        )
    return backbone, head


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
