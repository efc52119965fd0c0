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

Statistics beyond the confusion matrix. A metric names the per-image sufficient statistics it is a formula of
(``inputs``; by default the confusion matrix alone). All of them are sums over images, so a dataset's value is the
sum of its images' and a bootstrap resample's the count-weighted sum (:mod:`segmodels.study.stats`); the evaluation
counts them on the device in the same pass (:mod:`segmodels.scoring`):

* ``confusion`` (C, C): pixel counts, rows ground truth;
* ``category_confusion`` (G, G): the same with classes merged into the Cityscapes benchmark's 7 categories;
* ``instances`` (K, 3): per instance class, the instance-weighted true positives and false negatives and the
  (unweighted) false positives, as cityscapesScripts' ``evalPixelLevelSemanticLabeling`` counts them (see
  :mod:`segmodels.scoring`); ``instance_categories`` (G', 3) the same for the categories whose classes all have
  instances (human, vehicle);
* ``boundary`` (C, 2): per class, the intersection and union of the ground-truth and predicted boundary regions
  (:mod:`segmodels.boundary`).

A metric whose statistics a dataset lacks (no instance ids outside Cityscapes, no categories outside its label set)
is undefined (NaN), shown blank, never 0. The Cityscapes benchmark's four numbers are ``miou`` (IoU class),
``iiou`` (iIoU class), ``miou_category`` and ``iiou_category``; ``biou`` is the mean Boundary IoU over classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segmodels.metric_formulas import (
    acc_per_class,
    as_stack,
    instance_iou,
    iou_per_class,
    mean_acc,
    mean_boundary_iou,
    mean_instance_iou,
    mean_iou,
    mean_over_classes,
    pixel_acc,
    ratio_per_class,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "METRICS",
    "ConfusionMatrix",
    "Metric",
    "MetricList",
    "STATISTICS",
    "acc_per_class",
    "batch_confusion",
    "class_names_for",
    "compute_metrics",
    "instance_iou",
    "iou_per_class",
    "majority_baseline",
    "mean_acc",
    "mean_iou",
    "mean_over_classes",
    "metrics_of",
    "metric_keys",
    "metric_scores",
    "metrics_of_matrices",
    "pixel_acc",
    "ratio_per_class",
    "register_metric",
    "unregister_metric",
]

# --- the list of metrics ---------------------------------------------------------------------------------------


# The per-image statistics a metric may be a formula of, with a (2, ..., ) probe each (two images) that a
# registered formula must map to two scores. See the module docstring for what each counts.
STATISTICS: dict[str, np.ndarray] = {
    "confusion": np.array([[[3.0, 1.0], [1.0, 2.0]]] * 2),
    "category_confusion": np.array([[[3.0, 1.0], [1.0, 2.0]]] * 2),
    "instances": np.array([[[2.5, 0.5, 1.0]]] * 2),
    "instance_categories": np.array([[[2.5, 0.5, 1.0]]] * 2),
    "boundary": np.array([[[1.0, 2.0], [0.0, 1.0]]] * 2),
}


@dataclass(frozen=True)
class Metric:
    """One score of the study: ``formula`` maps the per-image statistics named in ``inputs`` (by default confusion
    matrices [..., C, C]), summed over images, to fractions [...] (NaN where undefined); tables show it in percent
    with ``digits`` decimals under ``label``."""

    key: str  # metrics.json key and summary.csv column stem: {key}, {key}_std, {key}_lo, {key}_hi
    label: str
    formula: Callable[..., np.ndarray]
    digits: int = 2
    higher_is_better: bool = True
    training: bool = True  # also scored on the validation split while training (train_log.csv's val_{key})
    inputs: tuple[str, ...] = ("confusion",)  # the statistics passed to formula, in order (keys of STATISTICS)
    group: str = "summary"  # the report's table: "summary" (performance) or "benchmark" (small objects, boundaries)


# keys a metric must not shadow: compute_metrics' and metrics.json's others, summary.csv's other columns
_RESERVED = {"iou", "acc", "iiou_per_class", "biou_per_class", "absent", "class", "model", "backbone", "head",
             "variant", "seeds", "status", "fps", "gflops", "device", "packed", "protocol", "cost", "settings",
             "checkpoint", "iteration", "seconds", "created", "miou_protocol", "miou_packed", "miou_per_speed",
             "miou_boot_std", "boot_resamples"}  # fmt: skip
_SUFFIXES = ("", "_std", "_lo", "_hi")  # summary.csv's columns of a metric key


class MetricList:
    """The ordered metrics of the study; iterating yields :class:`Metric`, ``keys()`` their keys."""

    def __init__(self, metrics: Sequence[Metric] = ()) -> None:
        self._metrics: dict[str, Metric] = {}
        for metric in metrics:
            self.add(metric)

    def add(self, metric: Metric) -> Metric:
        """Append ``metric`` after checking its key, label and formula (on a 2-class matrix)."""
        if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*", metric.key) or metric.key in _RESERVED:
            raise ValueError(f"metric key {metric.key!r} must be lowercase letters and digits (words joined by "
                             f"'_'), not one of {sorted(_RESERVED)}")  # fmt: skip
        if metric.key in self._metrics:
            raise ValueError(f"metric {metric.key!r} is already registered; unregister it first")
        columns = {metric.key + end for end in _SUFFIXES}
        taken = {other + end for other in self._metrics for end in _SUFFIXES} | _RESERVED
        if columns & taken:
            raise ValueError(f"metric key {metric.key!r}: its summary column {sorted(columns & taken)[0]!r} is "
                             "already another metric's or summary.csv's")  # fmt: skip
        if not metric.label or metric.digits < 0:
            raise ValueError(f"metric {metric.key!r}: needs a label and digits >= 0, got {metric.label!r}, "
                             f"{metric.digits}")  # fmt: skip
        unknown = [name for name in metric.inputs if name not in STATISTICS]
        if unknown or not metric.inputs:
            raise ValueError(f"metric {metric.key!r}: inputs {list(metric.inputs)} must be statistics of "
                             f"{list(STATISTICS)}")  # fmt: skip
        shape = np.shape(metric.formula(*(STATISTICS[name] for name in metric.inputs)))
        if shape != (2,):
            raise ValueError(f"metric {metric.key!r}: its formula must map statistics of (...) images to (...) "
                             f"scores, gave shape {shape} for 2 images")  # fmt: skip
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
    Metric("iiou", "iIoU", mean_instance_iou, training=False, inputs=("instances",), group="benchmark"),
    Metric("miou_category", "IoU cat", mean_iou, training=False, inputs=("category_confusion",), group="benchmark"),
    Metric("iiou_category", "iIoU cat", mean_instance_iou, training=False, inputs=("instance_categories",),
           group="benchmark"),
    Metric("biou", "BIoU", mean_boundary_iou, training=False, inputs=("boundary",), group="benchmark"),
])  # fmt: skip


