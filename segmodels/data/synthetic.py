"""A generated dataset in the exact Cityscapes layout, so the demo runs the same ``prepare`` code as real data.

``generate(out, train=48, val=16, size=(256, 512), seed=0)`` writes
``leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png`` and the matching
``gtFine/.../*_gtFine_labelIds.png`` (Cityscapes label ids, not train ids), ``*_gtFine_instanceIds.png`` (16-bit:
label id × 1000 + k on each visible person, rider, car, … counted per class from 0, the label id elsewhere, as
Cityscapes writes them) and ``*_gtFine_color.png``, with made-up city names. Image ``i`` of a split depends only on (seed, split, i, size), so any worker count gives the
same files and a larger count only adds images. Each file is written atomically; ``synth.json`` at the root
records the parameters and which files each scene has (``files``: :data:`FILES_VERSION`), and a second run with the
same parameters and complete output does nothing.

The default (48 train / 16 val at 256×512, packed at 128×256 by ``config/demo.yaml``) is what a CPU can train
every model of the study on within minutes; scenes are described in :mod:`segmodels.data.scene`. The same scenes
in the Pascal VOC, ADE20K and folder layouts: :mod:`segmodels.data.layouts`.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segmodels.atomic import fsync_dir, write_bytes_atomic
from segmodels.data._io import Progress, atomic_write_json, default_workers, encode_png
from segmodels.data.sources.cityscapes import (
    IMAGE_DIR,
    IMAGE_SUFFIX,
    IMAGE_ZIP,
    INSTANCE_SUFFIX,
    LABEL_DIR,
    LABEL_SUFFIX,
    LABEL_ZIP,
)
from segmodels.data.sources.synthetic import PARAMS_FILE

__all__ = [
    "CITIES",
    "FILES_VERSION",
    "GENERATOR_VERSION",
    "PARAMS_FILE",
    "SynthParams",
    "generate",
    "generate_zips",
    "image_ids",
    "render",
    "render_with_instances",
]

GENERATOR_VERSION = 1  # bump when the scenes change, so that existing output is regenerated (it seeds the scenes)
FILES_VERSION = 2  # bump when the files of a scene change (2: *_gtFine_instanceIds.png), so that output is rewritten
CITIES = {"train": ("synthtown", "pixelburg", "rendersheim"), "val": ("mockfurt", "procedurach")}
COLOR_SUFFIX = "_gtFine_color.png"
_SPLIT_CODE = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthParams:
    train: int = 48
    val: int = 16
    size: tuple[int, int] = (256, 512)  # [height, width] written to disk
    seed: int = 0
    color: bool = True  # also write *_gtFine_color.png

    def __post_init__(self) -> None:
        for key in ("train", "val", "seed"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"synthetic '{key}' must be a non-negative integer, got {getattr(self, key)!r}")
        if self.train + self.val == 0:
            raise ValueError("synthetic 'train' and 'val' are both 0: nothing to generate")
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f"synthetic 'size' must be [height, width], each at least 32, got {list(self.size)}")

    def record(self) -> dict:
        return {
            "generator": "segmodels.data.synthetic",
            "version": GENERATOR_VERSION,
            **asdict(self),
            "size": list(self.size),
        }


def image_ids(split: str, count: int) -> list[tuple[str, str]]:
    """(city, image id) of the split's first ``count`` images, e.g. ("synthtown", "synthtown_000000_000019")."""
    cities = CITIES[split]
    out = []
    for i in range(count):
        city = cities[i % len(cities)]
        out.append((city, f"{city}_{i // len(cities):06d}_000019"))
    return out


def _record(params: SynthParams) -> dict:
    """What synth.json records: the parameters, and which files a scene has (the layouts of other datasets record
    ``params.record()`` with their own version and files)."""
    return {**params.record(), "files": FILES_VERSION}


