"""Dataset sources: one seam between a raw dataset on disk and ``prepare``.

A source lists the (image, mask) pairs of a split, checks them cheaply, and decodes a pair into an RGB image and
a mask of class indices of its :class:`~segmodels.data.labelset.LabelSet`. ``prepare`` only talks to this
protocol, so Cityscapes, Pascal VOC, ADE20K and a folder of one's own data pack the same way:

========== ======================================================================================
cityscapes ``leftImg8bit/``, ``gtFine/`` (extracted, or the two official zips), 19 classes
synthetic  the generated dataset of ``segmodels synth`` (Cityscapes layout, or the one it was written in)
voc        Pascal VOC 2012 (``JPEGImages/``, ``SegmentationClass/``, optional SBD ``SegmentationClassAug/``)
ade20k     ADEChallengeData2016 (``images/``, ``annotations/``), 150 classes
folder     ``images/``, ``masks/`` and ``classes.yaml`` of one's own
========== ======================================================================================

A dataset of another layout joins with one line: ``register_source("name", opener)``, where
``opener(root, **options)`` returns an object with the attributes and methods of :class:`Source`. A source may
also have ``skipped() -> list[str]``: one line per kind of input it left out on purpose (archive members outside
the official layout), which ``prepare`` returns and prints.

Instance ids (for the instance-level scores, iIoU): every source answers ``read_instances(sample)``, None where
the dataset has none (VOC, ADE20K, folder). A source whose samples may carry them (Cityscapes) also has
``instance_encoding`` (how ids encode objects; ``"cityscapes"``: label id × 1000 + k, the plain label id off
objects) and ``missing_instances(samples) -> list[str]`` (the absent instance files, named, found without reading
any); ``prepare`` packs a split's instance ids only when none is missing, and a source without
``instance_encoding`` (one registered before instance ids existed, too) packs none.

This module imports neither torch nor the readers themselves: the config schema and ``segmodels --help`` import
it, and each built-in reader is imported when it is opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from segmodels.data.labelset import LabelSet

__all__ = ["SOURCES", "Opener", "Sample", "Source", "open_source", "register_source", "source_names"]


@dataclass(frozen=True)
class Sample:
    name: str  # image id, e.g. aachen_000000_000019 or 2007_000032
    image: str  # path of the image inside the source (relative to its root, or an archive member)
    label: str  # path of the mask inside the source


@runtime_checkable
class Source(Protocol):
    """What ``prepare`` and full-resolution scoring need from a raw dataset."""

    root: Path
    layout: str  # how the data is stored, e.g. "tree", "zip", "voc2012+sbd"; recorded in the manifest
    label_set: LabelSet

    def samples(self, split: str) -> list[Sample]:
        """The split's pairs sorted by name. ValueError naming the folder for an empty split, and naming the file
        for an image without a mask or a mask without an image."""
        ...

    def stamps(self, samples: list[Sample]) -> list[str]:
        """Cheap per-pair fingerprints (size and mtime, an archive's CRC) that change when an input changes."""
        ...

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        """(height, width) shared by image and mask, read from the headers where the format allows;
        ValueError naming the file for sizes that differ or a file of the wrong kind."""
        ...

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(RGB H×W×3 uint8, class indices H×W uint8 mapped through the label set, crc32 of the image file,
        crc32 of the mask file). ValueError naming the file for mask values the label set does not know."""
        ...

    def read_label(self, sample: Sample) -> np.ndarray:
        """The mask alone as class indices (H×W uint8), for scoring at full resolution."""
        ...

    def read_instances(self, sample: Sample) -> np.ndarray | None:
        """The sample's instance ids (H×W int32, full resolution) in the source's ``instance_encoding``, or None
        for a source without instance ids. A missing or unreadable file raises, naming it."""
        ...

    def fresh(self) -> Source:
        """A copy with no open file handles, safe to use in a forked worker."""
        ...


Opener = Callable[..., Source]


def _builtin(module: str, function: str) -> Opener:
    """An opener that imports its reader only when a dataset of that kind is opened."""

    def opener(root: str | Path, **options: Any) -> Source:
        return getattr(importlib.import_module(f"segmodels.data.sources.{module}"), function)(root, **options)

    opener.__name__ = opener.__qualname__ = function
    return opener


SOURCES: dict[str, Opener] = {
    "synthetic": _builtin("synthetic", "open_synthetic"),
    "cityscapes": _builtin("cityscapes", "open_cityscapes"),
    "voc": _builtin("voc", "open_voc"),
    "ade20k": _builtin("ade20k", "open_ade20k"),
    "folder": _builtin("folder", "open_folder"),
}


def register_source(name: str, opener: Opener) -> None:
    """Make ``opener(root, **options) -> Source`` available as ``prepare --source NAME`` / ``data.source``."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"source name must be letters, digits, '_' and '-', got {name!r}")
    if name in SOURCES:
        raise ValueError(f"source {name!r} is already registered")
    if not callable(opener):
        raise TypeError(f"the opener of source {name!r} must be callable, got {opener!r}")
    SOURCES[name] = opener


def source_names() -> list[str]:
    """The registered sources, built-in ones first."""
    return list(SOURCES)


def open_source(name: str, root: str | Path, **options: Any) -> Source:
    """Open the dataset at ``root`` with the reader registered as ``name``."""
    try:
        opener = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(source_names())}") from None
    return opener(Path(root), **options)
