"""Instance ids through the data path: the generator's ``*_gtFine_instanceIds.png`` (folders and zips), the
Cityscapes reader, ``val/instances.npy`` with its manifest key, and ``PackedSplit.instances``."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_cityscapes import _corrupt_body, _png, make_files, write_tree, write_zips

from segmodels.cli import main
from segmodels.data import sources
from segmodels.data.canvas import Canvas
from segmodels.data.labels import ID_TO_TRAINID, LABELS, label_id
from segmodels.data.labelset import LabelSet
from segmodels.data.layouts import generate_layout
from segmodels.data.loader import PackedSplit
from segmodels.data.pack import MANIFEST, prepare
from segmodels.data.sources import Sample, open_source, register_source
from segmodels.data.sources.cityscapes import IMAGE_ZIP, LABEL_ZIP, CityscapesSource
from segmodels.data.synthetic import PARAMS_FILE, SynthParams, generate, generate_zips, render_with_instances

SMALL = SynthParams(train=2, val=3, size=(48, 96), seed=5)
PACKED = (24, 48)
WITH_INSTANCES = {label.id for label in LABELS if label.has_instances}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    generate(root, SMALL, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zips")
    generate_zips(root, SMALL, workers=1, progress=False)
    return root


def _assert_cityscapes_ids(inst: np.ndarray, label_ids: np.ndarray) -> None:
    """label id × 1000 + k on objects of classes with instances (k from 0 without gaps), the label id elsewhere."""
    objects = inst >= 1000
    np.testing.assert_array_equal(inst[objects] // 1000, label_ids[objects])
    np.testing.assert_array_equal(inst[~objects], label_ids[~objects])
    assert set(np.unique(label_ids[objects]).tolist()) <= WITH_INSTANCES
    ids = np.unique(inst[objects])
    for lid in np.unique(ids // 1000):
        assert sorted(ids[ids // 1000 == lid] % 1000) == list(range(int((ids // 1000 == lid).sum())))


def _assert_consistent(instances: np.ndarray, labels: np.ndarray) -> None:
    """A packed instance map against the packed train ids: every pixel's class follows from its instance id."""
    instances = np.asarray(instances).astype(np.int64)
    objects = instances >= 1000
    assert objects.any()
    np.testing.assert_array_equal(ID_TO_TRAINID[instances[objects] // 1000], labels[objects])
    np.testing.assert_array_equal(ID_TO_TRAINID[instances[~objects]], labels[~objects])


# --- the generator ----------------------------------------------------------------------------------------------
def test_canvas_numbers_the_visible_objects_and_occluders_overwrite():
    c = Canvas(np.random.default_rng(0), 8, 12)
    whole, grey = (slice(0, 8), slice(0, 12)), np.full(3, 0.5, np.float32)
    car, person, pole = label_id("car"), label_id("person"), label_id("pole")

    def columns(x0: int, x1: int) -> np.ndarray:
        mask = np.zeros((8, 12), bool)
        mask[2:6, x0:x1] = True
        return mask

    c.paint(whole, columns(0, 2), car, grey, obj=c.new_object(car))  # hidden by the next car: gets no id
    c.paint(whole, columns(0, 6), car, grey, obj=c.new_object(car))
    walker = c.new_object(person)
    c.paint(whole, columns(4, 6), person, grey, obj=walker)  # in front of the car's right part
    c.paint(whole, columns(6, 8), person, grey, obj=walker)  # a second part of the same person
    c.paint(whole, columns(8, 12), car, grey, obj=c.new_object(car))
    c.paint(whole, columns(10, 11), pole, grey)  # a pole in front of the last car
    want = np.zeros((8, 12), np.int32)  # label id 0 where nothing was painted
    want[2:6] = [26000] * 4 + [24000] * 4 + [26001] * 2 + [17] + [26001]
    np.testing.assert_array_equal(c.instance_ids(), want)
    with pytest.raises(ValueError, match="label id 17 is not a class with instances"):
        c.new_object(pole)


def test_demo_scenes_number_every_person_and_car():
    params = SynthParams()  # the demo's draw, at its size
    crowded = 0
    for i in range(6):
        _, label_ids, inst = render_with_instances(params, "train", i)
        assert inst.dtype == np.int32 and inst.shape == label_ids.shape
        _assert_cityscapes_ids(inst, label_ids)
        per_class = Counter((np.unique(inst[inst >= 1000]) // 1000).tolist())
        crowded += per_class[label_id("person")] >= 2 and per_class[label_id("car")] >= 2
    assert crowded >= 3


def test_instance_files_beside_every_label_in_the_tree_and_the_zip(tree, zips):
    labels = sorted(tree.rglob("*_gtFine_labelIds.png"))
    assert len(labels) == SMALL.train + SMALL.val
    with zipfile.ZipFile(zips / LABEL_ZIP) as zf:
        members = {n for n in zf.namelist() if n.endswith("_gtFine_instanceIds.png")}
        assert len(members) == len(labels)
        for label in labels:
            path = label.with_name(label.name.replace("labelIds", "instanceIds"))
            data = path.read_bytes()
            assert data[24:26] == bytes([16, 0])  # IHDR: bit depth 16, colour type 0 (grey)
            _assert_cityscapes_ids(np.asarray(Image.open(path)).astype(np.int32), np.asarray(Image.open(label)))
            assert zf.read(path.relative_to(tree).as_posix()) == data  # the same bytes in the official zip


def test_read_instances_from_a_folder_and_a_zip_agree(tree, zips):
    a, b = CityscapesSource.open(tree), CityscapesSource.open(zips)
    assert (a.layout, b.layout) == ("tree", "zip") and a.instance_encoding == "cityscapes"
    for split in ("train", "val"):
        assert a.missing_instances(a.samples(split)) == [] == b.missing_instances(b.samples(split))
        for sa, sb in zip(a.samples(split), b.samples(split), strict=True):
            ia = a.read_instances(sa)
            assert ia.dtype == np.int32 and ia.shape == SMALL.size
            np.testing.assert_array_equal(ia, b.read_instances(sb))
            _assert_cityscapes_ids(ia, a.read_ids(sa))


def test_old_output_without_instance_files_is_written_again(tmp_path):
    """synth.json without "files" (written before instance ids existed): the tree and the zips are not reused."""
    generate(tmp_path / "tree", SMALL, workers=1, progress=False)
    made = {p: p.read_bytes() for p in (tmp_path / "tree").rglob("*_gtFine_instanceIds.png")}
    for path in made:
        path.unlink()
    record = json.loads((tmp_path / "tree" / PARAMS_FILE).read_text())
    (tmp_path / "tree" / PARAMS_FILE).write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    assert generate(tmp_path / "tree", SMALL, workers=1, progress=False) == 5
    assert {p: p.read_bytes() for p in (tmp_path / "tree").rglob("*_gtFine_instanceIds.png")} == made

    root = tmp_path / "zips"
    generate_zips(root, SMALL, workers=1, progress=False)
    with zipfile.ZipFile(root / LABEL_ZIP) as zf:
        old = {n: zf.read(n) for n in zf.namelist() if "instanceIds" not in n}
    with zipfile.ZipFile(root / LABEL_ZIP, "w") as zf:
        for name, data in old.items():
            zf.writestr(name, data)
    record = json.loads((root / PARAMS_FILE).read_text())
    (root / PARAMS_FILE).write_text(json.dumps({k: v for k, v in record.items() if k != "files"}))
    assert generate_zips(root, SMALL, workers=1, progress=False) == 5
    assert CityscapesSource.open(root).missing_instances(CityscapesSource.open(root).samples("val")) == []


# --- packing ----------------------------------------------------------------------------------------------------
def test_folders_and_zips_pack_val_instances_like_the_labels(tree, zips, tmp_path):
    a = prepare(root=tree, out=tmp_path / "a", size=PACKED, source="synthetic", workers=1, progress=False)
    b = prepare(root=zips, out=tmp_path / "b", size=PACKED, source="cityscapes", workers=2, progress=False)
    for result in (a, b):
        assert result.notes == []
        assert result.manifest["splits"]["val"]["instances"] == "cityscapes"
        assert "instances" not in result.manifest["splits"]["train"]  # training has no use for them
        assert json.loads((result.path / MANIFEST).read_text())["splits"]["val"]["instances"] == "cityscapes"
        assert not (result.path / "train" / "instances.npy").exists()
    inst = np.load(a.path / "val" / "instances.npy")
    assert inst.dtype == np.uint16 and inst.shape == (SMALL.val, *PACKED)
    np.testing.assert_array_equal(inst, np.load(b.path / "val" / "instances.npy"))
    _assert_consistent(inst, np.load(a.path / "val" / "labels.npy"))
    src = CityscapesSource.open(tree)  # row i is sample i, resized by nearest neighbour
    full = src.read_instances(src.samples("val")[1])
    np.testing.assert_array_equal(inst[1], np.asarray(Image.fromarray(full).resize(PACKED[::-1], Image.NEAREST)))

    val, train = PackedSplit(a.path / "val"), PackedSplit(a.path / "train")
    assert train.instances is None and train.instance_encoding is None
    assert val.instance_encoding == "cityscapes" and val.instances.dtype == np.uint16
    np.testing.assert_array_equal(val.instances, inst)
    # at the raw size: the arrays are the files themselves
    c = prepare(root=tree, out=tmp_path / "c", size=SMALL.size, source="synthetic", workers=1, progress=False)
    np.testing.assert_array_equal(np.load(c.path / "val" / "instances.npy")[1], full)


def test_missing_instance_files_pack_without_them_and_say_so(tree, tmp_path, capsys):
    root = Path(shutil.copytree(tree, tmp_path / "raw"))
    removed = sorted(root.rglob("*_gtFine_instanceIds.png"))
    kept = {p: p.read_bytes() for p in removed}
    for path in removed:
        path.unlink()
    out = tmp_path / "packed"
    result = prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False)
    first = sorted(p for p in removed if "/val/" in p.as_posix())[0]
    assert result.notes == [f"{first}: no such file (3 of 3 missing); split 'val' is packed without instance ids, "
                            "so its instance-level scores (iIoU) will be blank"]  # fmt: skip
    assert "instances" not in result.manifest["splits"]["val"] and not (out / "val" / "instances.npy").exists()
    assert PackedSplit(out / "val").instances is None
    assert main(["prepare", "--source", "cityscapes", "--root", str(root), "--out", str(tmp_path / "cli"),
                 "--size", *map(str, PACKED), "--workers", "1", "--quiet"]) == 0  # fmt: skip
    warnings = [line for line in capsys.readouterr().err.splitlines() if "instance" in line]
    assert warnings == [f"prepare: warning: {result.notes[0]}"]

    for path, data in kept.items():  # the files arrive: the instance ids are packed
        path.write_bytes(data)
    again = prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False)
    assert not again.skipped and again.notes == [] and again.manifest["splits"]["val"]["instances"] == "cityscapes"
    _assert_consistent(PackedSplit(out / "val").instances, PackedSplit(out / "val").labels)
    assert prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False).skipped
    src = CityscapesSource.open(root)  # a file changes: packed again
    sample = src.samples("val")[0]
    changed = np.where(src.read_instances(sample) >= 1000, 26999, src.read_ids(sample).astype(np.int32))
    first.write_bytes(_png(changed.astype(np.uint16)))
    assert not prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False).skipped
    assert 26999 in PackedSplit(out / "val").instances[0]
    (out / "val" / "instances.npy").unlink()  # the output loses them: packed again
    assert not prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False).skipped
    assert (out / "val" / "instances.npy").is_file()
    first.unlink()  # one goes missing again: the split is packed without them
    third = prepare(root=root, out=out, size=PACKED, source="cityscapes", workers=1, progress=False)
    assert not third.skipped and third.notes[0].startswith(f"{first}: no such file; split 'val' is packed without")
    assert not (out / "val" / "instances.npy").exists()


