"""The raw Cityscapes layout: find the data, pair images with labels, check and decode them.

The data is either the extracted tree (``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
``gtFine/{split}/{city}/*_gtFine_labelIds.png``) or the two official archives ``leftImg8bit_trainvaltest.zip``
and ``gtFine_trainvaltest.zip``, read in place member by member. Each half is found independently, so an
extracted image tree next to the label zip works too. The generated dataset (``segmodels synth``) is written in
the same layout and goes through the same code.

Archive members whose path is absolute or steps through ``..`` or ``.`` lie outside the official layout: they are
never read, and :meth:`CityscapesSource.skipped` says how many there were and which (``prepare`` prints it).
Every problem with the input is reported with the file at fault, and the cheap checks (pairing, PNG headers,
sizes) run over the whole split before any decoding starts. Masks are mapped from the 34 label ids to the 19
train ids of :func:`~segmodels.data.labelset.cityscapes_label_set` (others → 255).

Instance ids come from ``*_gtFine_instanceIds.png`` beside each labelIds file (in the same folder or archive):
16-bit PNGs holding label id × 1000 + k on each object of a class with instances and the plain label id
elsewhere (:attr:`CityscapesSource.instance_encoding` "cityscapes"). They are optional: a split packs them only
when :meth:`CityscapesSource.missing_instances` finds every one of its samples' files.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from segmodels.data.labels import MAX_LABEL_ID
from segmodels.data.labelset import LabelSet, cityscapes_label_set
from segmodels.data.sources import Sample
from segmodels.folders import listed

__all__ = [
    "IMAGE_SUFFIX",
    "IMAGE_ZIP",
    "INSTANCE_OFFSET",
    "INSTANCE_SUFFIX",
    "LABEL_SUFFIX",
    "LABEL_ZIP",
    "CityscapesSource",
    "DirStore",
    "Sample",
    "ZipStore",
    "find_root",
    "instance_name",
    "missing_dataset_message",
    "open_cityscapes",
    "outside_layout",
]

IMAGE_ZIP = "leftImg8bit_trainvaltest.zip"
LABEL_ZIP = "gtFine_trainvaltest.zip"
IMAGE_DIR, LABEL_DIR = "leftImg8bit", "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
INSTANCE_OFFSET = 1000  # instance id = label id × 1000 + k
DOWNLOAD_URL = "https://www.cityscapes-dataset.com/downloads/"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD = 33  # signature + IHDR chunk


def find_root(root: str | os.PathLike | None, *, dataset: str = "cityscapes") -> Path:
    """The Cityscapes folder: ``root`` if given, else ``$CITYSCAPES_DATASET`` (as cityscapesScripts), else data/raw."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("CITYSCAPES_DATASET")
    if env:
        return Path(env).expanduser()
    return Path("data") / "raw" / dataset


def missing_dataset_message(root: Path, missing: str = "") -> str:
    what = f" ({missing} missing)" if missing else ""
    return (
        f"Cityscapes not found in {root}{what}: it needs the extracted folders {IMAGE_DIR}/ and {LABEL_DIR}/, or the "
        f"archives {IMAGE_ZIP} and {LABEL_ZIP} as downloaded (read in place, no extraction needed). "
        f"Both archives come from {DOWNLOAD_URL} (free account, login required). Put them in {root}, or point "
        f"--root, data.root in the config, or $CITYSCAPES_DATASET at the folder that holds them. "
        f"Without them, run the demo study on generated data instead: `make run` "
        f"(it runs `segmodels synth` and `segmodels prepare --config config/demo.yaml`)."
    )


