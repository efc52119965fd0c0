"""The formulas of the metrics, each written once for a stack of summed statistics (shape [..., *shape]), so one
dataset's sums and a thousand bootstrap resamples are scored by the same code. The definitions and the statistics
are described in :mod:`segmodels.metrics`, which lists the metrics built on these formulas."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "acc_per_class",
    "as_stack",
    "instance_iou",
    "iou_per_class",
    "mean_acc",
    "mean_boundary_iou",
    "mean_instance_iou",
    "mean_iou",
    "mean_over_classes",
    "pixel_acc",
    "ratio",
    "ratio_per_class",
]


def as_stack(matrices: Any) -> np.ndarray:
    """float64 [..., C, C] from a numpy array, a torch tensor (any device) or nested lists."""
    if hasattr(matrices, "detach"):  # a torch tensor, without importing torch here
        matrices = matrices.detach().cpu().numpy()
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"confusion matrices must be (..., C, C), got shape {m.shape}")
    return m


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (undefined, not 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def mean_over_classes(values: np.ndarray) -> np.ndarray:
    """The mean over the last axis of the defined (non-NaN) values; NaN where none is defined."""
    if values.ndim == 1:  # one matrix: the plain mean of its defined values, the bits metrics.json always held
        defined = values[~np.isnan(values)]
        return np.float64(defined.mean() if defined.size else math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: nothing defined, the mean is NaN
        return np.nanmean(values, axis=-1)


def iou_per_class(matrices: np.ndarray) -> np.ndarray:
    """[..., C]: TP / (TP + FP + FN) of each class, NaN for a class in neither truth nor prediction."""
    m = as_stack(matrices)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    return ratio(tp, m.sum(axis=-1) + m.sum(axis=-2) - tp)


def acc_per_class(matrices: np.ndarray) -> np.ndarray:
    """[..., C]: TP / (TP + FN) of each class (its recall), NaN for a class absent from the truth."""
    m = as_stack(matrices)
    return ratio(np.diagonal(m, axis1=-2, axis2=-1), m.sum(axis=-1))


def mean_iou(matrices: np.ndarray) -> np.ndarray:
    """[...]: mIoU, the mean of the defined per-class IoUs."""
    return mean_over_classes(iou_per_class(matrices))


def mean_acc(matrices: np.ndarray) -> np.ndarray:
    """[...]: mAcc, the mean of the defined per-class accuracies."""
    return mean_over_classes(acc_per_class(matrices))


def pixel_acc(matrices: np.ndarray) -> np.ndarray:
    """[...]: allAcc, ΣTP / Σ labelled pixels, NaN when nothing is labelled."""
    m = as_stack(matrices)
    return ratio(np.trace(m, axis1=-2, axis2=-1), m.sum(axis=(-2, -1)))


def instance_iou(counts: np.ndarray) -> np.ndarray:
    """[..., K]: instance-level IoU of each class (or category) from its row (weighted TP, weighted FN, FP):
    TP / (TP + FP + FN), NaN where all three are 0 (cityscapesScripts' ``getInstanceIouScoreForLabel``)."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != 3:
        raise ValueError(f"instance counts must be (..., K, 3), got shape {c.shape}")
    return ratio(c[..., 0], c.sum(axis=-1))


def mean_instance_iou(counts: np.ndarray) -> np.ndarray:
    """[...]: iIoU, the mean of the defined instance-level IoUs."""
    return mean_over_classes(instance_iou(counts))


def ratio_per_class(counts: np.ndarray) -> np.ndarray:
    """[..., C]: intersection / union from rows (intersection, union), NaN where the union is empty."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != 2:
        raise ValueError(f"(intersection, union) counts must be (..., C, 2), got shape {c.shape}")
    return ratio(c[..., 0], c[..., 1])


def mean_boundary_iou(counts: np.ndarray) -> np.ndarray:
    """[...]: mBIoU, the mean of the defined per-class Boundary IoUs."""
    return mean_over_classes(ratio_per_class(counts))
