"""Metric definitions on hand-made matrices, and agreement with cityscapesscripts and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from segmodels.metrics import ConfusionMatrix, batch_confusion, compute_metrics, majority_baseline

pytestmark = pytest.mark.usefixtures("one_thread")


NAMES4 = ["a", "b", "c", "d"]


def _pixels_from_matrix(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, P) pair of label maps whose confusion matrix is ``matrix``."""
    target, pred = [], []
    for t in range(matrix.shape[0]):
        for p in range(matrix.shape[1]):
            target += [t] * int(matrix[t, p])
            pred += [p] * int(matrix[t, p])
    return torch.tensor([pred]), torch.tensor([target])


def test_hand_made_matrix():
    # Rows truth, columns prediction. Class c is in neither; class d is predicted once but never true.
    m = np.array([[3, 1, 0, 0], [1, 2, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred, target = _pixels_from_matrix(m)
    # Ignored pixels, whatever was predicted there, must not count.
    pred = torch.cat([pred, torch.tensor([[1, 3, 0]])], dim=1)
    target = torch.cat([target, torch.tensor([[255, 255, 255]])], dim=1)
    cm = ConfusionMatrix(num_classes=4)
    per_image = cm.update(pred, target)
    assert per_image.shape == (1, 4, 4)
    assert torch.equal(cm.matrix, torch.from_numpy(m))
    out = compute_metrics(cm.matrix, NAMES4)
    # By hand: a: TP 3, FN 1, FP 1; b: TP 2, FN 2, FP 1; d: TP 0, FN 0, FP 1.
    assert out["iou"][0] == pytest.approx(3 / 5)
    assert out["iou"][1] == pytest.approx(2 / 5)
    assert math.isnan(out["iou"][2]) and math.isnan(out["acc"][2])
    assert out["iou"][3] == 0.0 and math.isnan(out["acc"][3])
    assert out["acc"][:2] == pytest.approx([3 / 4, 2 / 4])
    assert out["miou"] == pytest.approx((0.6 + 0.4 + 0.0) / 3)
    assert out["macc"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["allacc"] == pytest.approx(5 / 8)
    assert out["absent"] == ["c"] and out["no_truth"] == ["d"]
    assert out["labelled_pixels"] == 8


def test_perfect_and_empty():
    eye = np.diag([4, 0, 7])
    out = compute_metrics(eye, ["x", "y", "z"])
    assert out["miou"] == 1.0 and out["macc"] == 1.0 and out["allacc"] == 1.0 and out["absent"] == ["y"]
    empty = compute_metrics(np.zeros((3, 3)), ["x", "y", "z"])
    assert math.isnan(empty["miou"]) and math.isnan(empty["allacc"]) and empty["absent"] == ["x", "y", "z"]


def test_majority_baseline_predicts_the_most_frequent_true_class():
    m = np.array([[50, 10, 0], [5, 20, 5], [0, 0, 10]])  # truth rows: 60, 30, 10 pixels
    base = majority_baseline(m, ["road", "car", "sky"])
    assert base["class"] == "road"
    assert base["allacc"] == pytest.approx(0.6)
    # road: IoU 60/100; car and sky: predicted nowhere but present, IoU 0 → mIoU 0.2
    assert base["miou"] == pytest.approx(0.2) and base["iou"] == pytest.approx([0.6, 0.0, 0.0])
    assert base["macc"] == pytest.approx(1 / 3)


def test_batch_confusion_per_image_and_bad_labels():
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 0]]])
    target = torch.tensor([[[0, 1], [255, 2]], [[2, 1], [0, 255]]])
    per = batch_confusion(pred, target, 3)
    assert per.shape == (2, 3, 3) and per.dtype == torch.int64
    assert per[0].sum() == 3 and per[0, 2, 1] == 1 and per[1, 1, 2] == 1 and per[1, 0, 0] == 1
    with pytest.raises(ValueError, match=r"\[7\]"):
        batch_confusion(pred, torch.full_like(target, 7), 3)
    with pytest.raises(ValueError, match="differs"):
        batch_confusion(pred[:1], target, 3)
    cm = ConfusionMatrix(3)
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    cm.update(logits, target)  # logits are reduced by argmax
    assert torch.equal(cm.matrix, per.sum(0))
    assert cm.reduce_() is cm  # no process group: unchanged
    assert torch.equal(cm.matrix, per.sum(0))


