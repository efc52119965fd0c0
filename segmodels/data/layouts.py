"""The generated street scenes written in the layouts of other datasets: Pascal VOC, ADE20K and a folder dataset.

``generate_layout(out, "voc", SynthParams(...))`` renders the same scenes as :mod:`segmodels.data.synthetic`
(image ``i`` of a split depends only on (seed, split, i, size)) and writes them so that ``prepare --source voc``
(``ade20k``, ``folder``) reads them exactly as it reads the real datasets; ``synth.json`` records the layout, so
``prepare --source synthetic`` finds the right reader too. How the 19 Cityscapes classes of a scene become the
dataset's classes:

- ``voc``: person and rider → person, car and truck → car, bus, train, motorcycle → motorbike, bicycle; the rest
  is background, and a band around every object is 255, as VOC marks object outlines (JPEG images, palette PNGs).
- ``ade20k``: each scene class has a home class (road → road, vegetation → tree, …) and a group of others that
  partition the 150; per image and scene class a seeded draw keeps the home class or takes another of the group,
  so a few dozen images cover most of the 150 classes (a 150-row report), while half of every image stays
  learnable. Cityscapes' void → 0 ("other").
- ``folder``: seven classes with colours in ``classes.yaml``, masks of class indices (``masks="index"``) or of the
  class colours (``masks="rgb"``), void → 255 / white; split folders ``images/{train,val}``.

Each file is written atomically; a second run with the same parameters does nothing, and a run that only adds
images keeps the others.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmodels.data.sources.synthetic import PARAMS_FILE

if TYPE_CHECKING:
    from segmodels.data.synthetic import SynthParams

__all__ = ["FOLDER_CLASSES", "LAYOUTS", "MASK_KINDS", "generate_layout", "image_names", "render_layout"]

LAYOUTS = ("cityscapes", "voc", "ade20k", "folder")
MASK_KINDS = ("index", "rgb")  # of the folder layout
GENERATOR = "segmodels.data.layouts"
VERSION = 1  # bump when the mapping or the files change
_SPLIT_CODE = {"train": 1, "val": 2}
_ADE_FOLDER = {"train": "training", "val": "validation"}

# Cityscapes train ids: 0 road, 1 sidewalk, 2 building, 3 wall, 4 fence, 5 pole, 6 traffic light, 7 traffic sign,
# 8 vegetation, 9 terrain, 10 sky, 11 person, 12 rider, 13 car, 14 truck, 15 bus, 16 train, 17 motorcycle, 18 bicycle
_VOC = {11: 15, 12: 15, 13: 7, 14: 7, 15: 6, 16: 19, 17: 14, 18: 2}  # train id → VOC class; others background
# The ADE20K class closest to each train id (no rider or train there: apparel and van stand in)
_ADE_HOME_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "signboard", "tree",
                   "grass", "sky", "person", "apparel", "car", "truck", "bus", "van", "minibike", "bicycle")  # fmt: skip
FOLDER_CLASSES = (("ground", (128, 64, 128)), ("building", (70, 70, 70)), ("vegetation", (107, 142, 35)),
                  ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("vehicle", (0, 0, 142)),
                  ("street furniture", (220, 220, 0)))  # fmt: skip
_FOLDER = (0, 0, 1, 1, 1, 6, 6, 6, 2, 0, 3, 4, 4, 5, 5, 5, 5, 5, 5)  # train id → folder class
_IGNORE_COLOR = (255, 255, 255)


def _table(pairs: dict[int, int] | tuple[int, ...], fill: int) -> np.ndarray:
    """A 256-entry lookup table from Cityscapes train ids (255 void → ``fill``)."""
    out = np.full(256, fill, np.uint8)
    for train_id, value in (pairs.items() if isinstance(pairs, dict) else enumerate(pairs)):
        out[train_id] = value
    return out


def _ade_groups() -> list[list[int]]:
    """Per train id: its home ADE20K class first, then its share of the other classes (all 150 covered once)."""
    from segmodels.data.sources.ade20k import CLASSES

    homes = [CLASSES.index(name) + 1 for name in _ADE_HOME_NAMES]  # as stored: 0 is "other"
    rest = [c for c in range(1, len(CLASSES) + 1) if c not in homes]
    return [[home, *rest[t :: len(homes)]] for t, home in enumerate(homes)]


def image_names(layout: str, split: str, count: int) -> list[str]:
    """The ids of a split's first ``count`` images, in the naming of the layout."""
    if layout == "voc":
        return [f"2012_{_SPLIT_CODE[split]}{i:05d}" for i in range(count)]
    if layout == "ade20k":
        return [f"ADE_{'train' if split == 'train' else 'val'}_{i + 1:08d}" for i in range(count)]
    return [f"scene_{i:05d}" for i in range(count)]


