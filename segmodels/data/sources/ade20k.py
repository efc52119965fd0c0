"""ADE20K as the SceneParsing benchmark ships it (``ADEChallengeData2016.zip``): ``images/{training,validation}/
*.jpg`` and ``annotations/{training,validation}/*.png``, single-channel masks of values 0-150.

Splits ``train`` and ``val`` read ``training`` and ``validation``. The 150 classes are the benchmark's, in
mmsegmentation's ``ADE20KDataset`` order; raw value 0 ("other objects", not one of the 150) is ignored and the
rest shift down by one (mmsegmentation's ``reduce_zero_label=True``), so class index 0 is "wall". The root is the
``ADEChallengeData2016`` folder or the folder that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segmodels.data.images import IMAGE_SUFFIXES
from segmodels.data.labelset import LabelSet, default_palette
from segmodels.data.sources import Sample
from segmodels.data.sources._files import FolderSource, IndexMasks, pair_by_stem, stems_in

__all__ = ["CLASSES", "SPLIT_FOLDERS", "ADE20KSource", "ade20k_label_set", "open_ade20k"]

# fmt: off
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
IMAGES, MASKS = "images", "annotations"
_MASK_SUFFIXES = frozenset({".png"})


def ade20k_label_set() -> LabelSet:
    lut = np.full(256, 255, np.uint8)  # 0 "other" and anything above 150 → ignore
    lut[1 : len(CLASSES) + 1] = np.arange(len(CLASSES))
    return LabelSet("ade20k", CLASSES, default_palette(len(CLASSES)), 255, lut)


def _find(root: Path) -> Path:
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / IMAGES).is_dir() and (candidate / MASKS).is_dir():
            return candidate
    raise FileNotFoundError(
        f"ADE20K not found in {root}: it needs {IMAGES}/{{training,validation}}/*.jpg and "
        f"{MASKS}/{{training,validation}}/*.png (the extracted ADEChallengeData2016.zip, or the folder holding it)"
    )


class ADE20KSource(FolderSource):
    """One ADEChallengeData2016 root."""

    layout = "ADEChallengeData2016"
    mask_kind = "a single-channel PNG of ADE20K values 0-150"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.label_set = ade20k_label_set()
        valid = np.zeros(256, bool)
        valid[: len(CLASSES) + 1] = True
        self._masks = IndexMasks(self.label_set, valid, f"ADE20K values 0-{len(CLASSES)}, 0 = other")

    def samples(self, split: str) -> list[Sample]:
        folder = SPLIT_FOLDERS.get(split, split)
        images = stems_in(self.root / IMAGES / folder, IMAGE_SUFFIXES)
        masks = stems_in(self.root / MASKS / folder, _MASK_SUFFIXES)
        return pair_by_stem(self.root, images, masks, self.root / IMAGES / folder, split)

    def mask_classes(self, img, where: str) -> np.ndarray:
        return self._masks.map(np.asarray(img), where)


def open_ade20k(root: str | os.PathLike) -> ADE20KSource:
    """The ADE20K dataset at ``root``."""
    return ADE20KSource(_find(Path(root)))