def _paths(root: Path, split: str, city: str, name: str, color: bool) -> list[Path]:
    paths = [
        root / IMAGE_DIR / split / city / f"{name}{IMAGE_SUFFIX}",
        root / LABEL_DIR / split / city / f"{name}{LABEL_SUFFIX}",
        root / LABEL_DIR / split / city / f"{name}{INSTANCE_SUFFIX}",
    ]
    if color:
        paths.append(root / LABEL_DIR / split / city / f"{name}{COLOR_SUFFIX}")
    return paths


def render_with_instances(params: SynthParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` → (RGB, label ids, instance ids H×W int32); deterministic in (seed, split,
    index, size)."""
    from segmodels.data.scene import FEATURED, render_scene

    rng = np.random.default_rng([params.seed, _SPLIT_CODE[split], index, GENERATOR_VERSION])
    return render_scene(rng, *params.size, featured=FEATURED[index % len(FEATURED)])


def render(params: SynthParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` → (RGB, label ids); deterministic in (seed, split, index, size)."""
    image, label, _ = render_with_instances(params, split, index)
    return image, label


def _encode(params: SynthParams, split: str, index: int) -> list[bytes]:
    """One scene's PNG files, in the order of :func:`_paths`: image, label ids, instance ids (16-bit), colours."""
    from PIL import Image

    from segmodels.data.labels import ID_PALETTE

    image, label, instances = render_with_instances(params, split, index)
    files = [encode_png(Image.fromarray(image), 3), encode_png(Image.fromarray(label), 3),
             encode_png(Image.fromarray(instances.astype(np.uint16)), 3)]  # fmt: skip
    if params.color:
        files.append(encode_png(Image.fromarray(ID_PALETTE[label]), 3))
    return files


def _write_one(task: tuple[Path, SynthParams, str, int, str, str]) -> None:
    root, params, split, index, city, name = task
    for path, data in zip(_paths(root, split, city, name, params.color), _encode(params, split, index), strict=True):
        write_bytes_atomic(path, data)


def _encode_one(task: tuple[SynthParams, str, int, str, str]) -> list[tuple[str, bytes]]:
    """One scene as (zip member name, PNG bytes) pairs, in the official archives' member layout."""
    params, split, index, city, name = task
    paths = _paths(Path(), split, city, name, params.color)  # relative: the member names
    return [(path.as_posix(), data) for path, data in zip(paths, _encode(params, split, index), strict=True)]


def generate_zips(
    out: str | Path, params: SynthParams | None = None, *, workers: int | None = None, progress: bool = True
) -> int:
    """Write the dataset as the two official archives, ``out/leftImg8bit_trainvaltest.zip`` and
    ``out/gtFine_trainvaltest.zip``, as Cityscapes ships them; returns the number of scenes (0 when up to date).

    Scenes stream from the workers into the archives (stored: PNG is compressed already), so neither memory nor
    disk holds an extracted copy. The archives are written under temporary names and renamed when complete; an
    interrupted run leaves the previous archives, or none, and starts over.
    """
    from segmodels.data._io import parallel_map

    root, params = Path(out), params or SynthParams()
    finals = {IMAGE_DIR: root / IMAGE_ZIP, LABEL_DIR: root / LABEL_ZIP}
    record = {**_record(params), "layout": "zip"}
    if _read_record(root) == {**record, "complete": True} and all(p.is_file() for p in finals.values()):
        return 0
    _check_foreign(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / PARAMS_FILE, {**record, "complete": False})
    todo = [(params, split, i, city, name) for split in ("train", "val")
            for i, (city, name) in enumerate(image_ids(split, getattr(params, split)))]  # fmt: skip
    temps = {top: root / f".{path.name}.tmp-{os.getpid()}" for top, path in finals.items()}
    archives = {top: zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) for top, tmp in temps.items()}
    try:
        n_workers = default_workers() if workers is None else max(1, workers)
        with Progress(len(todo), "synth", enabled=progress) as bar:
            for _, members in parallel_map(_encode_one, todo, workers=n_workers, progress=bar):
                for name, data in members:
                    # A fixed timestamp: the same parameters give archives of the same members and CRCs.
                    info = zipfile.ZipInfo(name, date_time=(2016, 2, 1, 0, 0, 0))
                    archives[name.split("/", 1)[0]].writestr(info, data)
        for top, archive in archives.items():
            archive.close()
            with open(temps[top], "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(temps[top], finals[top])
        fsync_dir(root)
    finally:
        for top, archive in archives.items():
            archive.close()
            temps[top].unlink(missing_ok=True)
    atomic_write_json(root / PARAMS_FILE, {**record, "complete": True})
    return len(todo)


def _read_record(root: Path) -> dict | None:
    try:
        return json.loads((root / PARAMS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _check_foreign(root: Path) -> None:
    """Refuse to mix generated images into a folder that holds other Cityscapes data, or to replace archives
    that hold anything but generated scenes (the official ones hold real cities and a README)."""
    ours = {c for cities in CITIES.values() for c in cities}
    for top in (IMAGE_DIR, LABEL_DIR):
        for city_dir in sorted((root / top).glob("*/*")):
            if city_dir.is_dir() and city_dir.name not in ours:
                raise ValueError(
                    f"{city_dir}: {root} holds other Cityscapes data (city '{city_dir.name}'); "
                    f"refusing to write generated images there; choose another --out"
                )
    for archive in (root / IMAGE_ZIP, root / LABEL_ZIP):
        names = []
        if archive.is_file():
            try:
                with zipfile.ZipFile(archive) as zf:
                    names = zf.namelist()
            except (OSError, zipfile.BadZipFile):
                names = [archive.name]  # not an archive this generator wrote
        other = [n for n in names if n.count("/") != 3 or n.split("/")[2] not in ours]
        if other:
            raise ValueError(f"{archive}: {root} holds other Cityscapes data ({other[0]}); refusing to replace it "
                             "with generated images; choose another --out")  # fmt: skip


def _remove_stale(root: Path, keep: set[Path]) -> None:
    """Remove images no longer wanted and the temporary files of an interrupted run."""
    for split, cities in CITIES.items():
        for top in (IMAGE_DIR, LABEL_DIR):
            for city in cities:
                folder = root / top / split / city
                for path in folder.iterdir() if folder.is_dir() else ():
                    if path.name.endswith(".tmp") or (path.suffix == ".png" and path not in keep):
                        path.unlink()


def generate(
    out: str | Path, params: SynthParams | None = None, *, workers: int | None = None, progress: bool = True
) -> int:
    """Write the dataset under ``out``; returns the number of images rendered (0 when already up to date)."""
    from segmodels.data._io import parallel_map

    root, params = Path(out), params or SynthParams()
    record = _read_record(root)
    wanted = [
        (split, i, city, name)
        for split in ("train", "val")
        for i, (city, name) in enumerate(image_ids(split, getattr(params, split)))
    ]
    expected = {p for split, _, city, name in wanted for p in _paths(root, split, city, name, params.color)}
    if record == {**_record(params), "complete": True} and all(p.is_file() for p in expected):
        return 0
    _check_foreign(root)
    same_content = record is not None and all(
        record.get(k) == v for k, v in params.record().items() if k not in ("train", "val")
    )
    root.mkdir(parents=True, exist_ok=True)
    # Mark the folder as in progress first: an interrupted run is never mistaken for a complete one.
    atomic_write_json(root / PARAMS_FILE, {**_record(params), "complete": False})
    if not same_content:
        for split in CITIES:
            for top in (IMAGE_DIR, LABEL_DIR):
                for city in CITIES[split]:
                    shutil.rmtree(root / top / split / city, ignore_errors=True)
    _remove_stale(root, expected)
    todo = [
        (root, params, split, i, city, name)
        for split, i, city, name in wanted
        if not all(p.is_file() for p in _paths(root, split, city, name, params.color))
    ]
    n_workers = default_workers() if workers is None else max(1, workers)
    with Progress(len(todo), "synth", enabled=progress) as bar:
        for _ in parallel_map(_write_one, todo, workers=n_workers, progress=bar):
            pass
    atomic_write_json(root / PARAMS_FILE, {**_record(params), "complete": True})
    return len(todo)
