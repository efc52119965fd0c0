"""Heads (context modules): each maps the backbone's "out" feature to ``{"out": logits, ...}`` at feature resolution.

Every head is built as ``Head(in_channels, num_classes, **options)`` with its hyper-parameters as
keyword arguments with defaults; ``in_channels`` comes from the backbone's ``feature_info``.
"""

from __future__ import annotations

from torch import nn

from segmodels.models.heads.aspp import DEEPLABV3_OPTIONS, STUDY_RATES, ASPPHead
from segmodels.models.heads.fcn import FCNHead
from segmodels.models.heads.ocr import OCRHead
from segmodels.models.heads.ppm import PPMHead

__all__ = ["DEEPLABV3_OPTIONS", "HEAD_BUILDERS", "STUDY_RATES", "ASPPHead", "FCNHead", "OCRHead", "PPMHead"]

# Plain dict registry: head name -> class.
HEAD_BUILDERS: dict[str, type[nn.Module]] = {"ppm": PPMHead, "aspp": ASPPHead, "ocr": OCRHead, "fcn": FCNHead}
