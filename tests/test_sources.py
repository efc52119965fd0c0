"""The dataset seam: the source registry, each reader's label set, and every kind of bad input named by file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segmodels.data import sources
from segmodels.data.labelset import LabelSet
from segmodels.data.layouts import generate_layout
from segmodels.data.pack import prepare
from segmodels.data.sources import Sample, Source, open_source, register_source, source_names
from segmodels.data.synthetic import SynthParams

ROOT = Path(__file__).resolve().parents[1]
TINY = SynthParams(train=2, val=1, size=(48, 64), seed=1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("raw")
    out = {}
    for layout, masks in (("voc", "index"), ("ade20k", "index"), ("folder", "index"), ("folder", "rgb"),
                          ("cityscapes", "index")):  # fmt: skip
        key = layout if masks == "index" else f"{layout}-{masks}"
        generate_layout(base / key, layout, TINY, masks=masks, workers=1, progress=False)
        out[key] = base / key
    return out


@pytest.fixture
def copy(raw, tmp_path):
    def make(key: str) -> Path:
        return Path(shutil.copytree(raw[key], tmp_path / key))

    return make


def _pack(root: Path, source: str, tmp_path: Path, **kw):
    return prepare(root=root, out=tmp_path / "packed", size=(24, 32), source=source, workers=1, progress=False, **kw)


def _png(array: np.ndarray, path: Path, palette: bool = False) -> None:
    img = Image.fromarray(array)
    if palette:
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


# --- the registry ---------------------------------------------------------------------------------------------
def test_registry_lists_the_built_in_sources_and_rejects_unknown_names(tmp_path):
    assert source_names()[:5] == ["synthetic", "cityscapes", "voc", "ade20k", "folder"]
    with pytest.raises(ValueError, match="unknown source 'kitti'; known sources: synthetic, cityscapes, voc"):
        open_source("kitti", tmp_path)
    with pytest.raises(ValueError, match="source must be one of synthetic, cityscapes, voc, ade20k, folder.*'kitti'"):
        _pack(tmp_path, "kitti", tmp_path)


def test_the_package_is_light():
    code = "import sys, segmodels.data.sources; print([m for m in ('torch', 'PIL', 'yaml') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Squares:
    """A source of one's own: two classes, generated in memory."""

    layout = "memory"
    label_set = LabelSet("squares", ("off", "on"))

    def __init__(self, root: Path) -> None:
        self.root = root

    def samples(self, split: str) -> list[Sample]:
        return [Sample(f"{split}{i}", f"img{i}", f"lab{i}") for i in range(2)]

    def stamps(self, samples: list[Sample]) -> list[str]:
        return ["1" for _ in samples]

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        return 8, 8

    def read(self, sample: Sample):
        label = np.zeros((8, 8), np.uint8)
        label[2:6, 2:6] = 1
        return np.full((8, 8, 3), 9, np.uint8), label, 1, 2

    def read_label(self, sample: Sample) -> np.ndarray:
        return self.read(sample)[1]

    def read_instances(self, sample: Sample) -> None:
        return None

    def fresh(self) -> _Squares:
        return self


def test_a_registered_source_packs_like_the_built_in_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
    register_source("squares", _Squares)
    assert "squares" in source_names() and isinstance(open_source("squares", tmp_path), Source)
    result = _pack(tmp_path / "raw", "squares", tmp_path)  # the output lies outside the raw root
    assert result.manifest["classes"] == ["off", "on"] and result.manifest["label_set"] == "squares"
    assert result.manifest["splits"]["train"]["class_pixels"] == [2 * (24 * 32 - 12 * 16), 2 * 12 * 16]
    with pytest.raises(ValueError, match="already registered"):
        register_source("voc", _Squares)


@pytest.mark.parametrize("key", ["voc", "ade20k", "folder", "folder-rgb", "cityscapes"])
def test_every_reader_follows_the_protocol(raw, key):
    name = key.split("-")[0]
    src = open_source(name, raw[key])
    assert isinstance(src, Source) and isinstance(src.layout, str)
    samples = src.samples("train")
    assert [s.name for s in samples] == sorted(s.name for s in samples) and len(samples) == 2
    assert len(src.stamps(samples)) == 2 and src.check_headers(samples[0]) == (48, 64)
    image, label, crc_image, crc_label = src.fresh().read(samples[0])
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= set(range(src.label_set.num_classes)) | {src.label_set.ignore_index}
    np.testing.assert_array_equal(src.read_label(samples[0]), label)
    assert isinstance(crc_image, int) and isinstance(crc_label, int)


