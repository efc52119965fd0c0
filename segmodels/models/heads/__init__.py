"""Heads (context modules): each maps the backbone's "out" feature to ``{"out": logits, ...}`` at feature resolution.

Every head is built as ``Head(in_channels, num_classes, **options)`` with its hyper-parameters as
keyword-only arguments with defaults; ``in_channels`` comes from the backbone's ``feature_info``. A cascade
head is called as ``head(features, aux_logits)``, any other as ``head(features)``. A multi-stage head (a class
attribute ``reads_stages = True``, SegFormer's MLP decoder) is built with the backbone's ``stage_channels`` and
called with the list of its stage maps, shallow to deep (``head(stages)``); its logits are at the first stage's
resolution. A head class may give per-backbone defaults of its options in ``BACKBONE_OPTIONS``
(``{backbone: {option: value}}``); a config's ``model.head_options`` override them.

``register_head(name, head_class, *, label=None, short=None, options=None, cascade=None)`` puts a head class in
``HEAD_BUILDERS`` and its names in :mod:`segmodels.models.catalog`: label (and short name, options, cascade)
are required for a name the catalog lacks and must match for a catalogued one. ``options`` lists the keyword
options a config may set, ``{option: (config type, default)}``; each must be a keyword-only parameter of the
class with that default.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from segmodels.models import catalog
from segmodels.models.heads.aspp import DEEPLABV3_OPTIONS, STUDY_RATES, ASPPHead
from segmodels.models.heads.fcn import FCNHead
from segmodels.models.heads.ocr import OCRHead
from segmodels.models.heads.ppm import PPMHead
from segmodels.models.heads.segformer import SegFormerHead

__all__ = [
    "DEEPLABV3_OPTIONS",
    "HEAD_BUILDERS",
    "STUDY_RATES",
    "ASPPHead",
    "FCNHead",
    "OCRHead",
    "PPMHead",
    "SegFormerHead",
    "backbone_options",
    "keyword_options",
    "reads_stages",
    "register_head",
]

# Plain dict registry: head name -> class.
HEAD_BUILDERS: dict[str, type[nn.Module]] = {}


def keyword_options(head_class: type[nn.Module]) -> dict[str, Any]:
    """The keyword-only parameters of a head class with their defaults: the options it can be built with."""
    params = inspect.signature(head_class).parameters
    return {name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def reads_stages(head_class: type[nn.Module]) -> bool:
    """Whether the head is a multi-stage head (built with the stage channels, called with the stage maps)."""
    return bool(getattr(head_class, "reads_stages", False))


def backbone_options(head_class: type[nn.Module], backbone: str) -> dict[str, Any]:
    """The head's own defaults for ``backbone`` (its ``BACKBONE_OPTIONS``), e.g. SegFormer's 768 channels on MiT-B2."""
    return dict(getattr(head_class, "BACKBONE_OPTIONS", {}).get(backbone, {}))


def register_head(
    name: str,
    head_class: type[nn.Module],
    *,
    label: str | None = None,
    short: str | None = None,
    options: Mapping[str, tuple[Any, Any]] | None = None,
    cascade: bool | None = None,
) -> None:
    """Register head ``name``'s class here and its names in the catalog (see the module docstring)."""
    if name in HEAD_BUILDERS:
        raise ValueError(f"head '{name}' is registered twice")
    if not callable(head_class):
        raise TypeError(f"head '{name}': expected a head class, got {type(head_class).__name__}")
    listed = options if options is not None else catalog.head(name).options if name in catalog.heads() else {}
    accepted = keyword_options(head_class)
    for option, (_, default) in listed.items():
        if option not in accepted or accepted[option] != default:
            raise ValueError(f"head '{name}': option '{option}' with default {default!r} is not a keyword-only "
                             f"parameter of {head_class.__name__} with that default; its options: {accepted}")  # fmt: skip
    catalog.claim("head", name, label=label, short=short, options=options, cascade=cascade)
    HEAD_BUILDERS[name] = head_class


for _name, _class in (("ppm", PPMHead), ("aspp", ASPPHead), ("ocr", OCRHead), ("fcn", FCNHead),
                      ("segformer", SegFormerHead)):
    register_head(_name, _class)