def test_a_missing_train_file_leaves_the_val_instances(tree, tmp_path):
    root = Path(shutil.copytree(tree, tmp_path / "raw"))
    next((root / "gtFine" / "train").rglob("*_gtFine_instanceIds.png")).unlink()
    result = prepare(root=root, out=tmp_path / "packed", size=PACKED, source="synthetic", workers=1, progress=False)
    assert result.notes == [] and result.manifest["splits"]["val"]["instances"] == "cityscapes"


def test_voc_layout_packs_no_instances(tmp_path):
    generate_layout(tmp_path / "voc", "voc", SynthParams(train=2, val=1, size=(48, 64), seed=1), workers=1,
                    progress=False)  # fmt: skip
    result = prepare(root=tmp_path / "voc", out=tmp_path / "packed", size=(24, 32), source="synthetic", workers=1,
                     progress=False)  # fmt: skip
    assert result.notes == []
    assert all("instances" not in info for info in result.manifest["splits"].values())
    assert list(tmp_path.glob("packed/*/instances.npy")) == []
    assert PackedSplit(tmp_path / "packed" / "val").instances is None
    src = open_source("voc", tmp_path / "voc")
    assert src.read_instances(src.samples("val")[0]) is None


INST = "gtFine/val/bremen/bremen_000001_000019_gtFine_instanceIds.png"


