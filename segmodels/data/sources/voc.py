"""Pascal VOC 2012 segmentation: ``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png`` and the split lists
``ImageSets/Segmentation/{train,val}.txt``.

Masks are palette PNGs (mode "P") whose stored value is the class index, 0 background and 1-20 the object
classes; 255 marks the boundary band around objects and is ignored, as by the benchmark. The root is the
``VOC2012`` folder, or a folder above it that holds ``VOCdevkit/VOC2012`` (the extracted tar).

SBD's extra training masks ("VOC aug", 10,582 training images): when ``SegmentationClassAug/`` and
``ImageSets/Segmentation/train_aug.txt`` both exist, the train split is the images of ``train_aug.txt`` with
their masks from ``SegmentationClassAug/`` (single-channel PNGs of the same class indices; layout
``voc2012+sbd``); the val split stays the official 1,449 images. ``aug=False`` uses the official train split
even then.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segmodels.data.labelset import LabelSet, default_palette
from segmodels.data.sources import Sample
from segmodels.data.sources._files import FolderSource, IndexMasks

__all__ = ["CLASSES", "VOCSource", "open_voc", "voc_label_set"]

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor")  # fmt: skip
BOUNDARY = 255
IMAGES, MASKS, AUG_MASKS = "JPEGImages", "SegmentationClass", "SegmentationClassAug"
LISTS = "ImageSets/Segmentation"
AUG_LIST = "train_aug.txt"


def voc_label_set() -> LabelSet:
    lut = np.full(256, BOUNDARY, np.uint8)
    lut[: len(CLASSES)] = np.arange(len(CLASSES))
    return LabelSet("voc", CLASSES, default_palette(len(CLASSES)), BOUNDARY, lut)


def _find(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / IMAGES).is_dir() and (candidate / MASKS).is_dir():
            return candidate
    raise FileNotFoundError(
        f"Pascal VOC 2012 not found in {root}: it needs {IMAGES}/, {MASKS}/ and {LISTS}/{{train,val}}.txt "
        f"(the VOC2012 folder of VOCtrainval_11-May-2012.tar, or a folder holding VOCdevkit/VOC2012)"
    )


class VOCSource(FolderSource):
    """One VOC 2012 root; optionally SBD's augmented training masks (see the module docstring)."""

    mask_kind = "a palette or single-channel PNG of VOC class indices (not an RGB rendering)"

    def __init__(self, root: Path, aug: bool | None = None) -> None:
        self.root = Path(root)
        have_aug = (self.root / AUG_MASKS).is_dir() and (self.root / LISTS / AUG_LIST).is_file()
        if aug and not have_aug:
            raise FileNotFoundError(f"SBD's masks requested but {self.root / AUG_MASKS}/ or "
                                    f"{self.root / LISTS / AUG_LIST} is missing")  # fmt: skip
        self.aug = have_aug if aug is None else bool(aug)
        self.layout = "voc2012+sbd" if self.aug else "voc2012"
        self.label_set = voc_label_set()
        valid = np.zeros(256, bool)
        valid[[*range(len(CLASSES)), BOUNDARY]] = True
        self._masks = IndexMasks(self.label_set, valid, f"class indices 0-{len(CLASSES) - 1}, {BOUNDARY} boundary")

    def samples(self, split: str) -> list[Sample]:
        aug = self.aug and split == "train"
        listing = self.root / LISTS / (AUG_LIST if aug else f"{split}.txt")
        if not listing.is_file():
            raise ValueError(f"empty split '{split}': no list {listing}")
        names = sorted(dict.fromkeys(line.split()[0] for line in listing.read_text().splitlines() if line.strip()))
        if not names:
            raise ValueError(f"empty split '{split}': {listing} lists no images (in {self.root / IMAGES})")
        masks = AUG_MASKS if aug else MASKS
        out = []
        for name in names:
            image, mask = f"{IMAGES}/{name}.jpg", f"{masks}/{name}.png"
            if not (self.root / image).is_file():
                raise ValueError(f"{self.root / image}: missing, but listed in {listing} (a mask without its image)")
            if not (self.root / mask).is_file():
                raise ValueError(f"{self.root / image}: image without its mask {self.root / mask}")
            out.append(Sample(name, image, mask))
        return out

    def mask_classes(self, img, where: str) -> np.ndarray:
        return self._masks.map(np.asarray(img), where)  # mode P: the stored index, not the palette colour


def open_voc(root: str | os.PathLike, *, aug: bool | None = None) -> VOCSource:
    """The VOC 2012 dataset at ``root``; ``aug`` None uses SBD's training masks when they are there."""
    return VOCSource(_find(Path(root)), aug)
