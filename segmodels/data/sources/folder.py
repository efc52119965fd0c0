"""One's own dataset: ``images/`` and ``masks/`` with matching file names, and the classes in ``classes.yaml``.

::

    mydata/
      classes.yaml         # - background                   or   classes:
                           # - road                                - {name: background, color: [0, 0, 0]}
                           # - car                                 - {name: road, color: [128, 64, 128]}
                           #                                     ignore_index: 255        (optional, default 255)
                           #                                     ignore_color: [255, 255, 255]   (optional)
      images/train/*.jpg   masks/train/*.png     (split folders)
      images/val/*.jpg     masks/val/*.png
    or
      images/*.jpg  masks/*.png  train.txt  val.txt       (list files at the root, one image name per line)

Images may be PNG, JPEG, BMP, TIFF or WebP; an image and its mask share the name up to the suffix. Masks are
stored losslessly (PNG, BMP, TIFF) in one of two ways:

- class indices: single-channel (or palette, when ``classes.yaml`` gives no colours) images whose value is the
  class's position in ``classes.yaml``; the value ``ignore_index`` marks pixels that are not scored (packed as
  255, the ignore value of training and scoring, whatever value the masks use);
- colours: RGB (or palette) images in the colours given in ``classes.yaml``; ``ignore_color`` marks pixels that
  are not scored. A colour that is not listed is an error naming the file and the colour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segmodels.data.images import IMAGE_SUFFIXES
from segmodels.data.labelset import LabelSet
from segmodels.data.sources import Sample
from segmodels.data.sources._files import FolderSource, IndexMasks, pair_by_stem, stems_in

__all__ = ["CLASSES_FILE", "ClassFile", "FolderDataset", "open_folder", "read_classes"]

CLASSES_FILE = "classes.yaml"
IMAGES, MASKS = "images", "masks"


class ClassFile:
    """What ``classes.yaml`` says: the label set, and the colour of each class when masks are coloured."""

    def __init__(self, label_set: LabelSet, colours: dict[tuple[int, int, int], int] | None,
                 ignore_colour: tuple[int, int, int] | None = None, ignore_value: int = 255) -> None:  # fmt: skip
        self.label_set, self.colours, self.ignore_colour = label_set, colours, ignore_colour
        self.ignore_value = ignore_value  # the mask value of unscored pixels in index masks


def _colour(value: Any, where: str, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):  # fmt: skip
        raise ValueError(f"{where}: the color of {what} must be [r, g, b] with values 0-255, got {value!r}")
    return value[0], value[1], value[2]


def read_classes(path: Path) -> ClassFile:
    """Parse ``classes.yaml``; ValueError naming the file for anything it cannot use."""
    import yaml

    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: missing; a folder dataset lists its classes there "
                                f"(a list of names, or of {{name: ..., color: [r, g, b]}})")  # fmt: skip
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({exc})") from None
    options: dict[str, Any] = {}
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"classes", "ignore_index", "ignore_color"})
        if unknown:
            raise ValueError(f"{where}: unknown key '{unknown[0]}'; allowed: classes, ignore_index, ignore_color")
        options, data = data, data.get("classes")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: expected a list of class names (or of {{name: ..., color: [r, g, b]}})")
    names, colours = [], []
    for i, entry in enumerate(data):
        if isinstance(entry, dict):
            if not isinstance(entry.get("name"), str) or set(entry) - {"name", "color"}:
                raise ValueError(f"{where}: class {i} must be {{name: ..., color: [r, g, b]}}, got {entry!r}")
            names.append(entry["name"])
            colours.append(_colour(entry["color"], where, repr(entry["name"])) if "color" in entry else None)
        elif isinstance(entry, (str, int)) and not isinstance(entry, bool):
            names.append(str(entry))
            colours.append(None)
        else:
            raise ValueError(f"{where}: class {i} must be a name or {{name: ..., color: [r, g, b]}}, got {entry!r}")
    ignore = options.get("ignore_index", 255)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise ValueError(f"{where}: ignore_index must be an integer 0-255, got {ignore!r}")
    if ignore < len(names):
        raise ValueError(f"{where}: ignore_index {ignore} is also a class index ({names[ignore]!r}); it must be "
                         f"≥ the number of classes ({len(names)})")  # fmt: skip
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        missing = [n for n, c in zip(names, colours, strict=True) if c is None]
        raise ValueError(f"{where}: colors are given for some classes but not for {', '.join(missing[:5])}; "
                         f"give every class a color or none")  # fmt: skip
    try:
        lut = np.full(256, 255, np.uint8)  # class indices as they are; the masks' ignore value → 255
        lut[: len(names)] = np.arange(len(names))
        label_set = LabelSet("folder", tuple(names), np.array(given, np.uint8) if given else None, 255, lut)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not given:
        if "ignore_color" in options:
            raise ValueError(f"{where}: ignore_color needs the classes' colors too")
        return ClassFile(label_set, None, None, ignore)
    table: dict[tuple[int, int, int], int] = {}
    for index, (name, colour) in enumerate(zip(names, given, strict=True)):
        if colour in table:
            raise ValueError(f"{where}: classes {names[table[colour]]!r} and {name!r} share the color {list(colour)}")
        table[colour] = index
    ignore_colour = None
    if "ignore_color" in options:
        ignore_colour = _colour(options["ignore_color"], where, "ignore_color")
        if ignore_colour in table:
            raise ValueError(f"{where}: ignore_color {list(ignore_colour)} is also the color of "
                             f"{names[table[ignore_colour]]!r}")  # fmt: skip
        table[ignore_colour] = label_set.ignore_index
    return ClassFile(label_set, table, ignore_colour, ignore)


class FolderDataset(FolderSource):
    """``images/``, ``masks/`` and ``classes.yaml`` under one root (see the module docstring)."""

    mask_modes = ("L", "P", "RGB", "RGBA")
    mask_kind = "a class-index or color mask (single-channel, palette or RGB)"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.classes = read_classes(self.root / CLASSES_FILE)
        self.label_set = self.classes.label_set
        n, ignore = self.label_set.num_classes, self.classes.ignore_value
        valid = np.zeros(256, bool)
        valid[[*range(n), ignore]] = True
        self._index = IndexMasks(self.label_set, valid, f"class indices 0-{n - 1}, ignore {ignore}")
        self.splits_by = "folders" if (self.root / IMAGES).is_dir() and any(
            p.is_dir() for p in (self.root / IMAGES).iterdir()) else "lists"  # fmt: skip
        self.layout = f"folder ({self.splits_by}, {'color' if self.classes.colours else 'index'} masks)"

    def stamps(self, samples: list[Sample]) -> list[str]:
        st = (self.root / CLASSES_FILE).stat()  # another ignore_color maps the same files differently
        return [f"{s}|{st.st_size}:{st.st_mtime_ns}" for s in super().stamps(samples)]

    def samples(self, split: str) -> list[Sample]:
        images_dir, masks_dir, listing = self.root / IMAGES / split, self.root / MASKS / split, self.root / f"{split}.txt"
        if images_dir.is_dir():
            images, masks = stems_in(images_dir, IMAGE_SUFFIXES), stems_in(masks_dir, IMAGE_SUFFIXES)
            return pair_by_stem(self.root, images, masks, images_dir, split)
        if not listing.is_file():
            raise ValueError(f"empty split '{split}': neither the folder {images_dir} nor the list {listing}")
        stems = list(dict.fromkeys(line.strip() for line in listing.read_text().splitlines() if line.strip()))
        if not stems:
            raise ValueError(f"empty split '{split}': {listing} lists no images (of {self.root / IMAGES})")
        images, masks = stems_in(self.root / IMAGES, IMAGE_SUFFIXES), stems_in(self.root / MASKS, IMAGE_SUFFIXES)
        out = []
        for stem in sorted(stems):
            stem = Path(stem).stem if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem
            if stem not in images:
                raise ValueError(f"{listing}: lists '{stem}' but {self.root / IMAGES} has no image of that name")
            if stem not in masks:
                raise ValueError(f"{images[stem]}: image without its mask '{stem}' in {self.root / MASKS}")
            out.append(Sample(stem, images[stem].relative_to(self.root).as_posix(),
                              masks[stem].relative_to(self.root).as_posix()))  # fmt: skip
        return out

    def mask_classes(self, img, where: str) -> np.ndarray:
        colours = self.classes.colours
        if img.mode == "L" or (img.mode == "P" and colours is None):
            return self._index.map(np.asarray(img), where)
        if colours is None:
            raise ValueError(f"{where}: a color mask (mode {img.mode}), but {self.root / CLASSES_FILE} gives no "
                             f"colors; add [r, g, b] to every class or store class indices")  # fmt: skip
        if img.mode == "P":  # map the palette's entries, then look the indices up
            palette = np.zeros((256, 3), np.int64)
            entries = np.asarray(img.getpalette() or [], np.int64).reshape(-1, 3)[:256]
            palette[: len(entries)] = entries
            raw = np.asarray(img)
            used = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
            lut = np.zeros(256, np.uint8)
            for index in used:
                lut[index] = self._class_of(tuple(palette[index].tolist()), where)
            return lut[raw]
        rgb = np.asarray(img.convert("RGB") if img.mode != "RGB" else img).astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        unique, inverse = np.unique(code, return_inverse=True)
        classes = np.array([self._class_of(((c >> 16) & 255, (c >> 8) & 255, c & 255), where) for c in unique.tolist()],
                           np.uint8)  # fmt: skip
        return classes[inverse.reshape(code.shape)]

    def _class_of(self, colour: tuple[int, int, int], where: str) -> int:
        try:
            return self.classes.colours[colour]
        except KeyError:
            also = "" if self.classes.ignore_colour is None else f" nor its ignore_color {list(self.classes.ignore_colour)}"
            raise ValueError(f"{where}: color {list(colour)} is not a class color of {self.root / CLASSES_FILE}"
                             f"{also}") from None  # fmt: skip


def open_folder(root: str | os.PathLike) -> FolderDataset:
    """The folder dataset at ``root``."""
    root = Path(root)
    if not (root / IMAGES).is_dir():
        raise FileNotFoundError(f"no folder dataset in {root}: it needs {IMAGES}/, {MASKS}/ and {CLASSES_FILE} "
                                f"(see `segmodels prepare --help` and the README, 'Datasets')")  # fmt: skip
    return FolderDataset(root)
