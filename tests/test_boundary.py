"""Boundary IoU against a straightforward implementation: a chessboard distance transform of each class mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from segmodels.boundary import boundary_counts, dilation
from segmodels.metrics import compute_metrics


def _reference(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """(C, 2) intersection and union of the boundary regions, class by class: the mask pixels within d (chessboard)
    of a pixel outside the mask, the image border counting as outside (one pixel of zero padding)."""
    d = dilation(*truth.shape)
    valid = truth != ignore

    def region(mask: np.ndarray) -> np.ndarray:
        distance = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
        return mask & (distance <= d) & valid

    out = np.zeros((num_classes, 2), dtype=np.int64)
    for c in range(num_classes):
        g, p = region(truth == c), region(pred == c)
        out[c] = (g & p).sum(), (g | p).sum()
    return out


def _blobby(rng: np.random.Generator, shape: tuple[int, int], classes: int, cell: int) -> np.ndarray:
    small = rng.integers(0, classes, size=(shape[0] // cell + 1, shape[1] // cell + 1))
    return np.kron(small, np.ones((cell, cell), dtype=np.int64))[: shape[0], : shape[1]]


@pytest.mark.parametrize("shape", [(37, 53), (64, 128), (120, 40), (3, 5)])
def test_equals_a_distance_transform_per_class(shape):
    rng = np.random.default_rng(shape[0])
    truth = _blobby(rng, shape, 5, cell=max(1, shape[0] // 6))
    truth[rng.random(shape) < 0.05] = 255
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, 5, size=shape), truth)
    pred[pred == 255] = 0
    got = boundary_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None], 5).numpy()[0]
    np.testing.assert_array_equal(got, _reference(pred, truth, 5))


def test_a_batch_counts_each_image_on_its_own():
    rng = np.random.default_rng(1)
    truth = np.stack([_blobby(rng, (40, 60), 4, 7) for _ in range(3)])
    pred = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 4, size=truth.shape), truth)
    got = boundary_counts(torch.from_numpy(pred), torch.from_numpy(truth), 4).numpy()
    for i in range(3):
        np.testing.assert_array_equal(got[i], _reference(pred[i], truth[i], 4))


def test_perfect_is_one_and_a_one_pixel_shift_is_less():
    truth = np.zeros((200, 300), dtype=np.int64)
    truth[60:140, 100:220] = 1
    shifted = np.roll(truth, 1, axis=1)  # the right edge one pixel out, the left one in

    def biou(pred: np.ndarray) -> float:
        counts = boundary_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None], 2)[0].numpy()
        return compute_metrics({"confusion": np.eye(2), "boundary": counts})["biou_per_class"][1]

    mask_iou = np.sum((truth == 1) & (shifted == 1)) / np.sum((truth == 1) | (shifted == 1))
    assert biou(truth) == 1.0
    assert biou(shifted) < mask_iou < 1.0  # the boundary measure is the more sensitive to the edge


def test_the_band_is_two_percent_of_the_diagonal():
    assert dilation(1024, 2048) == 46 and dilation(512, 1024) == 23 and dilation(4, 4) == 1
