"""The study's design: the fixed comparisons the report draws, and the earlier study's published table.

Backbones are compared under one head (PSPNet's PPM, as in the earlier study), context modules on one backbone
(ResNet18). The paired differences tested (:func:`fixed_pairs`) are the backbone pairs below, every pair of
heads on that backbone, and MobileNetV3 against MobileNetV2. The rows, figures and pairs run over the catalog
(:mod:`segmodels.models.catalog`), so a backbone or head registered at run time joins its comparison.
:mod:`segmodels.study.stats` does not import the report: ``segmodels compare`` and the report's results pass it
:func:`fixed_pairs`.
"""

from __future__ import annotations

import itertools

from segmodels.models import catalog

__all__ = [
    "BACKBONE_HEAD",
    "BACKBONE_PAIRS",
    "BASELINE_HEAD",
    "CONTEXT_BACKBONE",
    "DEPTH_STEPS",
    "EARLIER_DEVICE",
    "EARLIER_STUDY",
    "MOBILE",
    "NEWER_MOBILE",
    "SPEED_REFERENCE",
    "backbone_models",
    "context_models",
    "fixed_pairs",
    "on_context_backbone",
    "under_backbone_head",
]

BACKBONE_HEAD = "ppm"  # the head under which the backbones are compared
CONTEXT_BACKBONE = "resnet18"  # the backbone on which the context modules (heads) are compared
BASELINE_HEAD = "fcn"  # the head without a context module, what the others' gain is measured from
SPEED_REFERENCE = "resnet50"  # the backbones' speed is given relative to this one
DEPTH_STEPS = (("resnet18", "resnet50"), ("resnet50", "resnet101"))  # deeper ResNets, step by step
MOBILE = ("resnet50", "mobilenetv2")  # the mobile backbone against the ResNet it replaces
NEWER_MOBILE = ("mobilenetv3", "mobilenetv2")  # the newer mobile backbone against the older
# Backbone differences a − b (mIoU points) under BACKBONE_HEAD.
BACKBONE_PAIRS = (
    ("resnet50", "resnet18"),
    ("resnet101", "resnet50"),
    ("resnet101", "resnet18"),
    ("resnet50", "mobilenetv2"),
    ("resnet18", "mobilenetv2"),
)

# The earlier study's published table (PSPNet on Cityscapes at 1024×512, NVIDIA 2080Ti), as printed.
# "miou_per_speed" is its own column, kept to show where it departs from its formula mIoU / ms × 10.
EARLIER_DEVICE = "NVIDIA 2080Ti"
EARLIER_STUDY: dict[str, dict[str, float]] = {
    "resnet18-ppm": {"miou": 62.89, "macc": 71.05, "allacc": 93.36, "latency_ms": 34, "miou_per_speed": 18.5},
    "resnet50-ppm": {"miou": 68.97, "macc": 76.67, "allacc": 94.52, "latency_ms": 79, "miou_per_speed": 8.7},
    "resnet101-ppm": {"miou": 71.07, "latency_ms": 183, "miou_per_speed": 5.45},
    "mobilenetv2-ppm": {"miou": 59.25, "latency_ms": 22, "miou_per_speed": 25.17},
    "mobilenetv3-ppm": {"miou": 56.82},
    "resnet18-aspp": {"miou": 62.09, "macc": 71.08, "allacc": 93.34},
    "resnet18-ocr": {"miou": 61.86, "macc": 70.87, "allacc": 93.31},
}


def under_backbone_head(backbone: str) -> str:
    """``"resnet50"`` → ``"resnet50-ppm"``: the backbone's model in the backbone comparison."""
    return f"{backbone}-{BACKBONE_HEAD}"


def on_context_backbone(head: str) -> str:
    """``"aspp"`` → ``"resnet18-aspp"``: the head's model in the context-module comparison."""
    return f"{CONTEXT_BACKBONE}-{head}"


def backbone_models() -> list[str]:
    """Every backbone of the catalog under the comparison's head, in study order."""
    return [under_backbone_head(b) for b in catalog.backbones()]


def context_models() -> list[str]:
    """Every head of the catalog on the comparison's backbone, in study order."""
    return [on_context_backbone(h) for h in catalog.heads()]


def fixed_pairs() -> list[tuple[str, str, str]]:
    """The discussed comparisons as (group, a, b) of {backbone}-{head} pairs, the difference being a − b:
    the backbone pairs, every pair of context modules, the newer mobile backbone against the older, and any
    other backbone of the catalog against the context backbone."""
    backbones = f"backbones ({catalog.head(BACKBONE_HEAD).label})"
    pairs = [(backbones, under_backbone_head(a), under_backbone_head(b)) for a, b in BACKBONE_PAIRS]
    modules = f"context modules ({catalog.backbone(CONTEXT_BACKBONE).label})"
    pairs += [(modules, a, b) for a, b in itertools.combinations(context_models(), 2)]
    newer, older = NEWER_MOBILE
    pairs.append((catalog.backbone(newer).label, under_backbone_head(newer), under_backbone_head(older)))
    # A backbone the pairs above do not name (one registered by a user) is compared with the context backbone.
    named = {b for pair in (*BACKBONE_PAIRS, NEWER_MOBILE) for b in pair} | {CONTEXT_BACKBONE}
    pairs += [(backbones, under_backbone_head(b), under_backbone_head(CONTEXT_BACKBONE))
              for b in catalog.backbones() if b not in named]  # fmt: skip
    return pairs