def _random_label_ids(rng: np.random.Generator, shape: tuple[int, ...], exclude_train: set[int]):
    """Random Cityscapes label-id maps (ignored ids included) and the matching train-id maps."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, dtype=np.uint8)
    ids = []
    for label in labels:
        if label.id < 0:
            continue
        train = label.trainId if 0 <= label.trainId < 19 else 255
        assert (train == 255) == label.ignoreInEval
        lut[label.id] = train
        if train not in exclude_train:
            ids.append(label.id)
    gt_ids = rng.choice(np.array(ids, dtype=np.uint8), size=shape)
    return gt_ids, lut[gt_ids]


def test_agrees_with_cityscapesscripts(tmp_path, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs
    from cityscapesscripts.helpers.labels import trainId2label

    rng = np.random.default_rng(0)
    # Train id 5 is in neither truth nor prediction; 6 only in the prediction.
    gt_ids, gt_train = _random_label_ids(rng, (3, 24, 40), exclude_train={5, 6})
    choices = np.array([i for i in range(19) if i != 5])
    pred_train = np.where(rng.random(gt_train.shape) < 0.4, gt_train, rng.choice(choices, size=gt_train.shape))
    pred_train = np.where(pred_train == 255, rng.choice(choices, size=gt_train.shape), pred_train).astype(np.uint8)
    to_id = np.array([trainId2label[t].id for t in range(19)], dtype=np.uint8)

    monkeypatch.setattr(cs.args, "evalInstLevelScore", False)
    monkeypatch.setattr(cs.args, "evalPixelAccuracy", False)
    conf = cs.generateMatrix(cs.args)
    for i in range(gt_ids.shape[0]):
        Image.fromarray(to_id[pred_train[i]]).save(tmp_path / f"pred{i}.png")
        Image.fromarray(gt_ids[i]).save(tmp_path / f"gt{i}_gtFine_labelIds.png")
        cs.evaluatePair(
            str(tmp_path / f"pred{i}.png"), str(tmp_path / f"gt{i}_gtFine_labelIds.png"), conf, {}, {}, cs.args
        )

    cm = ConfusionMatrix(19)
    cm.update(torch.from_numpy(pred_train), torch.from_numpy(gt_train))
    ours = compute_metrics(cm.matrix, [f"c{i}" for i in range(19)])

    scores = {}
    for t in range(19):
        label_id = int(to_id[t])
        scores[t] = cs.getIouScoreForLabel(label_id, conf, cs.args)
        acc = cs.getMatrixFieldValue(conf, label_id, label_id, cs.args)  # row-normalised diagonal
        np.testing.assert_allclose(ours["iou"][t], scores[t], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(ours["acc"][t], acc, atol=1e-6, equal_nan=True)
    assert ours["miou"] == pytest.approx(cs.getScoreAverage(scores, cs.args), abs=1e-6)
    assert math.isnan(ours["iou"][5]) and ours["absent"] == ["c5"]
    assert ours["iou"][6] == 0.0 and ours["no_truth"] == ["c6"]
    eval_ids = [int(i) for i in to_id]
    all_acc = np.trace(conf[np.ix_(eval_ids, eval_ids)]) / conf[eval_ids].sum()
    assert ours["allacc"] == pytest.approx(float(all_acc), abs=1e-6)


def test_agrees_with_torchmetrics():
    import torchmetrics.classification as tmc
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 19, (4, 32, 48), generator=g)
    target[:, :4] = 255
    target[target == 3] = 255  # class 3 never true ...
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.5,
        target.clamp(max=18),
        torch.randint(0, 19, target.shape, generator=g),
    )
    pred[pred == 7] = 8  # ... and class 7 never predicted (but true)
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    ours = compute_metrics(cm.matrix, [f"c{i}" for i in range(19)])
    assert ours["no_truth"] == ["c3"]

    iou_none = tmc.MulticlassJaccardIndex(19, ignore_index=255, average="none")(pred, target).double()
    iou_macro = tmc.MulticlassJaccardIndex(19, ignore_index=255, average="macro")(pred, target).item()
    np.testing.assert_allclose(ours["iou"], iou_none.numpy(), atol=1e-6)
    assert ours["miou"] == pytest.approx(iou_macro, abs=1e-6)

    acc_none = tmc.MulticlassAccuracy(19, ignore_index=255, average="none")(pred, target).double().numpy()
    defined = ~np.isnan(ours["acc"])
    assert not defined[3] and defined.sum() == 18
    np.testing.assert_allclose(np.array(ours["acc"])[defined], acc_none[defined], atol=1e-6)
    # The documented difference: torchmetrics counts the never-true class 3 as accuracy 0 in its mean.
    assert acc_none[3] == 0.0
    assert ours["macc"] == pytest.approx(acc_none[defined].mean(), abs=1e-6)
    acc_micro = tmc.MulticlassAccuracy(19, ignore_index=255, average="micro")(pred, target).item()
    assert ours["allacc"] == pytest.approx(acc_micro, abs=1e-6)
    # Without a never-true class (ignore the pixels predicted as 3) the macro means agree outright.
    t2 = torch.where(pred == 3, torch.full_like(target, 255), target)
    cm2 = ConfusionMatrix(19)
    cm2.update(pred, t2)
    macro = tmc.MulticlassAccuracy(19, ignore_index=255, average="macro")(pred, t2).item()
    assert compute_metrics(cm2.matrix, [f"c{i}" for i in range(19)])["macc"] == pytest.approx(macro, abs=1e-6)


def test_reduce_under_a_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 255]]))
        before = cm.matrix.clone()
        cm.reduce_()  # a real all_reduce (sum over the one rank)
        assert torch.equal(cm.matrix, before) and cm.matrix.dtype == torch.int64
    finally:
        dist.destroy_process_group()