# --- Pascal VOC -------------------------------------------------------------------------------------------------
def _voc_val(root: Path) -> tuple[Path, Path]:
    name = (root / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    return root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("image without mask", "image without its mask"),
        ("listed image missing", "listed in"),
        ("value outside the label set", "mask values [30, 77] are not in the label set 'voc'"),
        ("rgb mask", "expected a palette or single-channel PNG of VOC class indices"),
        ("size mismatch", "mask is 40×64 but its image"),
        ("empty split", "empty split 'val'"),
    ],
)
def test_voc_bad_input_names_the_file(copy, tmp_path, case, message):
    root = copy("voc")
    image, mask = _voc_val(root)
    at_fault = mask
    if case == "image without mask":
        mask.unlink()
        at_fault = image
    elif case == "listed image missing":
        image.unlink()
        at_fault = image
    elif case == "value outside the label set":
        values = np.asarray(Image.open(mask)).copy()
        values[0, 0], values[5, 5] = 30, 77
        _png(values, mask, palette=True)
    elif case == "rgb mask":
        Image.open(mask).convert("RGB").save(mask)
    elif case == "size mismatch":
        _png(np.zeros((40, 64), np.uint8), mask, palette=True)
    elif case == "empty split":
        (root / "ImageSets/Segmentation/val.txt").write_text("")
        at_fault = root / "ImageSets/Segmentation/val.txt"
    with pytest.raises(ValueError) as info:
        _pack(root, "voc", tmp_path)
    assert message in str(info.value) and str(at_fault) in str(info.value)
    assert not (tmp_path / "packed").exists()


def test_voc_uses_sbd_masks_for_training_when_present(copy, tmp_path):
    root = copy("voc")
    (root / "SegmentationClassAug").mkdir()
    names = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    for name in names:  # SBD's masks are single-channel PNGs of the same indices; here all "person"
        _png(np.full((48, 64), 15, np.uint8), root / "SegmentationClassAug" / f"{name}.png")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(names) + "\n")
    src = open_source("voc", root)
    assert src.layout == "voc2012+sbd"
    assert all(s.label.startswith("SegmentationClassAug/") for s in src.samples("train"))
    assert all(s.label.startswith("SegmentationClass/") for s in src.samples("val"))
    result = _pack(root, "voc", tmp_path)
    assert result.manifest["layout"] == "voc2012+sbd"
    assert set(np.unique(np.load(tmp_path / "packed/train/labels.npy")).tolist()) == {15}
    assert open_source("voc", root, aug=False).layout == "voc2012"


def test_voc_found_inside_vocdevkit(copy, tmp_path):
    root = copy("voc")
    nested = tmp_path / "download"
    (nested / "VOCdevkit").mkdir(parents=True)
    shutil.move(root, nested / "VOCdevkit" / "VOC2012")
    assert open_source("voc", nested).root == nested / "VOCdevkit" / "VOC2012"
    with pytest.raises(FileNotFoundError, match="Pascal VOC 2012 not found in"):
        open_source("voc", tmp_path / "nothing")


# --- ADE20K ------------------------------------------------------------------------------------------------
def test_ade20k_reduces_the_zero_label(copy, tmp_path):
    root = copy("ade20k")
    mask = root / "annotations/training/ADE_train_00000001.png"
    values = np.zeros((48, 64), np.uint8)
    values[:, 10:] = 1  # wall
    values[:, 20:] = 150  # flag
    _png(values, mask)
    src = open_source("ade20k", root)
    label = src.read_label(src.samples("train")[0])
    assert label[0, 0] == 255 and label[0, 15] == 0 and label[0, 30] == 149
    assert src.label_set.classes[0] == "wall" and src.label_set.classes[149] == "flag"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("value outside the label set", "mask values [151, 200] are not in the label set 'ade20k'"),
        ("mask without image", "mask without its image 'ADE_train_00000002'"),
        ("empty split", "empty split 'val': no images in"),
    ],
)
def test_ade20k_bad_input_names_the_file(copy, tmp_path, case, message):
    root = copy("ade20k")
    at_fault = root / "annotations/training/ADE_train_00000002.png"
    if case == "value outside the label set":
        values = np.ones((48, 64), np.uint8)
        values[1, 1], values[2, 2] = 151, 200
        _png(values, at_fault)
    elif case == "mask without image":
        (root / "images/training/ADE_train_00000002.jpg").unlink()
    elif case == "empty split":
        shutil.rmtree(root / "images/validation")
        at_fault = root / "images/validation"
    with pytest.raises(ValueError) as info:
        _pack(root, "ade20k", tmp_path)
    assert message in str(info.value) and str(at_fault) in str(info.value)


