"""Training, evaluation and benchmarking of segmentation models (submodules import torch; this package does not)."""

__all__: list[str] = []