def register_metric(key: str, label: str, formula: Callable[..., np.ndarray], **options: Any) -> Metric:
    """Add a metric to :data:`METRICS` (``options``: ``digits``, ``higher_is_better``, ``training``, ``inputs``)."""
    return METRICS.add(Metric(key, label, formula, **options))


def unregister_metric(key: str) -> Metric:
    """Remove metric ``key`` from :data:`METRICS`."""
    return METRICS.remove(key)


def metric_keys(*, training: bool = False) -> tuple[str, ...]:
    """The metric keys in order; ``training``: only those scored while training."""
    return tuple(m.key for m in METRICS if m.training or not training)


Statistics = Mapping[str, Any]  # statistic name (a key of STATISTICS) → array [..., *shape], or just confusion


def _statistics(stats: Statistics | np.ndarray) -> dict[str, Any]:
    if isinstance(stats, Mapping):
        if "confusion" not in stats:
            raise ValueError(f"statistics need a 'confusion' entry, got {sorted(stats)}")
        return {name: value for name, value in stats.items() if name in STATISTICS}
    return {"confusion": stats}


def metrics_of(stats: Statistics | np.ndarray) -> dict[str, np.ndarray]:
    """Every metric (fractions), each shaped (...), of summed per-image statistics: a mapping of statistic name to
    array [..., *shape] (``confusion`` [..., C, C] required; see the module docstring), or confusion matrices alone.
    A metric whose inputs are missing is NaN."""
    arrays = _statistics(stats)
    m = as_stack(arrays["confusion"])
    arrays["confusion"] = m
    out = {}
    for metric in METRICS:
        if all(name in arrays for name in metric.inputs):
            out[metric.key] = np.asarray(metric.formula(*(arrays[name] for name in metric.inputs)), np.float64)
        else:
            out[metric.key] = np.full(m.shape[:-2], np.nan)
    return out


