"""Cityscapes data: labels, the raw layout, the scene generator, packing and the training loader.

Kept light on purpose: ``segmodels --help`` imports this package, so torch is only imported by
:mod:`segmodels.data.loader` and :mod:`segmodels.data.augment`.
"""

from segmodels.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "colorize"]
