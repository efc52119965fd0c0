"""Preprocessing: a raw dataset → packed uint8 arrays that training loads by memory map.

``prepare(root=..., out=data/packed/{dataset}, size=(512, 1024), source="cityscapes")`` opens the raw dataset
with the reader registered as ``source`` (:mod:`segmodels.data.sources`: Cityscapes, the generated data, Pascal
VOC, ADE20K, a folder of one's own), decodes every pair of the train and val splits into class indices of the
source's label set (255 where not scored), resizes (antialiased bilinear for images, nearest for labels) and
writes ``{split}/images.npy`` (N, H, W, 3), ``{split}/labels.npy`` (N, H, W) and ``manifest.json`` (source, the
label set, sizes, counts, per-class pixel counts, CRC-32 of every input file, image ids).

Instance ids (for the instance-level scores): when the source has them (``instance_encoding``, Cityscapes'
``*_gtFine_instanceIds.png``) for every sample of the ``val`` split, that split also gets ``val/instances.npy``
(uint16 N×H×W, resized by nearest neighbour exactly as the labels) and ``manifest["splits"]["val"]["instances"]``
names their encoding (``"cityscapes"``: label id × 1000 + k on objects, the label id elsewhere); a split without
them has neither. The train split never carries them (unused in training, 3 GB at full Cityscapes). When some val
samples lack the file, the split is packed without them and a note names the first one missing.

Everything is written into a temporary folder beside ``out`` and renamed into place at the end, so a crash
leaves either the previous complete dataset or nothing. The manifest records a fingerprint of the inputs (size
and mtime of files, or the archive's own CRCs) and the packing parameters; a second run on unchanged inputs
does nothing.

Only a folder that a pack made is ever replaced: ``out`` must be absent, empty, or hold nothing but a pack's files
(a pack's ``manifest.json``, ``{split}/images.npy``, ``{split}/labels.npy``, ``{split}/instances.npy``), and lie
apart from ``root``
(:mod:`segmodels.folders`); anything else is refused before any work, with what is in the way named. A full disk
raises :class:`~segmodels.atomic.DiskFullError` naming ``out`` and the space left.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmodels.atomic import disk_full_error, fsync_dir
from segmodels.data._io import Progress, atomic_write_json, default_workers, parallel_map
from segmodels.data.sources import Sample, Source, open_source, source_names
from segmodels.folders import Layout, check_apart, check_replaceable

__all__ = [
    "FORMAT",
    "INSTANCE_SPLITS",
    "MANIFEST",
    "SPLIT_FILES",
    "SPLITS",
    "PrepareResult",
    "check_num_classes",
    "data_identity",
    "prepare",
    "read_manifest",
]

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SPLIT_FILES = ("images.npy", "labels.npy", "instances.npy")  # what a split folder of a pack holds
INSTANCE_SPLITS = ("val",)  # the splits that carry instance ids when the source has them for every sample
_DTYPES = {"images.npy": np.uint8, "labels.npy": np.uint8, "instances.npy": np.uint16}


@dataclass
class PrepareResult:
    path: Path  # the packed dataset folder
    manifest: dict
    skipped: bool  # True when the existing output was already up to date
    notes: list[str] = field(default_factory=list)  # what the source left out, e.g. archive members it skipped


def read_manifest(path: str | Path) -> dict:
    """The manifest of a packed dataset folder (or of the folder above a split)."""
    path = Path(path)
    for candidate in (path / MANIFEST, path.parent / MANIFEST):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no {MANIFEST} in {path} or its parent: run `segmodels prepare` first")


def check_num_classes(path: str | Path, num_classes: int) -> None:
    """Raise ValueError, before any model is built, when the packed data at ``path`` (a dataset or split folder)
    lists another number of classes than ``model.num_classes``. Arrays without a manifest are not checked."""
    try:
        classes = read_manifest(path).get("classes")
    except FileNotFoundError:
        return
    if classes is not None and len(classes) != num_classes:
        shown = ", ".join(map(str, classes[:4])) + (", …" if len(classes) > 4 else "")
        raise ValueError(f"'model.num_classes' is {num_classes}, but the packed data in {path} has {len(classes)} "
                         f"classes ({shown}); set model.num_classes: {len(classes)} or pack the data again")


def data_identity(path: str | Path) -> str | None:
    """A digest of what the packed data at ``path`` holds (size, classes, every image's name and checksums), or
    None without a manifest. Packing the same files again gives the same digest; other files, another size or
    another label set give another, so a run can tell that "the same dataset name" now means other data."""
    try:
        manifest = read_manifest(path)
    except FileNotFoundError:
        return None
    content = {key: manifest.get(key) for key in ("format", "size", "classes", "ignore_index")}
    content["splits"] = {
        split: {key: info.get(key) for key in ("count", "names", "inputs")}
        for split, info in sorted(manifest.get("splits", {}).items())
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _digest(samples: list[Sample], stamps: list[str]) -> str:
    h = hashlib.sha256()
    for s, stamp in zip(samples, stamps, strict=True):
        h.update(f"{s.image}\0{s.label}\0{stamp}\n".encode())
    return h.hexdigest()


def _up_to_date(out: Path, want: dict) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if any(manifest.get(k) != want[k] for k in ("format", "size")):
        return None
    if any(manifest.get(k) != v for k, v in want["label_set"].items()):  # e.g. an edited classes.yaml
        return None
    if set(manifest.get("splits", {})) != set(want["splits"]):
        return None
    h, w = want["size"]
    for split, info in want["splits"].items():
        have = manifest["splits"][split]
        if have.get("inputs_digest") != info["inputs_digest"] or have.get("instances") != info.get("instances"):
            return None
        shapes = {"images.npy": (info["count"], h, w, 3), "labels.npy": (info["count"], h, w)}
        if info.get("instances"):
            shapes["instances.npy"] = (info["count"], h, w)
        for name, shape in shapes.items():
            try:
                array = np.load(out / split / name, mmap_mode="r")
            except (FileNotFoundError, ValueError):
                return None
            if array.shape != shape or array.dtype != _DTYPES[name]:
                return None
    return manifest


def _instance_splits(src: Source, samples: dict[str, list[Sample]], notes: list[str]) -> dict[str, str]:
    """split → the source's instance encoding, for the splits of :data:`INSTANCE_SPLITS` whose every sample has
    instance ids; a note in ``notes`` for a split that lacks some."""
    encoding = getattr(src, "instance_encoding", None)  # sources registered before instance ids have none
    if not encoding:
        return {}
    found = {}
    for split in (s for s in INSTANCE_SPLITS if s in samples):
        missing = src.missing_instances(samples[split])
        if missing:
            more = f" ({len(missing)} of {len(samples[split])} missing)" if len(missing) > 1 else ""
            notes.append(f"{missing[0]}: no such file{more}; split '{split}' is packed without instance ids, so its "
                         "instance-level scores (iIoU) will be blank")  # fmt: skip
        else:
            found[split] = encoding
    return found


# --- worker side -------------------------------------------------------------------------------------------
_STATE: dict = {}


def _init_worker(source: Source, tmp: Path, size: tuple[int, int], offsets: dict) -> None:
    _STATE.update(source=source.fresh(), tmp=tmp, size=size, offsets=offsets)


def _pack_one(task: tuple[str, int, Sample]) -> tuple[str, int, int, int, list[int]]:
    """Decode, map and resize one pair, write it at its row of the split's arrays; returns its statistics."""
    from PIL import Image

    split, index, sample = task
    source: Source = _STATE["source"]
    h, w = _STATE["size"]
    image, train_ids, crc_img, crc_lab = source.read(sample)  # class indices of the source's label set
    arrays = {"images.npy": image, "labels.npy": train_ids}
    if "instances.npy" in _STATE["offsets"][split]:
        arrays["instances.npy"] = _instances(source, sample, train_ids.shape)
    if image.shape[:2] != (h, w):
        arrays["images.npy"] = np.asarray(
            Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
        )
        for name in ("labels.npy", "instances.npy"):  # ids: nearest neighbour, the same pixels for both
            if name in arrays:
                arrays[name] = np.asarray(Image.fromarray(arrays[name]).resize((w, h), Image.Resampling.NEAREST))
    train_ids = arrays["labels.npy"]
    for name, array in arrays.items():
        start, row = _STATE["offsets"][split][name]
        with open(_STATE["tmp"] / split / name, "r+b") as fh:  # plain writes: no mapping shared across processes
            fh.seek(start + index * row)
            fh.write(np.ascontiguousarray(array, dtype=_DTYPES[name]).tobytes())
    hist = np.bincount(train_ids.ravel(), minlength=256)
    label_set = source.label_set
    counts = [*hist[: label_set.num_classes].tolist(), int(hist[label_set.ignore_index])]
    return split, index, crc_img, crc_lab, counts


def _instances(source: Source, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The sample's instance ids at full resolution (int32), checked to match its labels and to fit 16 bits."""
    ids = source.read_instances(sample)
    where = f"the instance ids of '{sample.name}' ({sample.label})"
    if ids is None:
        raise ValueError(f"{where}: the source has none, yet it listed the sample as having them")
    ids = np.asarray(ids)
    if ids.shape != shape:
        raise ValueError(f"{where}: {ids.shape} but the labels are {shape} (height×width)")
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max):
        bad = ids.max() if ids.max() > np.iinfo(np.uint16).max else ids.min()
        raise ValueError(f"{where}: id {bad} does not fit 16 bits (instances.npy holds uint16, 0-65535)")
    return ids.astype(np.int32)


# --- driver -----------------------------------------------------------------------------------------------
def _create_arrays(folder: Path, n: int, size: tuple[int, int], instances: bool) -> dict[str, tuple[int, int]]:
    """Allocate the .npy files; returns name → (data offset, bytes per row) for the workers."""
    folder.mkdir(parents=True)
    offsets = {}
    shapes = {"images.npy": (n, *size, 3), "labels.npy": (n, *size)}
    if instances:
        shapes["instances.npy"] = (n, *size)
    for name, shape in shapes.items():
        array = np.lib.format.open_memmap(folder / name, mode="w+", dtype=_DTYPES[name], shape=shape)
        offsets[name] = (int(array.offset), int(np.prod(shape[1:])) * array.itemsize)
        del array
    return offsets


def _remove_stale_temps(out: Path) -> None:
    """Remove what a killed run left beside ``out`` (its pid is in the name), never a running one's folder."""
    for tmp in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        try:
            pid = int(tmp.name.split("-")[-2])
            os.kill(pid, 0)  # still running: leave its folder alone
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _pack_manifest(out: Path) -> dict | None:
    """``out/manifest.json`` when it is a packed dataset's (format, source, size and splits), else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        return None
    splits = manifest.get("splits")
    if not isinstance(manifest.get("source"), str) or not isinstance(manifest.get("size"), list):
        return None
    if not isinstance(splits, dict) or not all(isinstance(v, dict) and "count" in v for v in splits.values()):
        return None
    return manifest


def _check_out(out: Path, *, root: Path | None = None, splits: tuple[str, ...] = SPLITS) -> None:
    """ValueError, before any work, unless ``out`` may be replaced by a pack: absent, empty, or holding only a
    pack's files (a ``manifest.json`` of a pack, or none: Snakemake removes it before a job runs again), and
    neither ``root`` nor inside or around it."""
    if root is not None:
        check_apart(out, {"raw dataset (--root)": root})
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; give the folder it points to, {out.resolve()}")
    manifest = _pack_manifest(out)
    absent = not (out / MANIFEST).exists()
    known = {*SPLITS, *splits, *(manifest or {}).get("splits", {})}
    layout: Layout = {MANIFEST: None, **{split: SPLIT_FILES for split in known}}
    why = "" if manifest is not None or absent else f"its {MANIFEST} is not a packed dataset's"
    check_replaceable(out, layout, ours=manifest is not None or absent, what="a packed dataset", why=why)


def _install(tmp: Path, out: Path, splits: tuple[str, ...]) -> None:
    """Move the finished folder into place; an old ``out`` (checked again: files may have appeared while packing)
    is moved aside first and removed after."""
    _check_out(out, splits=splits)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(path if path.is_dir() else path.parent)


def prepare(
    *,
    root: str | Path,
    out: str | Path,
    size: tuple[int, int] = (512, 1024),
    source: str = "cityscapes",
    splits: tuple[str, ...] = SPLITS,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Pack the raw dataset at ``root`` into ``out``; see the module docstring."""
    root, out = Path(root), Path(out)
    if source not in source_names():
        raise ValueError(f"source must be one of {', '.join(source_names())}, got {source!r}")
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be [height, width] of positive integers, got {list(size)}")
    _check_out(out, root=root, splits=tuple(splits))
    src = open_source(source, root)
    samples = {split: src.samples(split) for split in splits}
    want = {
        "format": FORMAT,
        "size": list(size),
        "label_set": src.label_set.to_manifest(),
        "splits": {
            s: {"count": len(items), "inputs_digest": _digest(items, src.stamps(items))} for s, items in samples.items()
        },
    }
    notes = list(getattr(src, "skipped", lambda: [])())  # optional: what the source left out, and why
    for split, encoding in _instance_splits(src, samples, notes).items():
        want["splits"][split]["instances"] = encoding  # recorded in the manifest as it is
    if not force and (manifest := _up_to_date(out, want)) is not None:
        return PrepareResult(out, manifest, skipped=True, notes=notes)
    source_sizes: dict[str, dict[str, int]] = {}
    for split, items in samples.items():  # cheap checks of every file before any decoding
        sizes = source_sizes.setdefault(split, {})
        for sample in items:
            hw = "×".join(map(str, src.check_headers(sample)))
            sizes[hw] = sizes.get(hw, 0) + 1

    try:
        manifest = _pack(src, source, out, size, samples=samples, want=want, workers=workers, progress=progress,
                         source_sizes=source_sizes)  # fmt: skip
    except Exception as exc:  # a full disk: name the output and the space left, not a temporary file
        if (full := disk_full_error(exc, out)) is None:
            raise
        raise full from exc
    return PrepareResult(out, manifest, skipped=False, notes=notes)


def _pack(src: Source, source: str, out: Path, size: tuple[int, int], *, samples: dict[str, list[Sample]],
          want: dict, workers: int | None, progress: bool, source_sizes: dict) -> dict:  # fmt: skip
    """Decode every pair into a temporary folder beside ``out`` and install it as ``out``; the manifest."""
    num_classes = src.label_set.num_classes
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        offsets = {split: _create_arrays(tmp / split, len(items), size, "instances" in want["splits"][split])
                   for split, items in samples.items()}  # fmt: skip
        tasks = [(split, i, sample) for split, items in samples.items() for i, sample in enumerate(items)]
        crcs: dict[str, list] = {s: [None] * len(items) for s, items in samples.items()}
        counts = {s: np.zeros(num_classes + 1, np.int64) for s in samples}
        n_workers = default_workers() if workers is None else max(1, workers)
        with Progress(len(tasks), f"prepare {out.name}", enabled=progress) as bar:
            for _, (split, i, crc_img, crc_lab, hist) in parallel_map(
                _pack_one,
                tasks,
                workers=n_workers,
                progress=bar,
                initializer=_init_worker,
                initargs=(src, tmp, size, offsets),
            ):
                crcs[split][i] = (f"{crc_img:08x}", f"{crc_lab:08x}")
                counts[split] += hist
        manifest = _manifest(src, source, out.name, size, samples=samples, want=want, crcs=crcs, counts=counts,
                             source_sizes=source_sizes)  # fmt: skip
        atomic_write_json(tmp / MANIFEST, manifest)
        _fsync_tree(tmp)
        _install(tmp, out, tuple(samples))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _manifest(src, source, dataset, size, *, samples, want, crcs, counts, source_sizes) -> dict:
    from segmodels import __version__

    synth = None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        synth = json.loads((src.root / "synth.json").read_text())
    n = src.label_set.num_classes
    splits = {}
    for split, items in samples.items():
        total = int(counts[split].sum())
        class_pixels = counts[split][:n].tolist()
        splits[split] = {
            **want["splits"][split],
            "source_sizes": source_sizes[split],  # "height×width": images of that size before resizing
            "class_pixels": class_pixels,  # after resizing, per train id
            "ignore_pixels": int(counts[split][n]),
            "class_frequency": [round(c / max(total, 1), 6) for c in class_pixels],  # of all pixels
            "names": [s.name for s in items],
            "inputs": [
                {"image": s.image, "image_crc32": c[0], "label": s.label, "label_crc32": c[1]}
                for s, c in zip(items, crcs[split], strict=True)
            ],
        }
    return {
        "format": FORMAT,
        "dataset": dataset,
        "source": source,
        "root": str(src.root.resolve()),
        "layout": src.layout,
        "size": list(size),
        **src.label_set.to_manifest(),  # label_set, classes, palette, ignore_index
        "synthetic": synth,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "segmodels_version": __version__,
        "splits": splits,
    }