def metrics_of_matrices(matrices: Statistics | np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of a stack of (..., C, C) confusion matrices (or of statistics, :func:`metrics_of`)."""
    return metrics_of(matrices)


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


def compute_metrics(
    matrix: torch.Tensor | np.ndarray | Statistics,
    class_names: Sequence[str] | None = None,
    *,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Scores of a (C, C) confusion matrix (rows ground truth), or of summed statistics (:func:`metrics_of`), as
    fractions in [0, 1].

    Keys: every metric of :data:`METRICS` in order (``miou``, ``macc``, ``allacc``, ...: floats, NaN when undefined),
    ``iou``, ``acc`` (per-class lists with NaN where undefined), ``absent`` (names of classes in
    neither prediction nor truth, left out of both means), ``no_truth`` (names of classes predicted but absent
    from the truth: IoU 0, accuracy NaN), ``class_names``, ``labelled_pixels``. With boundary statistics ``biou``'s
    per-class list ``biou_per_class``; with instance statistics and ``axes["instances"]`` (the class names of their
    rows) ``iiou_per_class`` (NaN for classes without instances); with category statistics ``categories``: per
    category name (``axes["category_confusion"]``) its ``iou`` and, where it has instances, ``iiou``. See the
    module docstring for the definitions.
    """
    arrays = _statistics(matrix)
    m = as_stack(arrays["confusion"])
    if m.ndim != 2:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    c = m.shape[0]
    names = list(class_names) if class_names is not None else class_names_for(c)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class confusion matrix")
    truth, predicted = m.sum(axis=1), m.sum(axis=0)
    out: dict[str, Any] = {
        **{key: float(value) for key, value in metrics_of({**arrays, "confusion": m}).items()},
        "iou": [float(v) for v in iou_per_class(m)],
        "acc": [float(v) for v in acc_per_class(m)],
        "absent": [names[i] for i in range(c) if truth[i] == 0 and predicted[i] == 0],
        "no_truth": [names[i] for i in range(c) if truth[i] == 0 and predicted[i] > 0],
        "class_names": names,
        "labelled_pixels": int(truth.sum()),
    }
    axes = axes or {}
    if "boundary" in arrays:
        out["biou_per_class"] = [float(v) for v in ratio_per_class(arrays["boundary"])]
    if "instances" in arrays and "instances" in axes:
        per_instance_class = dict(zip(axes["instances"], instance_iou(arrays["instances"]), strict=True))
        out["iiou_per_class"] = [float(per_instance_class.get(name, math.nan)) for name in names]
    if "category_confusion" in arrays and "category_confusion" in axes:
        categories = {name: {"iou": float(v)} for name, v in
                      zip(axes["category_confusion"], iou_per_class(arrays["category_confusion"]), strict=True)}
        if "instance_categories" in arrays and "instance_categories" in axes:
            for name, v in zip(axes["instance_categories"], instance_iou(arrays["instance_categories"]), strict=True):
                categories[name]["iiou"] = float(v)
        out["categories"] = categories
    return out


def majority_baseline(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The scores of a constant prediction of the most frequent true class, from any model's confusion matrix
    (its row sums are the ground truth): the chance level a trained model has to clear. Adds ``class``, the
    name of the predicted class."""
    truth = as_stack(matrix).sum(axis=-1)
    if truth.ndim != 1:
        raise ValueError(f"a confusion matrix must be square, got shape {np.shape(matrix)}")
    constant = np.zeros((len(truth), len(truth)))
    constant[:, int(np.argmax(truth))] = truth
    scores = compute_metrics(constant, class_names)
    return {**scores, "class": scores["class_names"][int(np.argmax(truth))]}
