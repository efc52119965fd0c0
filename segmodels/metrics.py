"""Semantic-segmentation scores from a confusion matrix: per-class IoU and accuracy, mIoU, mAcc, allAcc.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "batch_confusion", "class_names_for", "compute_metrics", "majority_baseline"]


def batch_confusion(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image confusion matrices of a batch: int64 (N, C, C), rows ground truth, columns prediction.

    ``pred`` and ``target`` hold class indices of the same shape (N, H, W) (or (H, W), taken as N = 1);
    pixels whose target is ``ignore_index`` are skipped. Any other label or prediction outside
    [0, num_classes) raises ValueError rather than landing in a wrong cell.
    """
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


def class_names_for(num_classes: int) -> list[str]:
    """The Cityscapes names for 19 classes, ``class{i}`` otherwise."""
    if num_classes == 19:
        from segmodels.data.labels import CLASS_NAMES

        return list(CLASS_NAMES)
    return [f"class{i}" for i in range(num_classes)]


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def compute_metrics(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores of a (C, C) confusion matrix (rows ground truth), as fractions in [0, 1].

    Keys: ``miou``, ``macc``, ``allacc`` (floats, NaN when nothing is labelled), ``iou``, ``acc`` (per-class
    lists with NaN where undefined), ``absent`` (names of classes in neither prediction nor truth, left
    out of both means), ``no_truth`` (names of classes predicted but absent from the truth: IoU 0,
    accuracy NaN), ``class_names``, ``labelled_pixels``. See the module docstring for the definitions.
    """
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    m = m.astype(np.float64)
    c = m.shape[0]
    names = list(class_names) if class_names is not None else class_names_for(c)
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class confusion matrix")
    tp = np.diag(m)
    truth = m.sum(axis=1)
    predicted = m.sum(axis=0)
    union = truth + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(truth > 0, tp / truth, np.nan)
    labelled = truth.sum()
    return {
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "allacc": float(tp.sum() / labelled) if labelled > 0 else math.nan,
        "iou": [float(v) for v in iou],
        "acc": [float(v) for v in acc],
        "absent": [names[i] for i in range(c) if union[i] == 0],
        "no_truth": [names[i] for i in range(c) if truth[i] == 0 and predicted[i] > 0],
        "class_names": names,
        "labelled_pixels": int(labelled),
    }


def majority_baseline(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The scores of a constant prediction of the most frequent true class, from any model's confusion matrix
    (its row sums are the ground truth): the chance level a trained model has to clear. Adds ``class``, the
    name of the predicted class."""
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    truth = m.astype(np.float64).sum(axis=1)
    constant = np.zeros((len(truth), len(truth)))
    constant[:, int(np.argmax(truth))] = truth
    scores = compute_metrics(constant, class_names)
    return {**scores, "class": scores["class_names"][int(np.argmax(truth))]}
