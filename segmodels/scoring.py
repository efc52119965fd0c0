"""What one evaluation pass counts per image: the statistics every metric of :data:`segmodels.metrics.METRICS` is a
formula of, counted on the device beside the confusion matrix.

* ``confusion`` (C, C) and, for Cityscapes' classes, ``category_confusion`` (7, 7): its rows and columns merged by
  the benchmark's categories (flat, construction, object, nature, sky, human, vehicle).
* ``instances`` (K, 3) and ``instance_categories`` (2, 3), where the ground truth has Cityscapes instance ids
  (``labelId * 1000 + k``): the benchmark's instance-level counts, as cityscapesScripts'
  ``evalPixelLevelSemanticLabeling`` makes them. Each ground-truth instance of an evaluated class with instances
  (person, rider, car, truck, bus, train, motorcycle, bicycle; ids above 1000) adds its true positives (its pixels
  predicted as its class) and false negatives (the rest), weighted by the class's mean instance size
  (:data:`segmodels.data.labels.INSTANCE_MEAN_SIZE`, measured at 1024×2048; used unchanged at every resolution, as
  cityscapesScripts does) over the instance's size, so a small pedestrian counts as much as a large one. The third
  column is the class's unweighted false positives: pixels predicted as the class whose ground truth is another
  labelled class. The categories human and vehicle count the same with "predicted as any class of the category".
* ``boundary`` (C, 2): the Boundary IoU's intersections and unions (:mod:`segmodels.boundary`).

Every statistic is a sum over images (:mod:`segmodels.study.stats` resamples them by image). Instance statistics
exist only where the ground truth carries instance ids; other datasets leave the instance-level metrics undefined
(blank), never 0. The per-image arrays are written as ``statistics_per_image.npz`` beside
``confusion_per_image.npy`` (:meth:`ImageScorer.save`), with the names along their class axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from segmodels.data.labelset import LabelSet

__all__ = ["AXIS_NAMES", "ImageScorer", "ScoreLayout", "instance_counts", "score_layout"]

# statistic → the key of the names along its class axis in statistics_per_image.npz
AXIS_NAMES = {"category_confusion": "category_names", "instances": "instance_class_names",
         "instance_categories": "instance_category_names"}  # fmt: skip


@dataclass(frozen=True)
class ScoreLayout:
    """Which statistics a label set allows and the names along their class axes."""

    num_classes: int
    ignore_index: int = 255
    categories: tuple[str, ...] = ()  # G category names; () where the label set has none
    class_category: tuple[int, ...] = ()  # per class its category index, -1 for none
    instance_classes: tuple[int, ...] = ()  # K class indices with instances; () where the data has no instance ids
    instance_label_ids: tuple[int, ...] = ()  # their Cityscapes label ids (an instance id // 1000)
    instance_mean_size: tuple[float, ...] = ()  # their mean instance size in pixels, the weights' numerator
    instance_categories: tuple[int, ...] = ()  # G' category indices whose classes all have instances
    names: tuple[str, ...] = field(default=())  # the C class names
    boundary: bool = True  # the Boundary IoU's counts (the costliest statistic; a robustness pass scores mIoU alone)

    @property
    def has_instances(self) -> bool:
        return bool(self.instance_classes)

    def axes(self) -> dict[str, list[str]]:
        """Statistic name → the names along its class axis (for :func:`segmodels.metrics.compute_metrics`)."""
        out: dict[str, list[str]] = {}
        if self.categories:
            out["category_confusion"] = list(self.categories)
        if self.has_instances:
            out["instances"] = [self.names[c] for c in self.instance_classes]
            out["instance_categories"] = [self.categories[g] for g in self.instance_categories]
        return out


def score_layout(label_set: LabelSet, *, instances: bool = False, boundary: bool = True) -> ScoreLayout:
    """The statistics of a dataset with ``label_set``: categories for Cityscapes' 19 classes, instance-level counts
    too when its ground truth has instance ids (``instances``: the packed split or raw source carries them), and the
    Boundary IoU's counts unless ``boundary`` is false."""
    from segmodels.data import labels as cs

    plain = ScoreLayout(label_set.num_classes, label_set.ignore_index, names=tuple(label_set.classes),
                        boundary=boundary)  # fmt: skip
    if tuple(label_set.classes) != cs.CLASS_NAMES:
        return plain
    by_name = {label.name: label for label in cs.LABELS}
    trained = [by_name[name] for name in cs.CLASS_NAMES]
    class_category = tuple(cs.CATEGORIES.index(label.category) for label in trained)
    with_instances = tuple(
        g for g, category in enumerate(cs.CATEGORIES)
        if all(label.has_instances for label in cs.LABELS if label.category == category)
    )  # fmt: skip
    layout = replace(plain, categories=cs.CATEGORIES, class_category=class_category)
    if not instances:
        return layout
    k = [c for c, label in enumerate(trained) if label.has_instances]
    return replace(layout, instance_classes=tuple(k), instance_label_ids=tuple(trained[c].id for c in k),
                   instance_mean_size=tuple(cs.INSTANCE_MEAN_SIZE[trained[c].name] for c in k),
                   instance_categories=with_instances)  # fmt: skip


