"""Corrupted validation images, made once per study and read by every model (so the comparisons are paired).

``data/corrupted/{dataset}/{corruption}/`` holds ``s{k}.npy`` (count, H, W, 3) uint8 for each severity k: the
first ``count`` images of the packed split, corrupted by :func:`segmodels.data.corruptions.corrupt_images` (each
image with its own seed from its id, the corruption and the severity), and ``corrupted.json``, written after the
arrays it lists: the corruption and its group, the severities done, the image count and ids, the packed data's
identity (:func:`segmodels.data.pack.data_identity`), the split and image size, the imagecorruptions version,
whether the corruption is ported, and the seconds per image of each severity (wall clock over the worker
processes of the run that made it).

Each array is written into a temporary file beside it and renamed into place, and ``corrupted.json`` is rewritten
(atomically) after each severity, so a crash leaves complete arrays, a record of those done, and temporaries that
the next run removes; it then skips the severities recorded for the same data, ids and package version, and
starts over when any of those differ. One writer per folder at a time (a lock file, :mod:`segmodels.locks`).

:func:`open_corrupted` gives a severity's array by memory map after checking it against the split it stands for.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmodels.atomic import disk_full_error, fsync_dir
from segmodels.data import corruptions

if TYPE_CHECKING:
    from segmodels.data.loader import PackedSplit

__all__ = ["MARKER", "cache_folder", "open_corrupted", "write_corrupted"]

MARKER = "corrupted.json"
FORMAT = 1
_SAME = ("format", "corruption", "split", "data_identity", "size", "count", "names", "imagecorruptions", "ported")


def cache_folder(dataset: str, corruption: str, root: str | Path = "data/corrupted") -> Path:
    """``root/dataset/corruption/``: where :func:`write_corrupted` puts a corruption's images."""
    return Path(root) / dataset / corruption


def _array(folder: Path, severity: int) -> Path:
    return folder / f"s{int(severity)}.npy"


def _rerun(corruption: str) -> str:
    return f"run `segmodels corrupt --config CONFIG --corruption {corruption}` again"


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_record(file: Path) -> dict | None:
    from segmodels.study.runs import read_json

    try:
        record = read_json(file)
    except (OSError, ValueError):  # unreadable: as good as absent, the arrays are made again
        return None
    return record if isinstance(record, dict) else None