# --- a folder of one's own -----------------------------------------------------------------------------------
def _classes(root: Path, data) -> Path:
    path = root / "classes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_folder_with_list_files_other_image_formats_and_plain_class_names(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _classes(root, ["background", "crack"])
    rng = np.random.default_rng(0)
    for i, suffix in enumerate((".png", ".bmp", ".tif", ".webp", ".jpeg")):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / "images" / f"p{i}{suffix}")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, :] = 1
        mask[0, 0] = 255
        _png(mask, root / "masks" / f"p{i}.png")
    (root / "train.txt").write_text("p0\np1\np2\n")
    (root / "val.txt").write_text("p3\np4.jpeg\n")  # a name with its suffix works too
    result = _pack(root, "folder", tmp_path)
    assert result.manifest["classes"] == ["background", "crack"] and result.manifest["label_set"] == "folder"
    assert result.manifest["splits"]["val"]["names"] == ["p3", "p4"]
    assert "lists" in result.manifest["layout"]
    labels = np.load(tmp_path / "packed/train/labels.npy")
    assert set(np.unique(labels).tolist()) <= {0, 1, 255} and (labels == 1).any()
    (root / "val.txt").write_text("p3\nmissing\n")
    with pytest.raises(ValueError, match=re.escape(f"{root / 'val.txt'}: lists 'missing'")):
        _pack(root, "folder", tmp_path)


def test_folder_ignore_value_of_the_masks_is_packed_as_255(copy, tmp_path):
    root = copy("folder")
    data = yaml.safe_load((root / "classes.yaml").read_text())
    _classes(root, {"classes": [c["name"] for c in data["classes"]], "ignore_index": 100})
    for mask in (root / "masks").rglob("*.png"):
        values = np.asarray(Image.open(mask)).copy()
        values[values == 255] = 100
        _png(values, mask)
    result = _pack(root, "folder", tmp_path)
    assert result.manifest["ignore_index"] == 255 and result.manifest["splits"]["train"]["ignore_pixels"] > 0
    assert set(np.unique(np.load(tmp_path / "packed/train/labels.npy")).tolist()) <= {*range(7), 255}
    with pytest.raises(ValueError, match=r"mask values \[255\] are not in the label set 'folder' \(class indices "
                                         r"0-6, ignore 100\)"):  # fmt: skip
        values = np.zeros((48, 64), np.uint8)
        values[0, 0] = 255
        _png(values, root / "masks/val/scene_00000.png")
        _pack(root, "folder", tmp_path)