def instance_counts(pred: torch.Tensor, instances: torch.Tensor, layout: ScoreLayout) -> tuple[torch.Tensor, ...]:
    """float64 (N, K, 2) and (N, G', 2): per image the weighted true positives and false negatives of the instance
    classes and of the instance categories, from predictions (N, H, W) of class indices and instance ids (N, H, W).

    Instances are the distinct ids above 1000 whose label id (id // 1000) is an evaluated class with instances;
    ids of other labels (caravan, trailer, ego vehicle) are skipped, as cityscapesScripts skips them.
    """
    import torch

    dev = pred.device
    n = pred.shape[0]
    k, g2 = len(layout.instance_classes), len(layout.instance_categories)
    tp_fn = torch.zeros(n * k, 2, dtype=torch.float64, device=dev)
    cat_fn = torch.zeros(n * g2, 2, dtype=torch.float64, device=dev)
    ids = instances.reshape(n, -1).long()
    keep = ids > 1000
    image = torch.arange(n, device=dev).unsqueeze(1).expand_as(ids)[keep]
    ids, p = ids[keep], pred.reshape(n, -1).long().clamp(0, 255)[keep]
    labels = ids // 1000
    lut = torch.full((max(layout.instance_label_ids, default=0) + 1,), -1, dtype=torch.long, device=dev)
    lut[list(layout.instance_label_ids)] = torch.arange(k, device=dev)
    row = torch.where(labels < len(lut), lut[labels.clamp(max=len(lut) - 1)], -1)
    known = row >= 0
    image, ids, p, row = image[known], ids[known], p[known], row[known]
    if ids.numel() == 0:
        return tp_fn.view(n, k, 2), cat_fn.view(n, g2, 2)
    key = image * (ids.max() + 1) + ids  # one instance per (image, id)
    unique, inverse, size = torch.unique(key, return_inverse=True, return_counts=True)
    first = torch.zeros_like(unique).scatter_(0, inverse, torch.arange(len(key), device=dev))
    inst_row, inst_image = row[first], image[first]
    classes = torch.tensor(layout.instance_classes, device=dev)
    mean_size = torch.tensor(layout.instance_mean_size, dtype=torch.float64, device=dev)
    weight = mean_size[inst_row] / size.double()
    hit = (p == classes[row]).double()
    tp = torch.zeros(len(unique), dtype=torch.float64, device=dev).index_add_(0, inverse, hit)
    target = inst_image * k + inst_row
    tp_fn.index_add_(0, target, torch.stack([tp * weight, (size - tp) * weight], dim=1))
    if g2:
        class_category = torch.full((256,), -2, dtype=torch.long, device=dev)  # -2: not a class (ignore_index)
        class_category[: layout.num_classes] = torch.tensor(layout.class_category, device=dev)
        category_row = torch.full((len(layout.categories),), -1, dtype=torch.long, device=dev)
        category_row[list(layout.instance_categories)] = torch.arange(g2, device=dev)
        inst_category = class_category[classes[inst_row]]
        in_category = (class_category[p] == class_category[classes[row]]).double()
        cat_tp = torch.zeros(len(unique), dtype=torch.float64, device=dev).index_add_(0, inverse, in_category)
        crow = category_row[inst_category]
        has = crow >= 0
        cat_fn.index_add_(0, (inst_image * g2 + crow)[has],
                          torch.stack([cat_tp * weight, (size - cat_tp) * weight], dim=1)[has])  # fmt: skip
    return tp_fn.view(n, k, 2), cat_fn.view(n, g2, 2)


