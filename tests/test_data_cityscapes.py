"""The raw Cityscapes layout: folders and the official zips, pairing, and every kind of bad input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmodels.data.pack import prepare
from segmodels.data.sources.cityscapes import IMAGE_ZIP, LABEL_ZIP, CityscapesSource, find_root

CITIES = ("aachen", "bremen")
VALID_IDS = np.array([0, 1, 4, 7, 8, 11, 17, 21, 23, 24, 26, 33], dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def instance_ids(label: np.ndarray) -> np.ndarray:
    """Cityscapes instance ids for a label map: on classes with instances (person, car, bicycle here) one object per
    16 columns, label id × 1000 + k; the label id elsewhere."""
    k = np.broadcast_to(np.arange(label.shape[1]) // 16, label.shape)
    return np.where(np.isin(label, (24, 26, 33)), label.astype(np.int32) * 1000 + k, label)


def make_files(seed: int = 0, size=(32, 64), splits=("train", "val")) -> dict[str, bytes]:
    """2 cities × 2 images per split: relative path → PNG bytes, as in the official archives (with the 16-bit
    ``*_gtFine_instanceIds.png``)."""
    rng = np.random.default_rng(seed)
    files = {}
    for split in splits:
        for city in CITIES:
            for k in range(2):
                name = f"{city}_{k:06d}_000019"
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                label = rng.choice(VALID_IDS, size=size)
                files[f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png"] = _png(image)
                files[f"gtFine/{split}/{city}/{name}_gtFine_labelIds.png"] = _png(label)
                files[f"gtFine/{split}/{city}/{name}_gtFine_color.png"] = _png(np.zeros((*size, 3), np.uint8))
                files[f"gtFine/{split}/{city}/{name}_gtFine_instanceIds.png"] = _png(
                    instance_ids(label).astype(np.uint16)
                )
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zips(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for archive, top in ((IMAGE_ZIP, "leftImg8bit/"), (LABEL_ZIP, "gtFine/")):
        with zipfile.ZipFile(root / archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("README", "Cityscapes")  # the official archives carry extra files too
            for rel, data in files.items():
                if rel.startswith(top):
                    zf.writestr(rel, data)
    return root


def _pack(root: Path, tmp_path: Path, **kw):
    return prepare(root=root, out=tmp_path / "packed" / "cs", size=(16, 32), workers=1, progress=False, **kw)


def test_tree_and_zips_give_the_same_pairs_and_pixels(tmp_path):
    files = make_files()
    tree = CityscapesSource.open(write_tree(tmp_path / "tree", files))
    zips = CityscapesSource.open(write_zips(tmp_path / "zips", files))
    assert tree.layout == "tree" and zips.layout == "zip"
    for split in ("train", "val"):
        a, b = tree.samples(split), zips.samples(split)
        assert [s.name for s in a] == [s.name for s in b] == sorted(s.name for s in a)
        assert len(a) == 4 and a[0].name == "aachen_000000_000019"
        for sa, sb in zip(a, b, strict=True):
            img_a, lab_a, crc_ia, crc_la = tree.read(sa)
            img_b, lab_b, crc_ib, crc_lb = zips.read(sb)
            np.testing.assert_array_equal(img_a, img_b)
            np.testing.assert_array_equal(lab_a, lab_b)
            assert (crc_ia, crc_la) == (crc_ib, crc_lb)
            assert img_a.shape == (32, 64, 3) and lab_a.shape == (32, 64)
            assert tree.check_headers(sa) == (32, 64)
    # the archive's own CRC is the fingerprint of a zip member: no decompression to tell whether it changed
    crc = int(zips.stamps(zips.samples("val"))[0].split("|")[0].split(":")[1], 16)
    assert crc == zips.read(zips.samples("val")[0])[2]


def test_mixed_layout_extracted_images_with_label_zip(tmp_path):
    files = make_files()
    root = write_tree(tmp_path / "cs", {k: v for k, v in files.items() if k.startswith("leftImg8bit/")})
    write_zips(root, {k: v for k, v in files.items() if k.startswith("gtFine/")})
    src = CityscapesSource.open(root)
    assert src.layout == "mixed" and len(src.samples("train")) == 4


def test_find_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path / "env"))
    assert find_root(str(tmp_path / "given")) == tmp_path / "given"
    assert find_root(None) == tmp_path / "env"
    monkeypatch.delenv("CITYSCAPES_DATASET")
    assert find_root(None, dataset="cityscapes") == Path("data/raw/cityscapes")


def test_missing_dataset_explains_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _pack(tmp_path / "nothing", tmp_path)
    msg = str(info.value)
    for part in ("cityscapes-dataset.com", "login", IMAGE_ZIP, LABEL_ZIP, "CITYSCAPES_DATASET", "make run",
                 str(tmp_path / "nothing")):  # fmt: skip
        assert part in msg, part
    assert not (tmp_path / "packed" / "cs").exists()


def test_half_a_dataset_names_the_missing_half(tmp_path):
    files = make_files()
    root = write_zips(tmp_path / "cs", files)
    (root / LABEL_ZIP).unlink()
    with pytest.raises(FileNotFoundError, match=f"gtFine/ or {LABEL_ZIP} missing"):
        _pack(root, tmp_path)


def _break(files: dict[str, bytes], rel: str, data: bytes | None) -> dict[str, bytes]:
    files = dict(files)
    if data is None:
        del files[rel]
    else:
        files[rel] = data
    return files


IMG = "leftImg8bit/val/bremen/bremen_000001_000019_leftImg8bit.png"
LAB = "gtFine/val/bremen/bremen_000001_000019_gtFine_labelIds.png"


def _corrupt_body(png: bytes) -> bytes:
    """Valid signature and header, damaged image data: passes the header check, fails decoding."""
    return png[:40] + bytes(len(png) - 60) + png[-20:]


@pytest.mark.parametrize("layout", ["tree", "zip"])
@pytest.mark.parametrize(
    ("case", "at_fault", "message"),
    [
        ("image without label", IMG, "image without its counterpart bremen_000001_000019_gtFine_labelIds.png"),
        ("label without image", LAB, "label without its counterpart bremen_000001_000019_leftImg8bit.png"),
        ("not a png", IMG, "not a PNG file"),
        ("damaged png", LAB, "not a decodable PNG"),
        ("size mismatch", LAB, "label is 32×60 but its image"),
        ("undefined id", LAB, "label ids [34, 200] are not Cityscapes ids"),
        ("colour label", LAB, "expected a single-channel 8-bit PNG of label ids"),
        ("empty split", "leftImg8bit/val", "empty split 'val'"),
    ],
)
def test_bad_input_names_the_file(tmp_path, layout, case, at_fault, message):
    files = make_files()
    rng = np.random.default_rng(1)
    if case == "image without label":
        files = _break(files, LAB, None)
    elif case == "label without image":
        files = _break(files, IMG, None)
    elif case == "not a png":
        files = _break(files, IMG, b"GIF89a this is not a png at all, not at all" * 3)
    elif case == "damaged png":
        files = _break(files, LAB, _corrupt_body(files[LAB]))
    elif case == "size mismatch":
        files = _break(files, LAB, _png(rng.choice(VALID_IDS, size=(32, 60))))
    elif case == "undefined id":
        bad = rng.choice(VALID_IDS, size=(32, 64))
        bad[3, 4], bad[10, 10] = 34, 200
        files = _break(files, LAB, _png(bad))
    elif case == "colour label":
        files = _break(files, LAB, files[LAB.replace("labelIds", "color")])
    elif case == "empty split":
        files = {k: v for k, v in files.items() if "/val/" not in k}
    root = (write_tree if layout == "tree" else write_zips)(tmp_path / "cs", files)
    with pytest.raises(ValueError) as info:
        _pack(root, tmp_path)
    msg = str(info.value)
    assert message in msg
    assert at_fault in msg  # the path inside the tree or the archive member
    if layout == "zip":
        assert (IMAGE_ZIP if at_fault.startswith("leftImg8bit") else LABEL_ZIP) in msg
    assert not (tmp_path / "packed" / "cs").exists()
    leftovers = list((tmp_path / "packed").iterdir()) if (tmp_path / "packed").exists() else []
    assert leftovers == []  # no temporary folder left behind either


def test_unreadable_zip_names_the_archive(tmp_path):
    root = tmp_path / "cs"
    root.mkdir()
    (root / IMAGE_ZIP).write_bytes(b"not a zip")
    (root / LABEL_ZIP).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"{IMAGE_ZIP}: not a readable zip archive"):
        _pack(root, tmp_path)
