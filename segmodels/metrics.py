"""Semantic-segmentation scores from confusion matrices, and the one list of the study's metrics.

The matrix is accumulated on the device with one ``torch.bincount`` per batch (rows are ground truth,
columns prediction, pixels labelled ``ignore_index`` left out) and summed across DDP ranks by
``reduce_()``; every score is then derived from it alone, as in the Cityscapes benchmark.

Definitions, per class c with TP = M[c, c], FN = row sum - TP, FP = column sum - TP:

* IoU(c) = TP / (TP + FP + FN); accuracy(c) = TP / (TP + FN) (the class's recall);
* mIoU and mAcc are the means of the defined per-class values; allAcc = ΣTP / Σ labelled pixels.

Undefined values are NaN and left out of the means, never counted as 0:

* a class absent from both the ground truth and the prediction has IoU and accuracy NaN and is listed
  in ``absent``;
* a class predicted somewhere but absent from the ground truth has IoU 0 (every pixel given to it is
  wrong) and accuracy NaN (there is no pixel of it to recall), and is listed in ``no_truth``. mAcc then
  averages over the classes that occur in the ground truth, as mmsegmentation and the row-normalised
  Cityscapes matrix do; torchmetrics' ``MulticlassAccuracy`` would count such a class as 0 instead.

The formulas are written once, for a stack of matrices (shape [..., C, C]), so that one full-set matrix
(:func:`compute_metrics`) and a thousand bootstrap resamples (:func:`metrics_of_matrices`) are scored by the
same code. :data:`METRICS` is the ordered list of the study's scores (key, label, digits, direction, formula):
the summary's columns, the bootstrap intervals, the report's tables and the logged scores all read it, so a
new metric is a formula plus one :func:`register_metric` line.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "METRICS",
    "ConfusionMatrix",
    "Metric",
    "MetricList",
    "acc_per_class",
    "batch_confusion",
    "class_names_for",
    "compute_metrics",
    "iou_per_class",
    "majority_baseline",
    "mean_acc",
    "mean_iou",
    "mean_over_classes",
    "metric_keys",
    "metric_scores",
    "metrics_of_matrices",
    "pixel_acc",
    "register_metric",
    "unregister_metric",
]

# --- the formulas, on a stack of confusion matrices [..., C, C] (rows ground truth) ---------------------------


def _stack(matrices: Any) -> np.ndarray:
    """float64 [..., C, C] from a numpy array, a torch tensor (any device) or nested lists."""
    if hasattr(matrices, "detach"):  # a torch tensor, without importing torch here
        matrices = matrices.detach().cpu().numpy()
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"confusion matrices must be (..., C, C), got shape {m.shape}")
    return m


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
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
    m = _stack(matrices)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    return _ratio(tp, m.sum(axis=-1) + m.sum(axis=-2) - tp)


def acc_per_class(matrices: np.ndarray) -> np.ndarray:
    """[..., C]: TP / (TP + FN) of each class (its recall), NaN for a class absent from the truth."""
    m = _stack(matrices)
    return _ratio(np.diagonal(m, axis1=-2, axis2=-1), m.sum(axis=-1))


def mean_iou(matrices: np.ndarray) -> np.ndarray:
    """[...]: mIoU, the mean of the defined per-class IoUs."""
    return mean_over_classes(iou_per_class(matrices))


def mean_acc(matrices: np.ndarray) -> np.ndarray:
    """[...]: mAcc, the mean of the defined per-class accuracies."""
    return mean_over_classes(acc_per_class(matrices))


def pixel_acc(matrices: np.ndarray) -> np.ndarray:
    """[...]: allAcc, ΣTP / Σ labelled pixels, NaN when nothing is labelled."""
    m = _stack(matrices)
    return _ratio(np.trace(m, axis1=-2, axis2=-1), m.sum(axis=(-2, -1)))


# --- the list of metrics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One score of the study: ``formula`` maps confusion matrices [..., C, C] to fractions [...] (NaN where
    undefined); tables show it in percent with ``digits`` decimals under ``label``."""

    key: str  # metrics.json key and summary.csv column stem: {key}, {key}_std, {key}_lo, {key}_hi
    label: str
    formula: Callable[[np.ndarray], np.ndarray]
    digits: int = 2
    higher_is_better: bool = True
    training: bool = True  # also scored on the validation split while training (train_log.csv's val_{key})


