"""A dataset's label set: class names, colours, the ignore value and how raw mask values map to class indices.

A source states its label set; ``prepare`` writes it into the packed ``manifest.json`` (keys ``label_set``,
``classes``, ``palette``, ``ignore_index``) and everything downstream — the number of classes of a model, the
metrics, figures, report tables, ``predict`` and MLflow — reads it back from there with :func:`label_set_of`.
Only the Cityscapes source knows the Cityscapes table.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IGNORE_INDEX", "MANIFEST", "LabelSet", "cityscapes_label_set", "default_palette", "label_set_of", "names_or_indices",
           "checkpoint_label_set", "numbered_label_set", "recorded_label_set"]

MANIFEST = "manifest.json"
IGNORE_INDEX = 255  # the unscored value of every packed label array, whatever the raw data used


def default_palette(n: int) -> np.ndarray:
    """``n`` distinct colours (n × 3 uint8): Pascal VOC's colour map (bits of the index spread over R, G, B).

    Index 0 is black, 1-20 are VOC's class colours; it goes on to 255 and wraps beyond that."""
    out = np.zeros((max(n, 0), 3), dtype=np.uint8)
    for i in range(len(out)):
        c, r, g, b = i % 256, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


@dataclass(frozen=True, eq=False)
class LabelSet:
    """The classes a dataset is trained and scored on.

    ``lut`` maps every raw mask value (0-255) to a class index or ``ignore_index``; None means the raw values
    already are class indices (anything ≥ the number of classes is ignored).
    """

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray = field(default=None)  # type: ignore[assignment]  # (C, 3) uint8; None → default_palette
    ignore_index: int = 255
    lut: np.ndarray | None = None

    def __post_init__(self) -> None:
        classes = tuple(str(c) for c in self.classes)
        object.__setattr__(self, "classes", classes)
        if not classes:
            raise ValueError(f"label set {self.name!r}: no classes")
        dupes = sorted(name for name, n in Counter(classes).items() if n > 1)
        if dupes:
            raise ValueError(f"label set {self.name!r}: class names appear more than once: {', '.join(dupes)}")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"label set {self.name!r}: ignore_index must be 0-255, got {self.ignore_index}")
        if self.ignore_index < len(classes):
            raise ValueError(f"label set {self.name!r}: ignore_index {self.ignore_index} is also a class index "
                             f"({classes[self.ignore_index]!r}); it must be ≥ the number of classes ({len(classes)})")
        palette = default_palette(len(classes)) if self.palette is None else np.asarray(self.palette)
        if palette.shape != (len(classes), 3) or palette.min(initial=0) < 0 or palette.max(initial=0) > 255:
            raise ValueError(f"label set {self.name!r}: palette must be {len(classes)} RGB triples of 0-255, "
                             f"got shape {palette.shape}")
        object.__setattr__(self, "palette", palette.astype(np.uint8))
        if self.lut is not None:
            lut = np.asarray(self.lut)
            if lut.shape != (256,):
                raise ValueError(f"label set {self.name!r}: lut must map all 256 raw values, got shape {lut.shape}")
            bad = sorted(set(np.unique(lut).tolist()) - {*range(len(classes)), self.ignore_index})
            if bad:
                raise ValueError(f"label set {self.name!r}: lut maps to {bad[:5]}, which are neither class indices "
                                 f"(0-{len(classes) - 1}) nor ignore_index {self.ignore_index}")
            object.__setattr__(self, "lut", lut.astype(np.uint8))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw mask values (uint8) → class indices, ignore where the set does not train a value."""
        raw = np.asarray(raw, dtype=np.uint8)
        if self.lut is not None:
            return self.lut[raw]
        return np.where(raw < self.num_classes, raw, np.uint8(self.ignore_index)).astype(np.uint8)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class-index mask (H×W) → H×W×3 uint8 colours; ignore and any value outside the classes are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.palette
        mask = np.asarray(mask)
        if mask.dtype != np.uint8:
            mask = np.where((mask >= 0) & (mask < self.num_classes), mask, self.ignore_index).astype(np.uint8)
        return table[mask]

    def to_manifest(self) -> dict[str, Any]:
        """The keys ``prepare`` writes into ``manifest.json``."""
        return {
            "label_set": self.name,
            "classes": list(self.classes),
            "palette": self.palette.tolist(),
            "ignore_index": int(self.ignore_index),
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str = "manifest.json") -> LabelSet:
        """The label set of a packed dataset. Manifests written before palettes were recorded get Cityscapes'
        colours when their classes are Cityscapes' and the default palette otherwise."""
        classes = manifest.get("classes")
        if not isinstance(classes, list) or not classes:
            raise ValueError(f"{where}: no 'classes' list; pack the data again with `segmodels prepare --force`")
        palette = manifest.get("palette")
        name = manifest.get("label_set")
        if palette is None:
            from segmodels.data.labels import CLASS_NAMES, PALETTE

            if tuple(classes) == CLASS_NAMES:
                palette, name = PALETTE, name or "cityscapes"
        try:
            return cls(name=name or str(manifest.get("source", "dataset")), classes=tuple(classes),
                       palette=None if palette is None else np.asarray(palette),
                       ignore_index=int(manifest.get("ignore_index", 255)))  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def label_set_of(path: str | Path) -> LabelSet:
    """The label set recorded in the manifest of a packed dataset folder (or of the folder above a split)."""
    path = Path(path)
    for candidate in (path / MANIFEST, path.parent / MANIFEST):
        if candidate.is_file():
            return LabelSet.from_manifest(json.loads(candidate.read_text()), str(candidate))
    raise FileNotFoundError(f"no {MANIFEST} in {path} or its parent: run `segmodels prepare` first")


def recorded_label_set(path: str | Path) -> LabelSet | None:
    """:func:`label_set_of`, or None where no manifest, or one without a class list (arrays packed by hand)."""
    try:
        return label_set_of(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        if "no 'classes' list" in str(exc):
            return None
        raise


def cityscapes_label_set() -> LabelSet:
    """Cityscapes' 19 training classes, mapping the 34 label ids of ``*_gtFine_labelIds.png``."""
    from segmodels.data.labels import CLASS_NAMES, ID_TO_TRAINID, IGNORE_INDEX, PALETTE

    return LabelSet("cityscapes", CLASS_NAMES, PALETTE, IGNORE_INDEX, ID_TO_TRAINID)


def names_or_indices(names: Sequence[str] | None, n: int) -> list[str]:
    """``names`` when it has ``n`` entries, ``class{i}`` otherwise."""
    return list(names) if names is not None and len(names) == n else [f"class{i}" for i in range(n)]


def numbered_label_set(n: int) -> LabelSet:
    """``n`` classes named ``class{i}`` with the default colours: where nothing records a dataset's classes."""
    return LabelSet("classes", tuple(names_or_indices(None, n)))


def checkpoint_label_set(meta: dict[str, Any]) -> LabelSet | None:
    """The label set a checkpoint records (``checkpoint.pt``'s ``label_set``: the packed data it was trained on),
    or None where it records none or one of another size than its ``num_classes``."""
    recorded = meta.get("label_set")
    if isinstance(recorded, dict) and len(recorded.get("classes", ())) == int(meta["num_classes"]):
        return LabelSet.from_manifest(recorded, "the checkpoint's label_set")
    return None
