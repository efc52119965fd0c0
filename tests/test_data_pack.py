"""Packing: decoded, mapped and resized arrays, the manifest, atomic output, idempotence, the CLI."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segmodels.cli import main
from segmodels.data.labels import ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES
from segmodels.data.pack import MANIFEST, prepare
from segmodels.data.sources.cityscapes import IMAGE_ZIP, LABEL_ZIP
from segmodels.data.synthetic import SynthParams, generate

RAW_SIZE, PACKED = (48, 96), (24, 48)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, SynthParams(train=4, val=2, size=RAW_SIZE, seed=1), workers=1, progress=False)
    return root


def _copy_tree(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


def _pack(root: Path, out: Path, **kw):
    kw.setdefault("size", PACKED)
    kw.setdefault("workers", 1)
    return prepare(root=root, out=out, source="synthetic", progress=False, **kw)


def test_packed_arrays_and_manifest(raw, tmp_path):
    out = tmp_path / "packed" / "synthetic"
    result = _pack(raw, out)
    assert not result.skipped and result.path == out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == result.manifest
    assert manifest["size"] == list(PACKED) and manifest["source"] == "synthetic" and manifest["layout"] == "tree"
    assert manifest["synthetic"]["seed"] == 1
    for split, n in (("train", 4), ("val", 2)):
        images = np.load(out / split / "images.npy", mmap_mode="r")
        labels = np.load(out / split / "labels.npy", mmap_mode="r")
        assert images.shape == (n, *PACKED, 3) and images.dtype == np.uint8
        assert labels.shape == (n, *PACKED) and labels.dtype == np.uint8
        values = set(np.unique(labels).tolist())
        assert values <= set(range(NUM_CLASSES)) | {IGNORE_INDEX} and IGNORE_INDEX in values
        info = manifest["splits"][split]
        assert info["count"] == n and len(info["names"]) == n and info["source_sizes"] == {"48×96": n}
        counts = np.bincount(np.asarray(labels).ravel(), minlength=256)
        assert info["class_pixels"] == counts[:NUM_CLASSES].tolist()
        assert info["ignore_pixels"] == counts[IGNORE_INDEX]
        assert sum(info["class_pixels"]) + info["ignore_pixels"] == n * PACKED[0] * PACKED[1]
        assert abs(sum(info["class_frequency"]) + info["ignore_pixels"] / counts.sum() - 1) < 1e-4
        for i, entry in enumerate(info["inputs"]):
            assert entry["image"].endswith(f"{info['names'][i]}_leftImg8bit.png")
            assert entry["image_crc32"] == f"{zlib.crc32((raw / entry['image']).read_bytes()):08x}"
            assert entry["label_crc32"] == f"{zlib.crc32((raw / entry['label']).read_bytes()):08x}"
        # row i is the named pair, decoded, mapped to train ids and resized
        entry = info["inputs"][1]
        image = Image.open(raw / entry["image"]).convert("RGB")
        ids = np.asarray(Image.open(raw / entry["label"]))
        want_img = np.asarray(image.resize(PACKED[::-1], Image.Resampling.BILINEAR, reducing_gap=None))
        want_lab = np.asarray(Image.fromarray(ID_TO_TRAINID[ids]).resize(PACKED[::-1], Image.Resampling.NEAREST))
        np.testing.assert_array_equal(images[1], want_img)
        np.testing.assert_array_equal(labels[1], want_lab)


def test_zips_pack_like_the_tree_and_without_resizing(raw, tmp_path):
    zroot = tmp_path / "zips"
    zroot.mkdir()
    for archive, top in ((IMAGE_ZIP, "leftImg8bit"), (LABEL_ZIP, "gtFine")):
        with zipfile.ZipFile(zroot / archive, "w") as zf:
            for path in sorted((raw / top).rglob("*.png")):
                zf.write(path, path.relative_to(raw).as_posix())
    a = prepare(root=raw, out=tmp_path / "a", size=RAW_SIZE, workers=1, progress=False)
    b = prepare(root=zroot, out=tmp_path / "b", size=RAW_SIZE, workers=2, progress=False)  # one handle each
    assert b.manifest["layout"] == "zip"
    for split in ("train", "val"):
        for name in ("images.npy", "labels.npy"):
            np.testing.assert_array_equal(
                np.load(tmp_path / "a" / split / name), np.load(tmp_path / "b" / split / name)
            )
        assert a.manifest["splits"][split]["inputs"] == b.manifest["splits"][split]["inputs"]
    # same size as the source: the arrays are exactly the decoded files
    first = a.manifest["splits"]["val"]["inputs"][0]
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "val" / "images.npy")[0], np.asarray(Image.open(raw / first["image"]))
    )


def test_second_run_does_nothing_until_something_changes(raw, tmp_path):
    root = _copy_tree(raw, tmp_path / "raw")
    out = tmp_path / "packed"
    _pack(root, out)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert _pack(root, out).skipped
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    assert not _pack(root, out, size=(16, 32)).skipped  # another size
    assert np.load(out / "train" / "images.npy", mmap_mode="r").shape[1:3] == (16, 32)
    assert _pack(root, out, size=(16, 32)).skipped
    assert not _pack(root, out, size=(16, 32), force=True).skipped
    victim = next((root / "leftImg8bit" / "val").rglob("*.png"))  # an input changes
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert not _pack(root, out, size=(16, 32)).skipped
    (out / "val" / "labels.npy").unlink()  # an output goes missing
    assert not _pack(root, out, size=(16, 32)).skipped


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_worker_leaves_the_previous_dataset_or_nothing(raw, tmp_path, workers):
    root = _copy_tree(raw, tmp_path / "raw")
    out = tmp_path / "packed" / "synthetic"
    label = sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))[-1]
    good = label.read_bytes()
    label.write_bytes(good[:40] + bytes(len(good) - 60) + good[-20:])  # header intact, data damaged
    with pytest.raises(ValueError, match=f"{label}: not a decodable PNG"):
        _pack(root, out, workers=workers)
    assert list((tmp_path / "packed").iterdir()) == []  # no split, no manifest, no temporary folder
    label.write_bytes(good)
    first = _pack(root, out, workers=workers).manifest
    label.write_bytes(good[:40] + bytes(len(good) - 60) + good[-20:])
    with pytest.raises(ValueError, match="not a decodable PNG"):
        _pack(root, out, size=(16, 32), workers=workers)
    assert [p.name for p in (tmp_path / "packed").iterdir()] == ["synthetic"]
    assert json.loads((out / MANIFEST).read_text()) == first  # the complete earlier dataset is untouched
    assert np.load(out / "train" / "images.npy", mmap_mode="r").shape[1:3] == PACKED


def test_leftovers_of_a_killed_run_are_removed(raw, tmp_path):
    out = tmp_path / "packed" / "synthetic"
    stale = tmp_path / "packed" / ".synthetic.tmp-999999999-dead"  # no such process
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "images.npy").write_bytes(b"partial")
    _pack(raw, out)
    assert not stale.exists() and (out / MANIFEST).is_file()


def test_cli_prepare(raw, tmp_path, capsys, monkeypatch):
    out = tmp_path / "packed"
    args = ["prepare", "--source", "synthetic", "--root", str(raw), "--out", str(out), "--size", "24", "48"]
    assert main([*args, "--workers", "1", "--quiet"]) == 0
    assert "packed train 4, val 2 images at 24×48" in capsys.readouterr().out
    assert main([*args, "--quiet"]) == 0
    assert "is up to date" in capsys.readouterr().out
    # --config: data.source/root/dataset/size, with data/raw/{dataset} → data/packed/{dataset} by default
    monkeypatch.chdir(tmp_path)
    _copy_tree(raw, tmp_path / "data" / "raw" / "tiny")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "tiny", "source": "synthetic", "size": [24, 48]},
                                      "train": {"crop_size": [24, 48]}}))  # a study whose crops fit its data
    assert main(["prepare", "--config", str(config), "--size", "16", "32", "--workers", "1", "--quiet"]) == 0
    assert np.load(tmp_path / "data/packed/tiny/val/labels.npy").shape == (2, 16, 32)


def test_cli_prepare_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    assert main(["prepare", "--source", "cityscapes", "--root", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segmodels prepare: error: Cityscapes not found") and "cityscapes-dataset.com" in err
    assert err.count("\n") == 1
    assert main(["prepare", "--source", "synthetic", "--root", str(tmp_path / "none"), "--quiet"]) == 2
    assert "run `segmodels synth --out" in capsys.readouterr().err


def test_cli_prepare_finds_cityscapes_through_the_environment(raw, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(raw))  # a Cityscapes-layout folder, as cityscapesScripts
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--source", "cityscapes", "--size", "24", "48", "--workers", "1", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "data/packed/synthetic" / MANIFEST).read_text())
    assert manifest["source"] == "cityscapes" and manifest["root"] == str(raw.resolve())