@pytest.mark.parametrize("layout", ["tree", "zip"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("size mismatch", "instance ids are 32×60 but the labels"),
        ("colour", "expected a single-channel 16-bit PNG of instance ids"),
        ("damaged", "not a decodable PNG"),
        ("not cityscapes ids", "instance ids [34000, 40000] are not Cityscapes ids"),
    ],
)
def test_bad_instance_files_name_the_file(tmp_path, layout, case, message):
    files = make_files()
    if case == "size mismatch":
        files[INST] = _png(np.full((32, 60), 7, np.uint16))
    elif case == "colour":
        files[INST] = files[INST.replace("instanceIds", "color")]
    elif case == "damaged":
        files[INST] = _corrupt_body(files[INST])
    else:
        ids = np.asarray(Image.open(io.BytesIO(files[INST]))).copy()
        ids[0, 0], ids[5, 5] = 40000, 34000
        files[INST] = _png(ids)
    root = (write_tree if layout == "tree" else write_zips)(tmp_path / "cs", files)
    with pytest.raises(ValueError) as info:
        prepare(root=root, out=tmp_path / "packed", size=(16, 32), workers=1, progress=False)
    assert message in str(info.value) and INST in str(info.value)
    assert (LABEL_ZIP in str(info.value)) == (layout == "zip")
    assert not (tmp_path / "packed").exists() or list((tmp_path / "packed").iterdir()) == []


