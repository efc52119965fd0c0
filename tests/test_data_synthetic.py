"""The generated dataset: Cityscapes layout and ids, determinism, class coverage, idempotent writing, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segmodels.cli import main
from segmodels.data.labels import ID_PALETTE, ID_TO_TRAINID, IGNORE_INDEX, MAX_LABEL_ID, NUM_CLASSES, label_id
from segmodels.data.sources.cityscapes import CityscapesSource
from segmodels.data.synthetic import PARAMS_FILE, SynthParams, generate, image_ids, render

SMALL = SynthParams(train=3, val=2, size=(48, 96), seed=7)
NAME = re.compile(
    r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_\d{6}_000019_"
    r"(leftImg8bit|gtFine_labelIds|gtFine_instanceIds|gtFine_color)\.png$"
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_naming_and_label_ids(tmp_path):
    assert generate(tmp_path, SMALL, workers=1, progress=False) == 5
    files = _files(tmp_path)
    assert len(files) == 5 * 4 and all(NAME.match(rel) for rel in files), sorted(files)
    src = CityscapesSource.open(tmp_path)  # the real-data reader finds the pairs
    train = src.samples("train")
    assert [s.name for s in train] == sorted(name for _, name in image_ids("train", 3))
    assert {s.name.split("_")[0] for s in train} == {"synthtown", "pixelburg", "rendersheim"}
    for sample in train + src.samples("val"):
        image, train_ids, _, _ = src.read(sample)
        ids = src.read_ids(sample)
        np.testing.assert_array_equal(train_ids, ID_TO_TRAINID[ids])  # read() maps label ids to train ids
        assert image.shape == (48, 96, 3) and ids.shape == (48, 96)
        assert ids.max() <= MAX_LABEL_ID
        assert (ids == label_id("ego vehicle")).any()  # void strip at the bottom, like real Cityscapes
        assert (ids == label_id("road")).any()  # label ids (7), not train ids (0)
        colour = np.asarray(Image.open(tmp_path / sample.label.replace("labelIds", "color")).convert("RGB"))
        np.testing.assert_array_equal(colour, ID_PALETTE[ids])
    record = json.loads((tmp_path / PARAMS_FILE).read_text())
    assert record["complete"] is True and record["seed"] == 7 and record["size"] == [48, 96]


def test_deterministic_for_a_seed_and_any_worker_count(tmp_path):
    generate(tmp_path / "a", SMALL, workers=1, progress=False)
    generate(tmp_path / "b", SMALL, workers=2, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    other = SynthParams(train=3, val=2, size=(48, 96), seed=8)
    image_a, _ = render(SMALL, "train", 0)
    image_b, _ = render(other, "train", 0)
    assert not np.array_equal(image_a, image_b)
    image_c, _ = render(SMALL, "train", 1)
    assert not np.array_equal(image_a, image_c)


def _class_pixels(n: int, size=(64, 128)) -> np.ndarray:
    params = SynthParams(train=n, val=0, size=size, seed=0)
    counts = np.zeros(256, np.int64)
    for i in range(n):
        counts += np.bincount(ID_TO_TRAINID[render(params, "train", i)[1]].ravel(), minlength=256)
    return counts


def test_all_classes_occur_with_cityscapes_like_imbalance():
    counts = _class_pixels(12)
    labelled = counts[:NUM_CLASSES]
    assert (labelled > 0).all(), np.flatnonzero(labelled == 0)
    freq = labelled / counts.sum()
    top4 = set(np.argsort(-freq)[:4])
    assert {0, 2, 8} <= top4  # road, building, vegetation dominate
    assert freq[0] > 0.2  # road is the largest class, as in Cityscapes
    for rare in (12, 16, 17):  # rider, train, motorcycle
        assert freq[rare] < 0.01
    assert 0.01 < counts[IGNORE_INDEX] / counts.sum() < 0.15  # a few void pixels, like real data


def test_colour_alone_does_not_separate_the_classes():
    """Even a colour → class table fit on the very pixels it is scored on stays far from a usable mIoU."""
    params = SynthParams(train=8, val=0, size=(64, 128), seed=3)
    xs, ys = [], []
    for i in range(8):
        image, ids = render(params, "train", i)
        xs.append(image.reshape(-1, 3) // 32)
        ys.append(ID_TO_TRAINID[ids].ravel())
    x, y = np.concatenate(xs).astype(np.int64), np.concatenate(ys)
    keep = y != IGNORE_INDEX
    key, y = (x[:, 0] * 64 + x[:, 1] * 8 + x[:, 2])[keep], y[keep]
    table = np.zeros((512, NUM_CLASSES), np.int64)
    np.add.at(table, (key, y), 1)
    pred = table.argmax(1)[key]
    ious = [((pred == c) & (y == c)).sum() / max(((pred == c) | (y == c)).sum(), 1) for c in np.unique(y)]
    assert np.mean(ious) < 0.35


def test_second_run_does_nothing_and_changes_regenerate(tmp_path):
    assert generate(tmp_path, SMALL, workers=1, progress=False) == 5
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    assert generate(tmp_path, SMALL, workers=1, progress=False) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == before
    # fewer images: the extra ones go, the rest stay (image i depends only on seed, split, i and size)
    fewer = SynthParams(train=2, val=2, size=(48, 96), seed=7)
    assert generate(tmp_path, fewer, workers=1, progress=False) == 0
    assert len(list(tmp_path.rglob("*_leftImg8bit.png"))) == 4
    assert len(list(tmp_path.rglob("*.png"))) == 16
    # another seed: everything is rendered again
    reseeded = SynthParams(train=2, val=2, size=(48, 96), seed=8)
    assert generate(tmp_path, reseeded, workers=1, progress=False) == 4
    assert json.loads((tmp_path / PARAMS_FILE).read_text())["seed"] == 8


def test_interrupted_run_is_completed(tmp_path):
    generate(tmp_path, SMALL, workers=1, progress=False)
    reference = _files(tmp_path)
    record = json.loads((tmp_path / PARAMS_FILE).read_text())
    (tmp_path / PARAMS_FILE).write_text(json.dumps({**record, "complete": False}))
    victim = next(tmp_path.rglob("*_leftImg8bit.png"))
    victim.unlink()
    leftover = victim.parent / f".{victim.name}.abc123.tmp"  # what a kill during a write leaves
    leftover.write_bytes(b"partial")
    assert generate(tmp_path, SMALL, workers=1, progress=False) == 1  # only the missing image
    assert _files(tmp_path) == reference
    assert not leftover.exists()


def test_refuses_to_write_into_other_cityscapes_data(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds other Cityscapes data"):
        generate(tmp_path, SMALL, workers=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"train": -1}, "'train' must be a non-negative integer"), ({"size": (16, 64)}, "at least 32"),
     ({"train": 0, "val": 0}, "nothing to generate")],
)  # fmt: skip
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthParams(**kwargs)


def test_cli_synth_with_flags_and_config(tmp_path, capsys, monkeypatch):
    out = tmp_path / "raw"
    args = ["synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "40", "80", "--seed", "3"]
    assert main([*args, "--workers", "1", "--quiet"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert main([*args, "--quiet"]) == 0
    assert "is up to date" in capsys.readouterr().out
    config = tmp_path / "study.yaml"
    config.write_text(
        yaml.safe_dump({"data": {"dataset": "tiny", "synthetic": {"train": 1, "val": 1, "size": [40, 80]}}})
    )
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--config", str(config), "--val", "2", "--workers", "1", "--quiet"]) == 0
    written = json.loads((tmp_path / "data" / "raw" / "tiny" / PARAMS_FILE).read_text())
    assert (written["train"], written["val"], written["size"]) == (1, 2, [40, 80])  # the flag overrides the config
    assert main(["synth", "--out", str(out), "--size", "8", "80"]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_zips_hold_the_same_scenes_as_the_tree_in_the_official_layout(tmp_path, capsys):
    """`synth --zip` writes the two archives Cityscapes ships; prepare reads them into the same arrays."""
    import zipfile

    from segmodels.data.pack import prepare

    params = SynthParams(train=4, val=2, size=(64, 128), seed=3, color=True)
    generate(tmp_path / "tree", params, workers=1, progress=False)
    assert main(["synth", "--zip", "--out", str(tmp_path / "zips"), "--train", "4", "--val", "2", "--size", "64",
                 "128", "--seed", "3", "--workers", "2", "--quiet"]) == 0  # fmt: skip
    assert "wrote 6 images" in capsys.readouterr().out
    images = zipfile.ZipFile(tmp_path / "zips" / "leftImg8bit_trainvaltest.zip")
    labels = zipfile.ZipFile(tmp_path / "zips" / "gtFine_trainvaltest.zip")
    assert all(i.compress_type == zipfile.ZIP_STORED for i in images.infolist())  # PNG: nothing left to deflate
    tree_names = sorted(str(p.relative_to(tmp_path / "tree")) for p in (tmp_path / "tree").rglob("*.png"))
    assert sorted(images.namelist() + labels.namelist()) == tree_names  # leftImg8bit/train/{city}/..., gtFine/...
    for name in images.namelist()[:2] + labels.namelist()[:2]:
        archive = images if name.startswith("leftImg8bit") else labels
        assert archive.read(name) == (tmp_path / "tree" / name).read_bytes()
    assert CityscapesSource.open(tmp_path / "zips").layout == "zip"
    a = prepare(root=tmp_path / "tree", out=tmp_path / "pa", size=(32, 64), workers=1, progress=False)
    b = prepare(root=tmp_path / "zips", out=tmp_path / "pb", size=(32, 64), source="cityscapes", workers=1,
                progress=False)  # fmt: skip
    for split in ("train", "val"):
        for array in ("images.npy", "labels.npy"):
            np.testing.assert_array_equal(np.load(a.path / split / array), np.load(b.path / split / array))
    # Up to date: a second run writes nothing; no temporary archive is left behind.
    assert main(["synth", "--zip", "--out", str(tmp_path / "zips"), "--train", "4", "--val", "2", "--size", "64",
                 "128", "--seed", "3", "--quiet"]) == 0  # fmt: skip
    assert "is up to date" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "zips").iterdir()) == [
        "gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip", PARAMS_FILE]  # fmt: skip


class _Big:
    """A result that can tell whether it is still alive (bytes cannot be weakly referenced)."""

    def __init__(self, n: int) -> None:
        self.payload = bytes(n)


def _make_big(n: int) -> _Big:
    return _Big(n)


def test_parallel_map_lets_each_result_go_once_yielded():
    """Generating 2975 full-size scenes must not hold every encoded image until the end."""
    import gc
    import weakref

    from segmodels.data._io import parallel_map

    refs = []
    for _, result in parallel_map(_make_big, [1000] * 6, workers=2):
        refs.append(weakref.ref(result))
        del result
        gc.collect()
        assert all(r() is None for r in refs[:-1]), "results already yielded are still referenced"