def _false_positives(confusion: np.ndarray) -> np.ndarray:
    """(N, C) pixels predicted as each class (or category) whose labelled ground truth is another, from (N, C, C)."""
    return confusion.sum(axis=-2) - np.diagonal(confusion, axis1=-2, axis2=-1)


def _merge(confusion: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """(N, G, G): (N, C, C) confusion matrices with classes merged into ``groups`` (class → group index)."""
    one_hot = np.zeros((len(groups), count), dtype=np.int64)
    one_hot[np.arange(len(groups)), groups] = 1
    return np.einsum("ca,ncd,db->nab", one_hot, confusion.astype(np.int64), one_hot)


class ImageScorer:
    """Per-image statistics of a split of ``n`` images, filled batch by batch (:meth:`add`), in split order."""

    def __init__(self, n: int, layout: ScoreLayout, device: torch.device) -> None:
        self.layout, self.device = layout, device
        c = layout.num_classes
        self.confusion = np.zeros((n, c, c), dtype=np.int32)
        self.arrays: dict[str, np.ndarray] = {"boundary": np.zeros((n, c, 2), dtype=np.int64)} if layout.boundary else {}
        if layout.categories:
            g = len(layout.categories)
            self.arrays["category_confusion"] = np.zeros((n, g, g), dtype=np.int64)
        if layout.has_instances:
            self.arrays["instances"] = np.zeros((n, len(layout.instance_classes), 3))
            self.arrays["instance_categories"] = np.zeros((n, len(layout.instance_categories), 3))

    def add(self, indices: Sequence[int], pred: torch.Tensor, target: torch.Tensor,
            instances: torch.Tensor | None = None) -> None:  # fmt: skip
        """Count the images ``indices`` of the split: predictions and targets (N, H, W) of class indices on the
        device, and their instance ids (N, H, W) where the layout has instances."""
        from segmodels.boundary import boundary_counts
        from segmodels.metrics import batch_confusion

        layout, idx = self.layout, list(indices)
        target = target.to(pred.device)
        confusion = batch_confusion(pred, target, layout.num_classes, layout.ignore_index).cpu().numpy()
        self.confusion[idx] = confusion
        if layout.boundary:
            self.arrays["boundary"][idx] = boundary_counts(pred, target, layout.num_classes,
                                                           layout.ignore_index).cpu().numpy()  # fmt: skip
        merged = None
        if layout.categories:
            merged = _merge(confusion, np.asarray(layout.class_category), len(layout.categories))
            self.arrays["category_confusion"][idx] = merged
        if layout.has_instances:
            if instances is None:
                raise ValueError("the split has instance ids but none were given for this batch")
            classes, categories = instance_counts(pred, instances.to(pred.device), layout)
            fp = _false_positives(confusion)[:, list(layout.instance_classes)]
            self.arrays["instances"][idx] = np.concatenate([classes.cpu().numpy(), fp[..., None]], axis=-1)
            category_fp = _false_positives(merged)[:, list(layout.instance_categories)]
            self.arrays["instance_categories"][idx] = np.concatenate(
                [categories.cpu().numpy(), category_fp[..., None]], axis=-1)

    def statistics(self) -> dict[str, np.ndarray]:
        """The per-image statistics (name → (N, ...)), ``confusion`` included."""
        return {"confusion": self.confusion, **self.arrays}

    def totals(self) -> dict[str, np.ndarray]:
        """The statistics summed over the split, for :func:`segmodels.metrics.compute_metrics`."""
        return {name: array.sum(axis=0, dtype=np.float64 if array.dtype.kind == "f" else np.int64)
                for name, array in self.statistics().items()}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Every statistic but the confusion matrices (``confusion_per_image.npy``) with the names of their class
        axes, as one NPZ file, atomically."""
        from segmodels.atomic import write_atomic

        names = {AXIS_NAMES[name]: np.array(values, dtype=str) for name, values in self.layout.axes().items()}
        return write_atomic(path, lambda fh: np.savez(fh, **self.arrays, **names))
