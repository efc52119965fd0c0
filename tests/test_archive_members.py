"""Archive members outside the official layout (absolute paths, paths through '..' or '.') are never read as
data; prepare says how many it skipped, and which."""

from __future__ import annotations

import zipfile

import pytest
from test_data_cityscapes import make_files, write_zips

from segmodels.cli import main
from segmodels.data.pack import prepare
from segmodels.data.sources.cityscapes import IMAGE_ZIP, LABEL_ZIP, CityscapesSource, ZipStore, outside_layout

IMAGE = "leftImg8bit/{split}/aachen/aachen_000000_000019_leftImg8bit.png"
LABEL = "gtFine/{split}/aachen/aachen_000000_000019_gtFine_labelIds.png"
STRAY = {  # member → the official member whose bytes it carries
    "leftImg8bit/train/../evil_000000_000019_leftImg8bit.png": IMAGE.format(split="train"),
    "gtFine/train/../evil_000000_000019_gtFine_labelIds.png": LABEL.format(split="train"),
    "/leftImg8bit/train/aachen/abs_000000_000019_leftImg8bit.png": IMAGE.format(split="train"),
    "leftImg8bit/val/./dot_000000_000019_leftImg8bit.png": IMAGE.format(split="val"),
    "gtFine/val/./dot_000000_000019_gtFine_labelIds.png": LABEL.format(split="val"),
}


@pytest.fixture
def zips(tmp_path):
    files = make_files(size=(16, 32))
    root = write_zips(tmp_path / "cityscapes", files)
    for archive, top in ((IMAGE_ZIP, "leftImg8bit"), (LABEL_ZIP, "gtFine")):
        with zipfile.ZipFile(root / archive, "a") as zf:
            for member, official in STRAY.items():
                if member.lstrip("/").startswith(top):
                    zf.writestr(member, files[official])
    return root


def test_the_rule():
    for name in ("a/../b.png", "/a/b.png", "C:/a/b.png", "a/./b.png", "a//b.png", "..\\a\\b.png"):
        assert outside_layout(name), name
    for name in ("leftImg8bit/train/aachen/x_leftImg8bit.png", "README", "leftImg8bit/", "a/..b/c..png"):
        assert not outside_layout(name), name


def test_members_outside_the_layout_are_skipped_and_named(zips, tmp_path, capsys):
    source = CityscapesSource.open(zips)
    names = [s.name for split in ("train", "val") for s in source.samples(split)]
    assert len(names) == 8 and not any(n.startswith(("evil", "abs", "dot")) for n in names)
    with pytest.raises(ValueError, match=r"\.\./evil.*outside the archive's layout"):
        ZipStore(zips / IMAGE_ZIP).read("leftImg8bit/train/../evil_000000_000019_leftImg8bit.png")

    result = prepare(root=zips, out=tmp_path / "packed", size=(16, 32), workers=1, progress=False)
    packed = [n for info in result.manifest["splits"].values() for n in info["names"]]
    assert sorted(packed) == sorted(names)
    assert result.notes == [
        f"skipped 3 member(s) of {zips / IMAGE_ZIP} outside the official layout (absolute, or through '..' or '.'): "
        "leftImg8bit/train/../evil_000000_000019_leftImg8bit.png, "
        "/leftImg8bit/train/aachen/abs_000000_000019_leftImg8bit.png, "
        "leftImg8bit/val/./dot_000000_000019_leftImg8bit.png",
        f"skipped 2 member(s) of {zips / LABEL_ZIP} outside the official layout (absolute, or through '..' or '.'): "
        "gtFine/train/../evil_000000_000019_gtFine_labelIds.png, gtFine/val/./dot_000000_000019_gtFine_labelIds.png",
    ]
    # the command line says so, packing or up to date
    args = ["prepare", "--source", "cityscapes", "--root", str(zips), "--out", str(tmp_path / "packed"),
            "--size", "16", "32", "--workers", "1", "--quiet"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "is up to date" in captured.out
    assert captured.err.count("prepare: warning: skipped 3 member(s) of") == 1
    assert captured.err.count("prepare: warning: skipped 2 member(s) of") == 1