def test_folder_palette_masks_and_ignore_color(copy, tmp_path):
    root = copy("folder-rgb")
    data = yaml.safe_load((root / "classes.yaml").read_text())
    colours = [tuple(c["color"]) for c in data["classes"]]
    mask_path = root / "masks/val/scene_00000.png"
    rgb = np.asarray(Image.open(mask_path).convert("RGB"))
    src = open_source("folder", root)
    sample = src.samples("val")[0]
    want = src.read_label(sample)
    Image.open(mask_path).convert("RGB").quantize(colors=len(colours) + 1, dither=Image.Dither.NONE).save(mask_path)
    assert Image.open(mask_path).mode == "P"
    np.testing.assert_array_equal(src.read_label(sample), want)  # palette colours map like RGB ones
    assert (want == 255).sum() == (rgb == 255).all(axis=2).sum()  # white is ignore_color


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("colour not in the list", "color [1, 2, 3] is not a class color of"),
        ("palette colour not in the list", "color [9, 9, 9] is not a class color of"),
        ("index outside the label set", "mask values [7, 9] are not in the label set 'folder'"),
        ("size mismatch", "mask is 40×64 but its image"),
        ("image without mask", "image without its mask 'scene_00000'"),
        ("mask without image", "mask without its image 'scene_00001'"),
        ("lossy mask", "a mask must be stored losslessly"),
        ("empty split", "empty split 'val': no images in"),
    ],
)
def test_folder_bad_input_names_the_file(copy, tmp_path, case, message):
    root = copy("folder-rgb" if "colour" in case else "folder")
    image, mask = root / "images/val/scene_00000.jpg", root / "masks/val/scene_00000.png"
    at_fault = mask
    if case == "colour not in the list":
        rgb = np.asarray(Image.open(mask)).copy()
        rgb[3, 3] = (1, 2, 3)
        Image.fromarray(rgb).save(mask)
    elif case == "palette colour not in the list":
        indices = np.zeros((48, 64), np.uint8)
        indices[4:, :] = 1
        img = Image.fromarray(indices, mode="L")
        img.putpalette([128, 64, 128, 9, 9, 9] + [0] * 762)
        img.save(mask)
    elif case == "index outside the label set":
        values = np.zeros((48, 64), np.uint8)
        values[0, 0], values[1, 1] = 7, 9
        _png(values, mask)
    elif case == "size mismatch":
        _png(np.zeros((40, 64), np.uint8), mask)
    elif case == "image without mask":
        mask.unlink()
        at_fault = image
    elif case == "mask without image":
        (root / "images/train/scene_00001.jpg").unlink()
        at_fault = root / "masks/train/scene_00001.png"
    elif case == "lossy mask":
        mask.unlink()
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask.with_suffix(".jpg"))
        at_fault = mask.with_suffix(".jpg")
    elif case == "empty split":
        image.unlink()
        mask.unlink()
        at_fault = image.parent
    with pytest.raises(ValueError) as info:
        _pack(root, "folder", tmp_path)
    assert message in str(info.value) and str(at_fault) in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["road", "car", "road", "sky", "car"], "class names appear more than once: car, road"),
        ([{"name": "a", "color": [1, 2, 3]}, {"name": "b"}], "colors are given for some classes but not for b"),
        ([{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [1, 2, 3]}], "share the color [1, 2, 3]"),
        ([{"name": "a", "color": [1, 2, 300]}], "the color of 'a' must be [r, g, b]"),
        ({"classes": ["a", "b"], "ignore_index": 1}, "ignore_index 1 is also a class index"),
        ({"classes": ["a"], "ignore": 255}, "unknown key 'ignore'"),
        ({"classes": [{"name": "a", "color": [0, 0, 0]}], "ignore_color": [0, 0, 0]}, "ignore_color [0, 0, 0] is also"),
        ("just text", "expected a list of class names"),
    ],
)
def test_bad_class_file_names_the_file(copy, tmp_path, data, message):
    root = copy("folder")
    path = _classes(root, data)
    with pytest.raises(ValueError) as info:
        _pack(root, "folder", tmp_path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_class_file_names_it(copy, tmp_path):
    root = copy("folder")
    (root / "classes.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root / 'classes.yaml'}: missing")):
        _pack(root, "folder", tmp_path)


def test_edited_class_file_packs_again(copy, tmp_path):
    root = copy("folder")
    assert not _pack(root, "folder", tmp_path).skipped
    assert _pack(root, "folder", tmp_path).skipped
    data = yaml.safe_load((root / "classes.yaml").read_text())
    data["classes"][0]["name"] = "road"
    _classes(root, data)
    result = _pack(root, "folder", tmp_path)
    assert not result.skipped and result.manifest["classes"][0] == "road"


# --- full-resolution scoring and the study configs -------------------------------------------------------------
def test_full_resolution_labels_come_from_the_recorded_source(raw, tmp_path):
    from segmodels.engine.evaluate import RawLabels

    result = _pack(raw["voc"], "voc", tmp_path)
    names = result.manifest["splits"]["val"]["names"]
    labels = RawLabels(tmp_path / "packed" / "val", names)
    src = open_source("voc", raw["voc"])
    assert len(labels) == 1 and labels.sizes == [(48, 64)]
    np.testing.assert_array_equal(labels.read(0), src.read_label(src.samples("val")[0]))


@pytest.mark.parametrize(("name", "source", "classes"), [("voc.yaml", "voc", 21), ("ade20k.yaml", "ade20k", 150)])
def test_study_configs_of_the_other_datasets_validate(name, source, classes):
    from segmodels.study.config import load_config
    from segmodels.study.matrix import run_names

    path = ROOT / "config" / name
    cfg = load_config(path)
    assert cfg.data.source == source and cfg.model.num_classes == classes and cfg.data.dataset == source
    t = cfg.train
    assert (t.crop_size, t.batch_size, t.lr, t.scale_range) == ([512, 512], 16, 0.01, [0.5, 2.0])
    assert t.iterations == (20000 if source == "voc" else 80000) and run_names(cfg)
    for line in path.read_text().splitlines():
        if re.match(r"^  (iterations|batch_size|crop_size|scale_range|lr|num_classes|source):", line):
            assert "#" in line, line