def _shape_of(file: Path) -> tuple[int, ...] | None:
    try:
        return tuple(np.load(file, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def write_corrupted(
    split_dir: str | Path,
    folder: str | Path,
    corruption: str,
    severities: Sequence[int],
    *,
    images: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``folder/s{k}.npy`` for each severity (the first ``images`` images of the packed split at
    ``split_dir``; None: all) and ``folder/corrupted.json``; returns the record. Severities already recorded for
    the same data are kept."""
    from segmodels.data._io import Progress
    from segmodels.data.loader import PackedSplit
    from segmodels.data.pack import data_identity
    from segmodels.locks import holding
    from segmodels.study.runs import write_json

    split_dir, folder = Path(split_dir), Path(folder)
    spec = corruptions.CORRUPTIONS.get(corruption)
    if spec is None:
        raise ValueError(f"unknown corruption {corruption!r}; registered: {', '.join(corruptions.CORRUPTIONS)}")
    bad = [k for k in severities if isinstance(k, bool) or not isinstance(k, int) or k not in corruptions.SEVERITIES]
    if bad or not severities:
        raise ValueError(f"severities must be integers 1-5, got {list(severities)}")
    corruptions.require_corruptions([corruption])
    split = PackedSplit(split_dir)
    count = len(split) if images is None else images
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"images: expected a positive integer or None for all, got {images!r}")
    if count > len(split):
        raise ValueError(f"images: {count} is more than the {len(split)} images of split {split.path}; at most "
                         f"{len(split)}, or None for all")  # fmt: skip
    h, w = split.size
    record: dict[str, Any] = {
        "format": FORMAT,
        "corruption": corruption,
        "group": spec.group,
        "label": spec.label,
        "ported": spec.ported,
        "imagecorruptions": _package_version(),
        "data_identity": data_identity(split_dir.parent),
        "split": split.path.name,
        "size": [h, w],
        "count": count,
        "names": list(split.names[:count]),
    }
    marker = folder / MARKER
    folder.mkdir(parents=True, exist_ok=True)
    with holding(folder / ".lock", job=f"segmodels corrupt {corruption}", label="corrupted images lock"):
        for stale in [*folder.glob(".s*.npy.*.tmp"), *folder.glob(f".{MARKER}.*.tmp")]:
            stale.unlink(missing_ok=True)  # an interrupted write's; the lock says no writer is at work now
        previous = _read_record(marker)
        seconds: dict[str, float] = {}
        if previous is not None and all(previous.get(key) == record[key] for key in _SAME):
            for k in previous.get("severities", []):
                if _shape_of(_array(folder, k)) == (count, h, w, 3):
                    seconds[str(k)] = previous.get("seconds_per_image", {}).get(str(k))
        else:  # other data, ids or package: nothing made before holds any longer
            marker.unlink(missing_ok=True)
            for old in folder.glob("s*.npy"):
                if re.fullmatch(r"s\d+\.npy", old.name):
                    old.unlink()
            fsync_dir(folder)
            previous = None
        todo = [k for k in sorted(set(severities)) if str(k) not in seconds]
        with Progress(count * len(todo), f"corrupt {corruption}", enabled=progress) as bar:
            for k in todo:
                start = time.perf_counter()
                _write_array(folder, k, split.images[:count], record["names"], corruption, workers, bar)
                seconds[str(k)] = (time.perf_counter() - start) / count
                previous = _with_severities(record, seconds)
                write_json(marker, previous)  # after the array it adds
        record = _with_severities(record, seconds)
        if previous != record:  # nothing to do, but an array it listed is gone
            write_json(marker, record)
    return record


def _with_severities(record: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    done = sorted(int(k) for k in seconds)
    return {**record, "severities": done, "seconds_per_image": {str(k): seconds[str(k)] for k in done}}


def _write_array(folder: Path, severity: int, images: np.ndarray, names: list[str], corruption: str,
                 workers: int, bar: Any) -> None:  # fmt: skip
    """``s{severity}.npy`` written into a temporary file beside it, flushed, fsynced and renamed into place."""
    final = _array(folder, severity)
    tmp = folder / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=images.shape)
        corruptions.corrupt_images(images, names, corruption, severity, workers=workers, progress=bar, out=out)
        out.flush()
        del out
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = disk_full_error(exc, final) if isinstance(exc, Exception) else None
        if full is not None:
            raise full from exc
        raise
    fsync_dir(folder)


def open_corrupted(folder: str | Path, severity: int, split: PackedSplit) -> np.ndarray:
    """``folder/s{severity}.npy`` by memory map, (count, H, W, 3) uint8: the corrupted copies of ``split``'s first
    ``count`` images, after checking ``corrupted.json`` against the split (data identity, image ids, size)."""
    from segmodels.data.pack import data_identity

    folder = Path(folder)
    marker, file = folder / MARKER, _array(folder, severity)
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} not found: the corrupted images are not made (or not finished); "
                                f"{_rerun(folder.name)}")  # fmt: skip
    record = _read_record(marker)
    if record is None:
        raise ValueError(f"{marker} cannot be read; {_rerun(folder.name)}")
    name = record.get("corruption", folder.name)
    if int(severity) not in record.get("severities", []):
        raise FileNotFoundError(f"{marker} lists severities {record.get('severities')}, not {severity}; "
                                f"{_rerun(name)} with that severity")  # fmt: skip
    count = record.get("count")
    problem = None
    if record.get("data_identity") != data_identity(split.path.parent):
        problem = f"was made from other packed data than {split.path.parent} holds now (its data identity differs)"
    elif record.get("split") != split.path.name:
        problem = f"was made from split '{record.get('split')}', not '{split.path.name}'"
    elif not isinstance(count, int) or not 1 <= count <= len(split) or record.get("names") != split.names[:count]:
        problem = f"lists other image ids than the first {count} of {split.path}"
    if problem:
        raise ValueError(f"{marker} {problem}; {_rerun(name)}")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found though {marker} lists severity {severity}; {_rerun(name)}")
    try:
        array = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not a readable array ({exc}); {_rerun(name)}") from None
    want = (count, *split.size, 3)
    if array.dtype != np.uint8 or array.shape != want:
        raise ValueError(f"{file}: expected uint8 {want} for {split.path}, got {array.dtype} {array.shape}; "
                         f"{_rerun(name)}")  # fmt: skip
    return array