def _paths(layout: str, split: str, name: str) -> tuple[str, str]:
    """(image, mask) paths relative to the root."""
    if layout == "voc":
        return f"JPEGImages/{name}.jpg", f"SegmentationClass/{name}.png"
    if layout == "ade20k":
        return f"images/{_ADE_FOLDER[split]}/{name}.jpg", f"annotations/{_ADE_FOLDER[split]}/{name}.png"
    return f"images/{split}/{name}.jpg", f"masks/{split}/{name}.png"


def _outline(mask: np.ndarray, objects: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a change of class next to an object pixel."""
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= (mask[:-1] != mask[1:]) & (objects[:-1] | objects[1:])
    edge[:, :-1] |= (mask[:, :-1] != mask[:, 1:]) & (objects[:, :-1] | objects[:, 1:])
    band = edge.copy()
    for _ in range(width):
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def render_layout(layout: str, params: SynthParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` → (RGB, mask as the layout stores it); deterministic in (seed, split, index,
    size). The mask holds VOC class indices and 255, ADE20K values 0-150, or the folder's class indices and 255."""
    from segmodels.data.labels import ID_TO_TRAINID
    from segmodels.data.synthetic import render

    image, ids = render(params, split, index)
    train = ID_TO_TRAINID[ids]
    if layout == "voc":
        mask = _table(_VOC, 0)[train]
        mask[_outline(mask, mask > 0, max(1, min(mask.shape) // 96))] = 255
    elif layout == "ade20k":
        rng = np.random.default_rng([params.seed, _SPLIT_CODE[split], index, VERSION, 150])
        groups = _ade_groups()
        picks = [g[0] if rng.random() < 0.5 else g[1 + int(rng.integers(len(g) - 1))] for g in groups]
        mask = _table(tuple(picks), 0)[train]
    elif layout == "folder":
        mask = _table(_FOLDER, 255)[train]
    else:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS[1:])} here, got {layout!r}")
    return image, mask


def _encode(layout: str, params: SynthParams, masks: str, split: str, index: int) -> tuple[bytes, bytes]:
    from PIL import Image

    from segmodels.data._io import encode_png
    from segmodels.data.labelset import default_palette

    image, mask = render_layout(layout, params, split, index)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    if layout == "voc":
        img = Image.fromarray(mask, mode="L")
        img.putpalette(default_palette(256).ravel().tolist())  # mode P: the value is the class index
    elif layout == "folder" and masks == "rgb":
        table = np.array([c for _, c in FOLDER_CLASSES] + [_IGNORE_COLOR] * (256 - len(FOLDER_CLASSES)), np.uint8)
        img = Image.fromarray(table[mask])
    else:
        img = Image.fromarray(mask, mode="L")
    return buf.getvalue(), encode_png(img, 3)


def _write_one(task: tuple[Path, str, SynthParams, str, str, int, str]) -> None:
    from segmodels.atomic import write_bytes_atomic

    root, layout, params, masks, split, index, name = task
    image, mask = _encode(layout, params, masks, split, index)
    image_path, mask_path = _paths(layout, split, name)
    write_bytes_atomic(root / image_path, image)
    write_bytes_atomic(root / mask_path, mask)


def _folders(layout: str) -> list[str]:
    """The folders this generator owns under the root (removed when the content parameters change)."""
    if layout == "voc":
        return ["JPEGImages", "SegmentationClass"]
    if layout == "ade20k":
        return [f"{top}/{f}" for top in ("images", "annotations") for f in _ADE_FOLDER.values()]
    return [f"{top}/{s}" for top in ("images", "masks") for s in _SPLIT_CODE]


def _extras(root: Path, layout: str, names: dict[str, list[str]]) -> None:
    """The files besides the pairs: VOC's split lists, the folder dataset's classes.yaml."""
    from segmodels.atomic import write_text_atomic

    if layout == "voc":
        for split, items in names.items():
            write_text_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in items))
    elif layout == "folder":
        lines = ["# Generated by segmodels synth --layout folder: class names and mask colours", "classes:"]
        lines += [f"  - {{name: {name}, color: [{r}, {g}, {b}]}}" for name, (r, g, b) in FOLDER_CLASSES]
        lines += ["ignore_index: 255", f"ignore_color: [{', '.join(map(str, _IGNORE_COLOR))}]", ""]
        write_text_atomic(root / "classes.yaml", "\n".join(lines))