# keys a metric must not shadow: compute_metrics' and metrics.json's others, one-word summary.csv columns (a metric
# key has no underscore, so {key}_std and the like cannot meet a column either)
_RESERVED = {"iou", "acc", "absent", "class", "model", "backbone", "head", "variant", "seeds", "status", "fps",
             "gflops", "device", "packed", "protocol", "cost", "settings", "checkpoint", "iteration", "seconds",
             "created"}  # fmt: skip


class MetricList:
    """The ordered metrics of the study; iterating yields :class:`Metric`, ``keys()`` their keys."""

    def __init__(self, metrics: Sequence[Metric] = ()) -> None:
        self._metrics: dict[str, Metric] = {}
        for metric in metrics:
            self.add(metric)

    def add(self, metric: Metric) -> Metric:
        """Append ``metric`` after checking its key, label and formula (on a 2-class matrix)."""
        if not re.fullmatch(r"[a-z][a-z0-9]*", metric.key) or metric.key in _RESERVED:
            raise ValueError(f"metric key {metric.key!r} must be lowercase letters and digits, not one of "
                             f"{sorted(_RESERVED)}")  # fmt: skip
        if metric.key in self._metrics:
            raise ValueError(f"metric {metric.key!r} is already registered; unregister it first")
        if not metric.label or metric.digits < 0:
            raise ValueError(f"metric {metric.key!r}: needs a label and digits >= 0, got {metric.label!r}, "
                             f"{metric.digits}")  # fmt: skip
        probe = np.array([[[3.0, 1.0], [1.0, 2.0]]] * 2)
        shape = np.shape(metric.formula(probe))
        if shape != (2,):
            raise ValueError(f"metric {metric.key!r}: its formula must map (..., C, C) matrices to (...) scores, "
                             f"gave shape {shape} for (2, 2, 2)")  # fmt: skip
        self._metrics[metric.key] = metric
        return metric

    def remove(self, key: str) -> Metric:
        """Take metric ``key`` off the list (tests that added one)."""
        metric = self[key]
        del self._metrics[key]
        return metric

    def keys(self) -> tuple[str, ...]:
        return tuple(self._metrics)

    def __getitem__(self, key: str) -> Metric:
        if key not in self._metrics:
            raise KeyError(f"no metric {key!r}; registered: {', '.join(self._metrics)}")
        return self._metrics[key]

    def __iter__(self) -> Iterator[Metric]:
        return iter(tuple(self._metrics.values()))

    def __len__(self) -> int:
        return len(self._metrics)

    def __contains__(self, key: object) -> bool:
        return key in self._metrics


METRICS = MetricList([
    Metric("miou", "mIoU", mean_iou),
    Metric("macc", "mAcc", mean_acc, training=False),
    Metric("allacc", "allAcc", pixel_acc),
])  # fmt: skip


def register_metric(key: str, label: str, formula: Callable[[np.ndarray], np.ndarray], **options: Any) -> Metric:
    """Add a metric to :data:`METRICS` (``options``: ``digits``, ``higher_is_better``, ``training``)."""
    return METRICS.add(Metric(key, label, formula, **options))


def unregister_metric(key: str) -> Metric:
    """Remove metric ``key`` from :data:`METRICS`."""
    return METRICS.remove(key)


def metric_keys(*, training: bool = False) -> tuple[str, ...]:
    """The metric keys in order; ``training``: only those scored while training."""
    return tuple(m.key for m in METRICS if m.training or not training)


