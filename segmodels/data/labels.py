"""Cityscapes label ids, the 19 training classes, and their colours.

The table follows the Cityscapes benchmark definition (Cordts et al., "The Cityscapes Dataset for Semantic Urban
Scene Understanding", CVPR 2016): label ids 0-33 appear in ``*_gtFine_labelIds.png``; 19 of them are trained and
evaluated, every other id maps to :data:`IGNORE_INDEX`. The library keeps its own copy so that it does not depend
on cityscapesscripts at run time; a test checks it against that package.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "ID_PALETTE",
    "ID_TO_TRAINID",
    "IGNORE_INDEX",
    "LABELS",
    "MAX_LABEL_ID",
    "NUM_CLASSES",
    "PALETTE",
    "TRAINID_TO_ID",
    "Label",
    "colorize",
    "label_id",
]

NUM_CLASSES = 19
IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int  # value in *_gtFine_labelIds.png
    train_id: int  # 0-18, or IGNORE_INDEX
    color: tuple[int, int, int]


# name, id, train id, colour (RGB). "license plate" (id -1) never appears in the label images and is left out.
LABELS: tuple[Label, ...] = tuple(
    Label(*row)
    for row in (
        ("unlabeled", 0, 255, (0, 0, 0)),
        ("ego vehicle", 1, 255, (0, 0, 0)),
        ("rectification border", 2, 255, (0, 0, 0)),
        ("out of roi", 3, 255, (0, 0, 0)),
        ("static", 4, 255, (0, 0, 0)),
        ("dynamic", 5, 255, (111, 74, 0)),
        ("ground", 6, 255, (81, 0, 81)),
        ("road", 7, 0, (128, 64, 128)),
        ("sidewalk", 8, 1, (244, 35, 232)),
        ("parking", 9, 255, (250, 170, 160)),
        ("rail track", 10, 255, (230, 150, 140)),
        ("building", 11, 2, (70, 70, 70)),
        ("wall", 12, 3, (102, 102, 156)),
        ("fence", 13, 4, (190, 153, 153)),
        ("guard rail", 14, 255, (180, 165, 180)),
        ("bridge", 15, 255, (150, 100, 100)),
        ("tunnel", 16, 255, (150, 120, 90)),
        ("pole", 17, 5, (153, 153, 153)),
        ("polegroup", 18, 255, (153, 153, 153)),
        ("traffic light", 19, 6, (250, 170, 30)),
        ("traffic sign", 20, 7, (220, 220, 0)),
        ("vegetation", 21, 8, (107, 142, 35)),
        ("terrain", 22, 9, (152, 251, 152)),
        ("sky", 23, 10, (70, 130, 180)),
        ("person", 24, 11, (220, 20, 60)),
        ("rider", 25, 12, (255, 0, 0)),
        ("car", 26, 13, (0, 0, 142)),
        ("truck", 27, 14, (0, 0, 70)),
        ("bus", 28, 15, (0, 60, 100)),
        ("caravan", 29, 255, (0, 0, 90)),
        ("trailer", 30, 255, (0, 0, 110)),
        ("train", 31, 16, (0, 80, 100)),
        ("motorcycle", 32, 17, (0, 0, 230)),
        ("bicycle", 33, 18, (119, 11, 32)),
    )
)

MAX_LABEL_ID = max(label.id for label in LABELS)  # 33: larger values in a labelIds image are not Cityscapes ids

_BY_NAME = {label.name: label for label in LABELS}
_TRAINED = sorted((label for label in LABELS if label.train_id != IGNORE_INDEX), key=lambda label: label.train_id)

CLASS_NAMES: tuple[str, ...] = tuple(label.name for label in _TRAINED)
PALETTE: np.ndarray = np.array([label.color for label in _TRAINED], dtype=np.uint8)  # 19 × 3

ID_TO_TRAINID: np.ndarray = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # LUT: label id → train id
for _label in LABELS:
    ID_TO_TRAINID[_label.id] = _label.train_id

TRAINID_TO_ID: np.ndarray = np.zeros(256, dtype=np.uint8)  # LUT: train id → label id (ignore → 0 "unlabeled")
for _label in _TRAINED:
    TRAINID_TO_ID[_label.train_id] = _label.id

ID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)  # label id → colour, as in *_gtFine_color.png
for _label in LABELS:
    ID_PALETTE[_label.id] = _label.color

_TRAIN_PALETTE = np.zeros((256, 3), dtype=np.uint8)
_TRAIN_PALETTE[:NUM_CLASSES] = PALETTE

if len(CLASS_NAMES) != NUM_CLASSES or [label.train_id for label in _TRAINED] != list(range(NUM_CLASSES)):
    raise AssertionError("the Cityscapes table must define train ids 0-18 exactly once")


def label_id(name: str) -> int:
    """The Cityscapes label id of a class name (``"car"`` → 26)."""
    try:
        return _BY_NAME[name].id
    except KeyError:
        raise ValueError(f"unknown Cityscapes label name {name!r}") from None


def colorize(mask: np.ndarray) -> np.ndarray:
    """Train-id mask (H×W) → H×W×3 uint8 colours; ignore and any other value outside 0-18 are black."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        mask = np.where((mask >= 0) & (mask < NUM_CLASSES), mask, IGNORE_INDEX).astype(np.uint8)
    return _TRAIN_PALETTE[mask]
