"""The Cityscapes benchmark's four numbers (IoU and iIoU of classes and categories) against cityscapesScripts'
``evalPixelLevelSemanticLabeling``, on random label, prediction and instance maps in the Cityscapes layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segmodels.data.labels import ID_TO_TRAINID, LABELS, TRAINID_TO_ID
from segmodels.data.labelset import cityscapes_label_set
from segmodels.metrics import compute_metrics
from segmodels.scoring import ImageScorer, score_layout

EVALUATED = [label.id for label in LABELS if label.train_id != 255]
IGNORED = [label.id for label in LABELS if label.train_id == 255]


def _blobs(rng: np.random.Generator, shape: tuple[int, int], values: list[int], cell: int) -> np.ndarray:
    """A map of random rectangles of ``values`` (so instances have sizes from a few pixels to large areas)."""
    h, w = shape
    coarse = rng.choice(values, size=(h // cell + 1, w // cell + 1))
    out = np.kron(coarse, np.ones((cell, cell), dtype=coarse.dtype))[:h, :w]
    for _ in range(12):  # smaller rectangles on top
        y, x = rng.integers(0, h), rng.integers(0, w)
        out[y : y + rng.integers(1, cell), x : x + rng.integers(1, cell)] = rng.choice(values)
    return out


def _scene(rng: np.random.Generator, shape: tuple[int, int], *, instances: bool):
    """(label ids, instance ids, predicted label ids) of one image."""
    ids = _blobs(rng, shape, [label.id for label in LABELS], cell=8)
    inst = ids.astype(np.int32).copy()
    if instances:
        counts: dict[int, int] = {}
        for label in LABELS:
            if not label.has_instances:
                continue
            ys, xs = np.nonzero(ids == label.id)
            for y, x in zip(ys[::37], xs[::37], strict=True):  # seeds of instances; the rest stays a group
                k = counts.get(label.id, 0)
                counts[label.id] = k + 1
                box = (slice(y, y + rng.integers(1, 9)), slice(x, x + rng.integers(1, 9)))
                inst[box] = np.where(ids[box] == label.id, label.id * 1000 + k, inst[box])
    # predictions: the truth on half the pixels, an evaluated class elsewhere; ignored ids where the truth is ignored
    pred = np.where(rng.random(shape) < 0.5, ids, rng.choice(EVALUATED, size=shape))
    ignored_truth = np.isin(ids, IGNORED)
    pred = np.where(ignored_truth, np.where(rng.random(shape) < 0.5, rng.choice(IGNORED, size=shape),
                                            rng.choice(EVALUATED, size=shape)), pred)  # fmt: skip
    pred = np.where(~ignored_truth & np.isin(pred, IGNORED), rng.choice(EVALUATED, size=shape), pred)
    return ids.astype(np.uint8), inst, pred.astype(np.uint8)


def _cityscapes_scripts(tmp_path, scenes) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    preds, gts = [], []
    for i, (ids, inst, pred) in enumerate(scenes):
        gt = tmp_path / f"city_{i:06d}_000019_gtFine_labelIds.png"
        Image.fromarray(ids).save(gt)
        Image.fromarray(inst.astype(np.uint16)).save(str(gt).replace("labelIds", "instanceIds"))
        Image.fromarray(pred).save(tmp_path / f"pred_{i}.png")
        gts.append(str(gt))
        preds.append(str(tmp_path / f"pred_{i}.png"))
    args = cs.args
    args.evalInstLevelScore, args.evalPixelAccuracy, args.quiet, args.JSONOutput = True, False, True, False
    args.evalLabels = [label.id for label in cs.labels if label.id >= 0]
    return cs.evaluateImgLists(preds, gts, args)


def _ours(scenes) -> dict:
    label_set = cityscapes_label_set()
    layout = score_layout(label_set, instances=True)
    scorer = ImageScorer(len(scenes), layout, torch.device("cpu"))
    for i, (ids, inst, pred) in enumerate(scenes):
        as_batch = [torch.from_numpy(a.astype(np.int64))[None] for a in (ID_TO_TRAINID[pred], ID_TO_TRAINID[ids], inst)]
        scorer.add([i], *as_batch)
    return compute_metrics(scorer.totals(), label_set.classes, axes=layout.axes())


@pytest.mark.parametrize("shape", [(48, 96), (72, 40)])
def test_four_numbers_equal_cityscapes_scripts(tmp_path, monkeypatch, shape):
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # cityscapesScripts calls np.in1d (gone in numpy 2.4)
    rng = np.random.default_rng(sum(shape))
    scenes = [_scene(rng, shape, instances=i != 1) for i in range(4)]  # image 1 has no instances
    assert any((inst >= 29000).any() and (inst < 31000).any() for _, inst, _ in scenes)  # caravan/trailer instances
    theirs = _cityscapes_scripts(tmp_path, scenes)
    ours = _ours(scenes)

    assert ours["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-9)
    assert ours["iiou"] == pytest.approx(theirs["averageScoreInstClasses"], abs=1e-9)
    assert ours["miou_category"] == pytest.approx(theirs["averageScoreCategories"], abs=1e-9)
    assert ours["iiou_category"] == pytest.approx(theirs["averageScoreInstCategories"], abs=1e-9)
    names = cityscapes_label_set().classes
    for c, name in enumerate(names):
        assert ours["iou"][c] == pytest.approx(theirs["classScores"][name], abs=1e-9, nan_ok=True)
        assert ours["iiou_per_class"][c] == pytest.approx(theirs["classInstScores"][name], abs=1e-9, nan_ok=True)
    for category, scores in ours["categories"].items():
        assert scores["iou"] == pytest.approx(theirs["categoryScores"][category], abs=1e-9)
        assert scores.get("iiou", np.nan) == pytest.approx(theirs["categoryInstScores"][category], abs=1e-9,
                                                           nan_ok=True)  # fmt: skip
    assert set(ours["categories"]) == {c for c, v in theirs["categoryScores"].items() if not np.isnan(v)}
    assert 0 < ours["iiou"] < 1 and 0 < ours["iiou_category"] < 1


def test_images_without_instances_score_like_cityscapes_scripts(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    rng = np.random.default_rng(3)
    scenes = [_scene(rng, (40, 64), instances=False) for _ in range(2)]
    theirs = _cityscapes_scripts(tmp_path, scenes)
    ours = _ours(scenes)
    # no instance of any class: every iIoU is undefined or 0 (a class predicted but never an instance)
    for c, name in enumerate(cityscapes_label_set().classes):
        assert ours["iiou_per_class"][c] == pytest.approx(theirs["classInstScores"][name], abs=1e-9, nan_ok=True)
    assert ours["iiou"] == pytest.approx(theirs["averageScoreInstClasses"], abs=1e-9)


def test_a_model_cannot_predict_an_ignored_id_on_a_labelled_pixel():
    layout = score_layout(cityscapes_label_set(), instances=True)
    scorer = ImageScorer(1, layout, torch.device("cpu"))
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = torch.full_like(target, 255)
    with pytest.raises(ValueError, match=r"prediction values \[255\]"):
        scorer.add([0], pred, target, target)


def test_train_ids_round_trip_to_label_ids():
    assert all(ID_TO_TRAINID[TRAINID_TO_ID[t]] == t for t in range(19))
