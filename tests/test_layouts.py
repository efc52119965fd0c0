"""The generated scenes in the Pascal VOC, ADE20K and folder layouts, packed by their own readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmodels.cli import main
from segmodels.data.layouts import FOLDER_CLASSES, generate_layout, image_names, render_layout
from segmodels.data.pack import MANIFEST, prepare
from segmodels.data.sources import open_source
from segmodels.data.synthetic import SynthParams

PARAMS = SynthParams(train=4, val=2, size=(64, 96), seed=5)
PACKED = (32, 48)
CLASSES = {"voc": 21, "ade20k": 150, "folder": len(FOLDER_CLASSES)}
CASES = [("voc", "index"), ("ade20k", "index"), ("folder", "index"), ("folder", "rgb")]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout, masks in CASES:
        root = base / f"{layout}-{masks}"
        assert generate_layout(root, layout, PARAMS, masks=masks, workers=1, progress=False) == 6
        out[layout, masks] = root
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("layout", "masks"), CASES)
def test_each_layout_packs_with_its_label_set(generated, tmp_path, layout, masks):
    root = generated[layout, masks]
    out = tmp_path / "packed"
    result = prepare(root=root, out=out, size=PACKED, source=layout, workers=1, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == result.manifest and manifest["source"] == layout and manifest["label_set"] == layout
    n = CLASSES[layout]
    assert len(manifest["classes"]) == n and len(manifest["palette"]) == n and manifest["ignore_index"] == 255
    for split, count in (("train", 4), ("val", 2)):
        images = np.load(out / split / "images.npy")
        labels = np.load(out / split / "labels.npy")
        assert images.shape == (count, *PACKED, 3) and labels.shape == (count, *PACKED)
        assert set(np.unique(labels).tolist()) <= set(range(n)) | {255}
        info = manifest["splits"][split]
        assert len(info["class_pixels"]) == n and info["source_sizes"] == {"64×96": count}
        assert sum(info["class_pixels"]) + info["ignore_pixels"] == count * PACKED[0] * PACKED[1]
    again = prepare(root=root, out=out, size=PACKED, source=layout, workers=1, progress=False)
    assert again.skipped and again.manifest == manifest  # packing twice is a no-op
    # synth.json names the layout: the "synthetic" source packs the same arrays
    other = prepare(root=root, out=tmp_path / "via-synthetic", size=PACKED, source="synthetic", workers=2,
                    progress=False)  # fmt: skip
    assert other.manifest["classes"] == manifest["classes"] and other.manifest["synthetic"]["layout"] == layout
    for split in ("train", "val"):
        np.testing.assert_array_equal(np.load(out / split / "labels.npy"),
                                      np.load(tmp_path / "via-synthetic" / split / "labels.npy"))  # fmt: skip


def test_masks_are_stored_as_the_real_datasets_store_them(generated):
    voc = generated["voc", "index"]
    name = image_names("voc", "train", 1)[0]
    with Image.open(voc / "SegmentationClass" / f"{name}.png") as mask:
        assert mask.mode == "P"  # palette PNG whose value is the class index
        values = np.asarray(mask)
    assert 255 in values and 0 in values  # boundary band and background
    assert (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == image_names("voc", "val", 2)
    with Image.open(voc / "JPEGImages" / f"{name}.jpg") as image:
        assert image.format == "JPEG" and image.size == (96, 64)
    ade = generated["ade20k", "index"]
    with Image.open(ade / "annotations" / "validation" / "ADE_val_00000001.png") as mask:
        assert mask.mode == "L" and np.asarray(mask).max() <= 150
    with Image.open(generated["folder", "rgb"] / "masks" / "train" / "scene_00000.png") as mask:
        assert mask.mode == "RGB"
    with Image.open(generated["folder", "index"] / "masks" / "train" / "scene_00000.png") as mask:
        assert mask.mode == "L"


def test_ade20k_scenes_cover_many_of_the_150_classes(generated):
    src = open_source("ade20k", generated["ade20k", "index"])
    seen = set()
    for split in ("train", "val"):
        for sample in src.samples(split):
            seen |= set(np.unique(src.read_label(sample)).tolist())
    assert len(seen - {255}) >= 30, sorted(seen)
    # the home class of a scene region stays learnable: road is ADE20K's "road" in most images
    road = [render_layout("ade20k", PARAMS, "train", i)[1] for i in range(8)]
    assert sum(bool((m == 7).any()) for m in road) >= 2


def test_same_files_for_a_seed_and_any_worker_count(tmp_path):
    params = SynthParams(train=3, val=1, size=(48, 64), seed=2)
    generate_layout(tmp_path / "a", "voc", params, workers=1, progress=False)
    generate_layout(tmp_path / "b", "voc", params, workers=2, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other = render_layout("voc", SynthParams(train=3, val=1, size=(48, 64), seed=3), "train", 0)[0]
    assert not np.array_equal(render_layout("voc", params, "train", 0)[0], other)


def test_second_run_does_nothing_and_more_images_keep_the_others(tmp_path):
    root = tmp_path / "ade"
    small = SynthParams(train=2, val=1, size=(48, 64), seed=0)
    assert generate_layout(root, "ade20k", small, workers=1, progress=False) == 3
    first = root / "images" / "training" / "ADE_train_00000001.jpg"
    stamp = first.stat().st_mtime_ns
    assert generate_layout(root, "ade20k", small, workers=1, progress=False) == 0
    assert generate_layout(root, "ade20k", SynthParams(train=3, val=1, size=(48, 64), seed=0), workers=1,
                           progress=False) == 1  # fmt: skip
    assert first.stat().st_mtime_ns == stamp
    assert generate_layout(root, "ade20k", small, workers=1, progress=False) == 0  # fewer: the extra one goes
    assert not (root / "images" / "training" / "ADE_train_00000003.jpg").exists()
    assert generate_layout(root, "ade20k", SynthParams(train=2, val=1, size=(48, 64), seed=1), workers=1,
                           progress=False) == 3  # another seed: every image again  # fmt: skip


def test_refuses_to_write_into_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="holds other data"):
        generate_layout(tmp_path / "mine", "folder", PARAMS, workers=1, progress=False)
    generate_layout(tmp_path / "voc", "voc", SynthParams(train=1, val=1, size=(48, 64)), workers=1, progress=False)
    with pytest.raises(ValueError, match="holds other data"):  # another layout into the same folder
        generate_layout(tmp_path / "voc", "ade20k", SynthParams(train=1, val=1, size=(48, 64)), workers=1,
                        progress=False)  # fmt: skip


def test_cli_synth_layout_then_prepare(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["synth", "--layout", "voc", "--out", str(out), "--train", "2", "--val", "1", "--size", "48", "64",
                 "--workers", "1", "--quiet"]) == 0  # fmt: skip
    assert "wrote 3 images" in capsys.readouterr().out and (out / "JPEGImages").is_dir()
    assert main(["prepare", "--source", "voc", "--root", str(out), "--out", str(tmp_path / "packed"), "--size",
                 "24", "32", "--workers", "1", "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "packed" / MANIFEST).read_text())["classes"][15] == "person"
    capsys.readouterr()
    assert main(["synth", "--layout", "ade20k", "--zip", "--out", str(tmp_path / "z"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--zip" in err and "ade20k" in err and not (tmp_path / "z").exists()


def test_cli_synth_takes_the_layout_from_the_config(tmp_path, capsys):
    import yaml

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "tiny", "source": "synthetic", "size": [32, 48],
                                               "synthetic": {"train": 1, "val": 1, "size": [48, 64],
                                                             "layout": "folder"}},
                                      "train": {"crop_size": [32, 48]}}))  # fmt: skip
    assert main(["synth", "--config", str(config), "--out", str(tmp_path / "raw"), "--quiet"]) == 0
    assert (tmp_path / "raw" / "classes.yaml").is_file() and "folder layout" in capsys.readouterr().out
