"""Data: dataset sources (Cityscapes, generated scenes, Pascal VOC, ADE20K, a folder), label sets, packing and the
training loader.

Kept light on purpose: ``segmodels --help`` imports this package, so nothing is imported here; torch is only
imported by :mod:`segmodels.data.loader` and :mod:`segmodels.data.augment`, and the Cityscapes table
(:mod:`segmodels.data.labels`) only by the Cityscapes source and the scene generator.
"""
