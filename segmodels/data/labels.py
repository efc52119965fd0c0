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
    "CATEGORIES",
    "INSTANCE_CLASSES",
    "INSTANCE_MEAN_SIZE",
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
    category: str  # one of the benchmark's 7 categories, or "void"
    has_instances: bool  # objects of it carry their own id in *_gtFine_instanceIds.png (label id × 1000 + k)


# name, id, train id, colour (RGB), category, has instances. "license plate" (id -1) never appears in the label images and is left out.
LABELS: tuple[Label, ...] = tuple(
    Label(*row)
    for row in (
        ("unlabeled", 0, 255, (0, 0, 0), "void", False),
        ("ego vehicle", 1, 255, (0, 0, 0), "void", False),
        ("rectification border", 2, 255, (0, 0, 0), "void", False),
        ("out of roi", 3, 255, (0, 0, 0), "void", False),
        ("static", 4, 255, (0, 0, 0), "void", False),
        ("dynamic", 5, 255, (111, 74, 0), "void", False),
        ("ground", 6, 255, (81, 0, 81), "void", False),
        ("road", 7, 0, (128, 64, 128), "flat", False),
        ("sidewalk", 8, 1, (244, 35, 232), "flat", False),
        ("parking", 9, 255, (250, 170, 160), "flat", False),
        ("rail track", 10, 255, (230, 150, 140), "flat", False),
        ("building", 11, 2, (70, 70, 70), "construction", False),
        ("wall", 12, 3, (102, 102, 156), "construction", False),
        ("fence", 13, 4, (190, 153, 153), "construction", False),
        ("guard rail", 14, 255, (180, 165, 180), "construction", False),
        ("bridge", 15, 255, (150, 100, 100), "construction", False),
        ("tunnel", 16, 255, (150, 120, 90), "construction", False),
        ("pole", 17, 5, (153, 153, 153), "object", False),
        ("polegroup", 18, 255, (153, 153, 153), "object", False),
        ("traffic light", 19, 6, (250, 170, 30), "object", False),
        ("traffic sign", 20, 7, (220, 220, 0), "object", False),
        ("vegetation", 21, 8, (107, 142, 35), "nature", False),
        ("terrain", 22, 9, (152, 251, 152), "nature", False),
        ("sky", 23, 10, (70, 130, 180), "sky", False),
        ("person", 24, 11, (220, 20, 60), "human", True),
        ("rider", 25, 12, (255, 0, 0), "human", True),
        ("car", 26, 13, (0, 0, 142), "vehicle", True),
        ("truck", 27, 14, (0, 0, 70), "vehicle", True),
        ("bus", 28, 15, (0, 60, 100), "vehicle", True),
        ("caravan", 29, 255, (0, 0, 90), "vehicle", True),
        ("trailer", 30, 255, (0, 0, 110), "vehicle", True),
        ("train", 31, 16, (0, 80, 100), "vehicle", True),
        ("motorcycle", 32, 17, (0, 0, 230), "vehicle", True),
        ("bicycle", 33, 18, (119, 11, 32), "vehicle", True),
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

# The 7 categories of the benchmark's category scores, in the order of their first class ("void" holds no class).
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(label.category for label in _TRAINED))
# The 8 training classes whose objects have instance ids (the iIoU classes): person, rider, car, ..., bicycle.
INSTANCE_CLASSES: tuple[str, ...] = tuple(label.name for label in _TRAINED if label.has_instances)
# The mean size in pixels of an instance of each class over the training set at 1024×2048, the weights of the
# instance-level scores, as cityscapesScripts' evalPixelLevelSemanticLabeling defines them (its avgClassSize).
INSTANCE_MEAN_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274, "car": 12794.0202738185,
    "person": 3462.4756337644, "truck": 27855.1264367816, "trailer": 16926.9763313609,
}  # fmt: skip

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