@pytest.mark.parametrize("layout", ["tree", "zip"])
def test_reading_a_missing_instance_file_names_it(tmp_path, layout):
    files = make_files()
    del files[INST]
    src = CityscapesSource.open((write_tree if layout == "tree" else write_zips)(tmp_path / "cs", files))
    sample = next(s for s in src.samples("val") if s.name == "bremen_000001_000019")
    missing = src.missing_instances(src.samples("val"))
    assert len(missing) == 1 and missing[0].endswith(INST) and (IMAGE_ZIP not in missing[0])
    with pytest.raises(FileNotFoundError, match=f"{INST}: instance ids not found"):
        src.read_instances(sample)


class _Wide:
    """A source of one's own whose instance ids need more than 16 bits."""

    layout = "memory"
    label_set = LabelSet("two", ("a", "b"))
    instance_encoding = "wide"

    def __init__(self, root: Path) -> None:
        self.root = root

    def samples(self, split: str) -> list[Sample]:
        return [Sample(f"{split}0", "img0", "lab0")]

    def stamps(self, samples: list[Sample]) -> list[str]:
        return ["1" for _ in samples]

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        return 4, 4

    def read(self, sample: Sample):
        return np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), 1, 2

    def read_label(self, sample: Sample) -> np.ndarray:
        return np.zeros((4, 4), np.uint8)

    def read_instances(self, sample: Sample) -> np.ndarray:
        return np.full((4, 4), 70000, np.int32)

    def missing_instances(self, samples: list[Sample]) -> list[str]:
        return []

    def fresh(self) -> _Wide:
        return self


def test_ids_beyond_16_bits_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
    register_source("wide", _Wide)
    with pytest.raises(ValueError, match=r"instance ids of 'val0' \(lab0\): id 70000 does not fit 16 bits"):
        prepare(root=tmp_path / "raw", out=tmp_path / "packed", size=(4, 4), source="wide", workers=1,
                progress=False)  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder


# --- the loader -------------------------------------------------------------------------------------------------
def test_packed_split_checks_its_instances(tree, tmp_path):
    out = prepare(root=tree, out=tmp_path / "packed", size=PACKED, source="synthetic", workers=1, progress=False).path
    np.save(out / "val" / "instances.npy", np.zeros((SMALL.val, *PACKED[::-1]), np.uint16))
    with pytest.raises(ValueError, match=r"instances\.npy: expected uint16 \(3, 24, 48\) to match the labels"):
        PackedSplit(out / "val")
    np.save(out / "val" / "instances.npy", np.zeros((SMALL.val, *PACKED), np.int32))
    with pytest.raises(ValueError, match=r"instances\.npy: expected uint16 .* got int32"):
        PackedSplit(out / "val")
    (out / "val" / "instances.npy").unlink()  # the manifest lists them: their absence is an error
    with pytest.raises(FileNotFoundError, match=r"val/instances\.npy not found, but .*manifest\.json lists instance"):
        PackedSplit(out / "val")