class DirStore:
    """Files under a folder, addressed by their path relative to it (``leftImg8bit/train/...``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self, top: str, split: str, suffix: str) -> list[str]:
        base = self.root / top / split
        return sorted(p.relative_to(self.root).as_posix() for p in base.glob(f"*/*{suffix}") if p.is_file())

    def read(self, name: str, size: int = -1) -> bytes:
        with open(self.root / name, "rb") as fh:
            return fh.read(size)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def stamp(self, name: str) -> str:
        st = (self.root / name).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def describe(self, name: str) -> str:
        return str(self.root / name)


def outside_layout(name: str) -> bool:
    """Whether an archive member's path leaves the archive's tree or hides where it goes: absolute (``/x``,
    ``C:x``), or holding a ``..``, ``.`` or empty part (a folder member's trailing ``/`` aside)."""
    parts = name.replace("\\", "/").removesuffix("/").split("/")
    drive = len(parts[0]) >= 2 and parts[0][1] == ":"
    return drive or any(part in ("", ".", "..") for part in parts)


class ZipStore:
    """Members of a zip archive; the handle is opened lazily, once per process (it cannot be pickled). Members
    outside the official layout (:func:`outside_layout`) are never listed, so never read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._names: list[str] | None = None
        self._name_set: frozenset[str] | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_zip": None, "_names": None, "_name_set": None}

    @property
    def zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise ValueError(f"{self.path}: not a readable zip archive ({exc})") from None
        return self._zip

    def names(self) -> list[str]:
        """The members inside the archive's own tree."""
        if self._names is None:
            self._names = [n for n in self.zip.namelist() if not outside_layout(n)]
        return self._names

    def outside(self) -> list[str]:
        """The members left out: absolute paths, or paths through ``..``, ``.`` or an empty part."""
        return [n for n in self.zip.namelist() if outside_layout(n)]

    def list(self, top: str, split: str, suffix: str) -> list[str]:
        prefix = f"{top}/{split}/"
        return sorted(n for n in self.names() if n.startswith(prefix) and n.endswith(suffix) and n.count("/") == 3)

    def read(self, name: str, size: int = -1) -> bytes:
        if outside_layout(name):
            raise ValueError(f"{self.describe(name)}: outside the archive's layout ('..', '.' or an absolute path)")
        try:
            fh = self.zip.open(name)
        except KeyError:
            raise FileNotFoundError(f"{self.describe(name)}: no such member in the archive") from None
        with fh:
            return fh.read(size)

    def exists(self, name: str) -> bool:
        if self._name_set is None:
            self._name_set = frozenset(self.names())
        return name in self._name_set

    def stamp(self, name: str) -> str:
        info = self.zip.getinfo(name)
        return f"{info.file_size}:{info.CRC:08x}"  # the archive's own checksum: no decompression needed

    def describe(self, name: str) -> str:
        return f"{self.path}:{name}"


Store = DirStore | ZipStore


def _png_size(head: bytes, where: str) -> tuple[int, int, int, int]:
    """(height, width, bit depth, colour type) from a PNG's first bytes; ValueError naming ``where`` otherwise."""
    if len(head) < _PNG_HEAD - 4 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{where}: not a PNG file")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return height, width, depth, colour


class CityscapesSource:
    """One Cityscapes root: lists, checks and decodes the (image, labelIds) pairs of a split, and their instance
    ids where ``*_gtFine_instanceIds.png`` lies beside the labels."""

    label_set: LabelSet = cityscapes_label_set()
    instance_encoding = "cityscapes"  # what read_instances() returns: label id × 1000 + k, or the plain label id

    def __init__(self, root: Path, images: Store, labels: Store) -> None:
        self.root, self.images, self.labels = Path(root), images, labels

    @classmethod
    def open(cls, root: str | os.PathLike) -> CityscapesSource:
        root = Path(root)
        images = cls._store(root, IMAGE_DIR, IMAGE_ZIP)
        labels = cls._store(root, LABEL_DIR, LABEL_ZIP)
        if images is None or labels is None:
            missing = " and ".join(
                f"{d}/ or {z}"
                for s, d, z in ((images, IMAGE_DIR, IMAGE_ZIP), (labels, LABEL_DIR, LABEL_ZIP))
                if s is None
            )
            raise FileNotFoundError(missing_dataset_message(root, missing if images or labels else ""))
        return cls(root, images, labels)

    @staticmethod
    def _store(root: Path, folder: str, archive: str) -> Store | None:
        if (root / folder).is_dir():
            return DirStore(root)
        if (root / archive).is_file():
            return ZipStore(root / archive)
        return None

    def fresh(self) -> CityscapesSource:
        """A copy with no open archive handles: a forked worker must not share the parent's file offset."""

        def copy(store: Store) -> Store:
            return DirStore(store.root) if isinstance(store, DirStore) else ZipStore(store.path)

        return CityscapesSource(self.root, copy(self.images), copy(self.labels))

    @property
    def layout(self) -> str:
        kinds = {type(self.images).__name__, type(self.labels).__name__}
        return "tree" if kinds == {"DirStore"} else "zip" if kinds == {"ZipStore"} else "mixed"

    def skipped(self) -> list[str]:
        """One line per archive that holds members outside the official layout: how many, and the first names."""
        lines = []
        for store in (self.images, self.labels):
            outside = store.outside() if isinstance(store, ZipStore) else []
            if outside:
                lines.append(f"skipped {len(outside)} member(s) of {store.path} outside the official layout "
                             f"(absolute, or through '..' or '.'): {listed(outside)}")  # fmt: skip
        return lines

    def samples(self, split: str) -> list[Sample]:
        """The split's pairs sorted by image id; an unpaired file or an empty split raises ValueError."""
        images = {Path(n).name[: -len(IMAGE_SUFFIX)]: n for n in self.images.list(IMAGE_DIR, split, IMAGE_SUFFIX)}
        labels = {Path(n).name[: -len(LABEL_SUFFIX)]: n for n in self.labels.list(LABEL_DIR, split, LABEL_SUFFIX)}
        if not images:
            raise ValueError(
                f"empty split '{split}': no {IMAGE_DIR}/{split}/<city>/*{IMAGE_SUFFIX} in "
                f"{self.images.describe(f'{IMAGE_DIR}/{split}')}"
            )
        for own, other, store, kind, want in (
            (images, labels, self.images, "image", LABEL_SUFFIX),
            (labels, images, self.labels, "label", IMAGE_SUFFIX),
        ):
            lonely = sorted(set(own) - set(other))
            if lonely:
                more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
                raise ValueError(
                    f"{store.describe(own[lonely[0]])}: {kind} without its counterpart {lonely[0]}{want}{more}"
                )
        return [Sample(name, images[name], labels[name]) for name in sorted(images)]

    def stamps(self, samples: list[Sample]) -> list[str]:
        """Cheap per-pair fingerprints (size and mtime, or the archive's CRC) to tell whether inputs changed; the
        instance ids' file counts as an input ("-" while absent), so adding it packs the split again."""
        return [f"{self.images.stamp(s.image)}|{self.labels.stamp(s.label)}|{self._instance_stamp(s)}"
                for s in samples]  # fmt: skip

    def _instance_stamp(self, sample: Sample) -> str:
        name = instance_name(sample)
        return self.labels.stamp(name) if self.labels.exists(name) else "-"  # added later: the inputs changed

    def missing_instances(self, samples: list[Sample]) -> list[str]:
        """The ``*_gtFine_instanceIds.png`` files of ``samples`` that are absent (as error messages name them), in
        sample order; [] when every sample has one. Checks presence only: nothing is read."""
        return [self.labels.describe(name) for s in samples if not self.labels.exists(name := instance_name(s))]

    def read_instances(self, sample: Sample) -> np.ndarray:
        """The instance ids of ``*_gtFine_instanceIds.png`` as stored (H×W int32, full resolution): label id × 1000
        + k on objects of classes with instances, the label id elsewhere. FileNotFoundError naming the file when it
        is absent; ValueError naming it for a file of the wrong kind or size, or values that are not such ids."""
        name = instance_name(sample)
        where = self.labels.describe(name)
        if not self.labels.exists(name):
            raise FileNotFoundError(f"{where}: instance ids not found (the {INSTANCE_SUFFIX} beside {sample.label})")
        data = self.labels.read(name)
        h, w, _, _ = _png_size(data[:_PNG_HEAD], where)
        lh, lw, _, _ = _png_size(self.labels.read(sample.label, _PNG_HEAD), self.labels.describe(sample.label))
        if (h, w) != (lh, lw):
            raise ValueError(f"{where}: instance ids are {h}×{w} but the labels {self.labels.describe(sample.label)} "
                             f"are {lh}×{lw} (height×width)")  # fmt: skip
        ids = _decode(data, "I", where)
        label_ids = np.where(ids >= INSTANCE_OFFSET, ids // INSTANCE_OFFSET, ids)
        if ids.min() < 0 or label_ids.max() > MAX_LABEL_ID:
            bad = ids[(ids < 0) | (label_ids > MAX_LABEL_ID)]
            raise ValueError(f"{where}: instance ids {np.unique(bad)[:5].tolist()} are not Cityscapes ids (label id "
                             f"0-{MAX_LABEL_ID}, or label id × {INSTANCE_OFFSET} + k)")  # fmt: skip
        return ids

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        """Check both PNG headers of a pair without decoding; returns the (height, width) they share."""
        where_img, where_lab = self.images.describe(sample.image), self.labels.describe(sample.label)
        ih, iw, idepth, icolour = _png_size(self.images.read(sample.image, _PNG_HEAD), where_img)
        lh, lw, ldepth, lcolour = _png_size(self.labels.read(sample.label, _PNG_HEAD), where_lab)
        if idepth != 8 or icolour not in (2, 6):
            raise ValueError(f"{where_img}: expected an 8-bit RGB PNG (bit depth {idepth}, colour type {icolour})")
        if ldepth != 8 or lcolour != 0:
            raise ValueError(
                f"{where_lab}: expected a single-channel 8-bit PNG of label ids "
                f"(bit depth {ldepth}, colour type {lcolour}; a *_gtFine_color.png in its place?)"
            )
        if (ih, iw) != (lh, lw):
            raise ValueError(f"{where_lab}: label is {lh}×{lw} but its image {where_img} is {ih}×{iw} (height×width)")
        return ih, iw

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Decode a pair → (RGB H×W×3 uint8, train ids H×W uint8, crc32 of the image file, crc32 of the label file)."""
        img_bytes, lab_bytes = self.images.read(sample.image), self.labels.read(sample.label)
        image = _decode(img_bytes, "RGB", self.images.describe(sample.image))
        ids = self._ids(lab_bytes, sample)
        if image.shape[:2] != ids.shape:
            where = self.labels.describe(sample.label)
            raise ValueError(f"{where}: label is {ids.shape} but its image is {image.shape[:2]} (height×width)")
        return image, self.label_set.to_train_ids(ids), zlib.crc32(img_bytes), zlib.crc32(lab_bytes)

    def read_ids(self, sample: Sample) -> np.ndarray:
        """The label ids of ``*_gtFine_labelIds.png`` as stored (0-33), before mapping to train ids."""
        return self._ids(self.labels.read(sample.label), sample)

    def read_label(self, sample: Sample) -> np.ndarray:
        """The label alone as train ids (H×W uint8), for scoring at full resolution."""
        return self.label_set.to_train_ids(self.read_ids(sample))

    def _ids(self, data: bytes, sample: Sample) -> np.ndarray:
        where = self.labels.describe(sample.label)
        label = _decode(data, "L", where)
        bad = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[MAX_LABEL_ID + 1 :]) + MAX_LABEL_ID + 1
        if bad.size:
            raise ValueError(
                f"{where}: label ids {bad[:5].tolist()} are not Cityscapes ids (0-{MAX_LABEL_ID}); "
                f"is this a *_labelTrainIds.png or another dataset's mask?"
            )
        return label


def instance_name(sample: Sample) -> str:
    """Where the sample's instance ids lie in its label store: the labelIds path with ``instanceIds``."""
    return sample.label.removesuffix(LABEL_SUFFIX) + INSTANCE_SUFFIX


def open_cityscapes(root: str | os.PathLike) -> CityscapesSource:
    """The Cityscapes source at ``root`` (the extracted folders, the two official zips, or one of each)."""
    return CityscapesSource.open(root)


def _decode(data: bytes, mode: str, where: str) -> np.ndarray:
    """A PNG → array: ``RGB`` (converted), ``L`` (8-bit single channel) or ``I`` (single channel of 8 or 16 bits,
    as int32)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, im_mode = im.format, im.mode
            array = np.asarray(im.convert(mode) if im_mode != mode and mode == "RGB" else im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error … on damaged files
        raise ValueError(f"{where}: not a decodable PNG ({type(exc).__name__}: {exc})") from None
    if fmt != "PNG":
        raise ValueError(f"{where}: not a PNG file ({fmt})")
    if mode == "L" and im_mode != "L":
        raise ValueError(f"{where}: expected a single-channel 8-bit label image, got mode {im_mode}")
    if mode == "I":
        if im_mode not in ("I;16", "I;16B", "I", "L") or array.ndim != 2:
            raise ValueError(f"{where}: expected a single-channel 16-bit PNG of instance ids, got mode {im_mode}")
        array = array.astype(np.int32)
    return array
