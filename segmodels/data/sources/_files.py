"""What the readers of plain image folders share (Pascal VOC, ADE20K, one's own folder): pairing by name,
header checks without decoding, decoding, and mapping stored mask values to class indices with an error that
names the file and the values the label set does not know."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np

from segmodels.data.labelset import LabelSet
from segmodels.data.sources import Sample

__all__ = ["FolderSource", "IndexMasks", "pair_by_stem", "stems_in"]

LOSSY = frozenset({".jpg", ".jpeg", ".webp"})  # never a mask: compression changes the values


def stems_in(folder: Path, suffixes: frozenset[str]) -> dict[str, Path]:
    """stem → file for the files of ``folder`` with one of ``suffixes`` (any case, hidden files skipped);
    ValueError naming both files when two share a stem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise ValueError(f"{path}: same name as {found[path.stem].name}; which one is meant is ambiguous")
        found[path.stem] = path
    return found


def pair_by_stem(root: Path, images: dict[str, Path], masks: dict[str, Path], where: Path, split: str,
                 what: str = "images") -> list[Sample]:  # fmt: skip
    """Samples of the stems found in both; ValueError naming the folder for none, a lonely file otherwise."""
    if not images:
        raise ValueError(f"empty split '{split}': no {what} in {where}")
    for own, other, kind, counterpart in ((images, masks, "image", "mask"), (masks, images, "mask", "image")):
        lonely = sorted(set(own) - set(other))
        if lonely:
            more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
            raise ValueError(f"{own[lonely[0]]}: {kind} without its {counterpart} '{lonely[0]}'{more}")
    return [Sample(stem, _rel(root, images[stem]), _rel(root, masks[stem])) for stem in sorted(images)]


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _open(data: bytes | Path, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


def _load(data: bytes, where: str):
    img = _open(data, where)
    try:
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error … on damaged files
        raise ValueError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None
    return img


class IndexMasks:
    """Masks that store a value per pixel: ``valid`` raw values, mapped to class indices by ``label_set.lut``."""

    def __init__(self, label_set: LabelSet, valid: np.ndarray, meaning: str) -> None:
        self.label_set, self.valid, self.meaning = label_set, np.asarray(valid, bool), meaning

    def map(self, raw: np.ndarray, where: str) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            raise ValueError(f"{where}: expected 8-bit mask values, got {raw.dtype}")
        present = np.bincount(raw.ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & ~self.valid)
        if bad.size:
            raise ValueError(f"{where}: mask values {bad[:8].tolist()} are not in the label set "
                             f"'{self.label_set.name}' ({self.meaning})")  # fmt: skip
        return self.label_set.to_train_ids(raw)


class FolderSource:
    """A dataset of plain files under ``root``; subclasses list the pairs and turn a decoded mask into classes.

    ``Sample.image`` and ``Sample.label`` are paths relative to ``root``, as the manifest records them.
    """

    root: Path
    layout: str
    label_set: LabelSet
    mask_modes: tuple[str, ...] = ("L", "P")  # PIL modes a mask may have
    mask_kind = "a single-channel or palette PNG of class indices"

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def mask_classes(self, img, where: str) -> np.ndarray:
        """A decoded mask (PIL image of one of ``mask_modes``) → class indices H×W uint8."""
        raise NotImplementedError

    def fresh(self):
        return self  # no open handles: every read opens and closes its file

    def stamps(self, samples: list[Sample]) -> list[str]:
        out = []
        for s in samples:
            a, b = (self.root / s.image).stat(), (self.root / s.label).stat()
            out.append(f"{a.st_size}:{a.st_mtime_ns}|{b.st_size}:{b.st_mtime_ns}")
        return out

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        where_img, where_lab = str(self.root / sample.image), str(self.root / sample.label)
        with _open(self.root / sample.image, where_img) as img, _open(self.root / sample.label, where_lab) as lab:
            (iw, ih), (lw, lh), mode = img.size, lab.size, lab.mode
        if Path(sample.label).suffix.lower() in LOSSY:
            raise ValueError(f"{where_lab}: a mask must be stored losslessly (PNG), not as {Path(sample.label).suffix}")
        if mode not in self.mask_modes:
            raise ValueError(f"{where_lab}: expected {self.mask_kind}, got image mode {mode}")
        if (ih, iw) != (lh, lw):
            raise ValueError(f"{where_lab}: mask is {lh}×{lw} but its image {where_img} is {ih}×{iw} (height×width)")
        return ih, iw

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, int, int]:
        from segmodels.data.images import to_rgb8

        where_img = str(self.root / sample.image)
        img_bytes = (self.root / sample.image).read_bytes()
        with _load(img_bytes, where_img) as img:
            image = to_rgb8(img, where_img)
        lab_bytes = (self.root / sample.label).read_bytes()
        label = self._classes(lab_bytes, sample)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{self.root / sample.label}: mask is {label.shape[0]}×{label.shape[1]} but its image "
                             f"is {image.shape[0]}×{image.shape[1]} (height×width)")  # fmt: skip
        return image, label, zlib.crc32(img_bytes), zlib.crc32(lab_bytes)

    def read_label(self, sample: Sample) -> np.ndarray:
        return self._classes((self.root / sample.label).read_bytes(), sample)

    def read_instances(self, sample: Sample) -> None:
        return None  # masks of classes only: Pascal VOC's SegmentationObject is not read, ADE20K and folders have none

    def _classes(self, data: bytes, sample: Sample) -> np.ndarray:
        where = str(self.root / sample.label)
        with _load(data, where) as img:
            if img.mode not in self.mask_modes:
                raise ValueError(f"{where}: expected {self.mask_kind}, got image mode {img.mode}")
            return self.mask_classes(img, where)