def metrics_of_matrices(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric (fractions) of a stack of (..., C, C) confusion matrices, each shaped (...)."""
    m = _stack(matrices)
    return {metric.key: np.asarray(metric.formula(m), dtype=np.float64) for metric in METRICS}


def metric_scores(
    scores: Mapping[str, Any], prefix: str = "", *, training: bool = False, finite: bool = False
) -> dict[str, float | None]:
    """The metrics of ``scores`` (a :func:`compute_metrics` result or a metrics.json), in order, keyed
    ``{prefix}{key}``; a metric ``scores`` lacks is None. ``training``: only those scored while training;
    ``finite``: leave out undefined (None, NaN) scores, as MLflow takes numbers only."""
    out = {}
    for key in metric_keys(training=training):
        value = scores.get(key)
        value = None if value is None else float(value)
        if not finite or (value is not None and math.isfinite(value)):
            out[f"{prefix}{key}"] = value
    return out


# --- confusion matrices on the device ----------------------------------------------------------------------------


def batch_confusion(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image confusion matrices of a batch: int64 (N, C, C), rows ground truth, columns prediction.

    ``pred`` and ``target`` hold class indices of the same shape (N, H, W) (or (H, W), taken as N = 1);
    pixels whose target is ``ignore_index`` are skipped. Any other label or prediction outside
    [0, num_classes) raises ValueError rather than landing in a wrong cell.
    """
    import torch

    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if target.dim() == 2:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    n = target.shape[0]
    c = num_classes
    pred = pred.reshape(n, -1).long()
    target = target.reshape(n, -1).long()
    keep = target != ignore_index
    t, p = target[keep], pred[keep]
    if ((t < 0) | (t >= c) | (p < 0) | (p >= c)).any():  # one device sync; bincount syncs anyway
        bad_t = t[(t < 0) | (t >= c)].unique()[:5].tolist()
        bad_p = p[(p < 0) | (p >= c)].unique()[:5].tolist()
        raise ValueError(
            f"labels must lie in [0, {c}) or equal ignore_index {ignore_index}; "
            f"found target values {bad_t} and prediction values {bad_p}"
        )
    image = torch.arange(n, device=target.device).unsqueeze(1).expand_as(target)[keep]
    counts = torch.bincount((image * c + t) * c + p, minlength=n * c * c)
    return counts.view(n, c, c)


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix on ``device``; rows are ground truth."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255, device: str | torch.device = "cpu") -> None:
        import torch

        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch; ``pred`` may be class indices shaped like ``target`` or logits (N, C, H, W).

        Returns the batch's per-image matrices (N, C, C) so a caller can keep them.
        """
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        per_image = batch_confusion(pred, target.to(pred.device), self.num_classes, self.ignore_index)
        self.add_(per_image.sum(dim=0))
        return per_image

    def add_(self, matrix: torch.Tensor) -> ConfusionMatrix:
        """Add an already computed (C, C) matrix."""
        import torch

        if tuple(matrix.shape) != (self.num_classes, self.num_classes):
            raise ValueError(f"expected a {self.num_classes}x{self.num_classes} matrix, got {tuple(matrix.shape)}")
        self.matrix += matrix.to(device=self.matrix.device, dtype=torch.int64)
        return self

    def reduce_(self) -> ConfusionMatrix:
        """Sum the matrix over all DDP ranks (no-op outside an initialised process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return compute_metrics(self.matrix, class_names)


# --- the scores of one matrix --------------------------------------------------------------------------------------


def class_names_for(num_classes: int) -> list[str]:
    """``class{i}``: the names where no label set is known (a dataset's names are in its packed manifest)."""
    from segmodels.data.labelset import names_or_indices

    return names_or_indices(None, num_classes)


def compute_metrics(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of a (C, C) confusion matrix (rows ground truth), as fractions in [0, 1].

    Keys: every metric of :data:`METRICS` in order (``miou``, ``macc``, ``allacc``: floats, NaN when nothing is
    labelled), ``iou``, ``acc`` (per-class lists with NaN where undefined), ``absent`` (names of classes in
    neither prediction nor truth, left out of both means), ``no_truth`` (names of classes predicted but absent
    from the truth: IoU 0, accuracy NaN), ``class_names``, ``labelled_pixels``. See the module docstring for
    the definitions.
    """
    m = _stack(matrix)
    if m.ndim != 2:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    c = m.shape[0]
    names = list(class_names) if class_names is not None else class_names_for(c)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class confusion matrix")
    truth, predicted = m.sum(axis=1), m.sum(axis=0)
    return {
        **{key: float(value) for key, value in metrics_of_matrices(m).items()},
        "iou": [float(v) for v in iou_per_class(m)],
        "acc": [float(v) for v in acc_per_class(m)],
        "absent": [names[i] for i in range(c) if truth[i] == 0 and predicted[i] == 0],
        "no_truth": [names[i] for i in range(c) if truth[i] == 0 and predicted[i] > 0],
        "class_names": names,
        "labelled_pixels": int(truth.sum()),
    }


def majority_baseline(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The scores of a constant prediction of the most frequent true class, from any model's confusion matrix
    (its row sums are the ground truth): the chance level a trained model has to clear. Adds ``class``, the
    name of the predicted class."""
    truth = _stack(matrix).sum(axis=-1)
    if truth.ndim != 1:
        raise ValueError(f"a confusion matrix must be square, got shape {np.shape(matrix)}")
    constant = np.zeros((len(truth), len(truth)))
    constant[:, int(np.argmax(truth))] = truth
    scores = compute_metrics(constant, class_names)
    return {**scores, "class": scores["class_names"][int(np.argmax(truth))]}