def _check_foreign(root: Path, record: dict | None, layout: str) -> None:
    """Refuse to write into a folder that holds anything but this generator's output of the same layout (a lone
    ``synth.json`` of another run aside): a dataset of the same layout that a person put there is not ours."""
    from segmodels.folders import check_replaceable

    ours = isinstance(record, dict) and record.get("generator") == GENERATOR and record.get("layout") == layout
    lone_record = root.is_dir() and [p.name for p in root.iterdir()] == [PARAMS_FILE]
    check_replaceable(root, None, ours=ours or lone_record, what=f"images generated in the {layout} layout",
                      verb="write generated images into")  # fmt: skip


def generate_layout(out: str | Path, layout: str, params: SynthParams | None = None, *, masks: str = "index",
                    workers: int | None = None, progress: bool = True) -> int:  # fmt: skip
    """Write the scenes under ``out`` in ``layout``; returns the number of images written (0 when up to date)."""
    from segmodels.data._io import Progress, atomic_write_json, default_workers, parallel_map
    from segmodels.data.synthetic import SynthParams, generate

    root, params = Path(out), params or SynthParams()
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if masks not in MASK_KINDS:
        raise ValueError(f"masks must be one of {', '.join(MASK_KINDS)}, got {masks!r}")
    if layout == "cityscapes":
        return generate(root, params, workers=workers, progress=progress)
    want = {**params.record(), "generator": GENERATOR, "version": VERSION, "layout": layout,
            "masks": masks if layout == "folder" else None}  # fmt: skip
    want.pop("color")  # the Cityscapes colour previews: not written here
    try:
        record = json.loads((root / PARAMS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = None
    names = {split: image_names(layout, split, getattr(params, split)) for split in _SPLIT_CODE}
    wanted = [(split, i, name) for split, items in names.items() for i, name in enumerate(items)]
    expected = {root / p for split, _, name in wanted for p in _paths(layout, split, name)}
    if record == {**want, "complete": True} and all(p.is_file() for p in expected):
        return 0
    _check_foreign(root, record, layout)
    same_content = isinstance(record, dict) and all(record.get(k) == v for k, v in want.items()
                                                    if k not in ("train", "val"))  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / PARAMS_FILE, {**want, "complete": False})  # never mistaken for a complete run
    for folder in _folders(layout):
        if not same_content:
            shutil.rmtree(root / folder, ignore_errors=True)
        for path in (root / folder).iterdir() if (root / folder).is_dir() else ():
            if path.is_file() and path not in expected:  # images beyond the count, temporary files of a crash
                path.unlink()
    todo = [(root, layout, params, masks, split, i, name) for split, i, name in wanted
            if not all((root / p).is_file() for p in _paths(layout, split, name))]  # fmt: skip
    n_workers = default_workers() if workers is None else max(1, workers)
    with Progress(len(todo), f"synth {layout}", enabled=progress) as bar:
        for _ in parallel_map(_write_one, todo, workers=n_workers, progress=bar):
            pass
    _extras(root, layout, names)
    atomic_write_json(root / PARAMS_FILE, {**want, "complete": True})
    return len(todo)
