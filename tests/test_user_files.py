"""A person's own files are never removed or replaced: output folders that are not a command's own, outputs
that are the command's own input, output paths that name a folder of the wrong kind."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from segmodels.cli import main
from segmodels.data import sources
from segmodels.data.labelset import LabelSet
from segmodels.data.pack import MANIFEST, prepare
from segmodels.data.sources import Sample, register_source
from segmodels.data.sources.cityscapes import IMAGE_ZIP, LABEL_ZIP
from segmodels.data.synthetic import SynthParams, generate, generate_zips
from segmodels.folders import check_apart, check_replaceable, foreign_entries

SIZE = (16, 32)
TINY = SynthParams(train=2, val=1, size=(32, 64), seed=3, color=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw") / "synthetic"
    generate(root, TINY, workers=1, progress=False)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pack(root: Path, out: Path, **kw):
    kw.setdefault("size", SIZE)
    return prepare(root=root, out=out, source="synthetic", workers=1, progress=False, **kw)


# --- prepare ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "symlink", "around", "inside"])
def test_prepare_refuses_an_out_that_is_holds_or_lies_inside_the_root(raw, tmp_path, where):
    root = Path(shutil.copytree(raw, tmp_path / "data" / "raw"))
    before = _files(tmp_path)
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    out = {"same": root, "symlink": tmp_path / "link", "around": tmp_path / "data", "inside": root / "packed"}[where]
    relation = {"same": "is", "symlink": "is", "around": "holds", "inside": "lies inside"}[where]
    with pytest.raises(ValueError, match=f"--out {out} {relation} the raw dataset \\(--root\\) {root}"):
        _pack(root, out)
    assert _files(tmp_path) == before  # the raw data is whole, and nothing was added


def test_prepare_refuses_a_folder_of_ones_own_files_and_names_them(raw, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "README.md").write_text("my notes\n")
    (out / "data" / "table.csv").write_text("a,b\n")
    before = _files(out)
    args = ["prepare", "--source", "synthetic", "--root", str(raw), "--out", str(out), "--size", "16", "32",
            "--workers", "1", "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"segmodels prepare: error: {out} holds other data than a packed")
    assert "README.md, data/" in err and "choose another --out" in err
    assert _files(out) == before


def test_prepare_refuses_a_manifest_that_is_not_a_packs(raw, tmp_path):
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / MANIFEST).write_text(json.dumps({"format": 1, "project": "my own", "splits": ["train"]}))
    np.save(out / "train" / "images.npy", np.zeros((1, 2, 2, 3), np.uint8))
    before = _files(out)
    with pytest.raises(ValueError, match=r"not a packed dataset's\): manifest.json, train/"):
        _pack(raw, out)
    assert _files(out) == before


def test_prepare_replaces_its_own_pack_and_nothing_more(raw, tmp_path):
    out = tmp_path / "packed"
    _pack(raw, out)
    (out / "notes.txt").write_text("mine\n")
    (out / "train" / "extra.npy").write_bytes(b"mine")
    before = _files(out)
    for force in (False, True):  # refused whether or not the pack is up to date
        with pytest.raises(ValueError, match=r"holds other data than a packed dataset: notes.txt, train/extra.npy"):
            _pack(raw, out, size=(8, 16), force=force)
    assert _files(out) == before
    (out / "notes.txt").unlink()
    (out / "train" / "extra.npy").unlink()
    # Snakemake removes a job's output file (manifest.json) before it runs the job again: a pack without its
    # manifest is still a pack
    (out / MANIFEST).unlink()
    assert not _pack(raw, out, size=(8, 16)).skipped
    assert np.load(out / "val" / "images.npy").shape == (1, 8, 16, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]  # no folder moved aside is left


class _Intruder:
    """A source that, while it is read, drops a file of its own into the output folder (someone else's file)."""

    layout = "memory"
    label_set = LabelSet("two", ("a", "b"))
    out: Path

    def __init__(self, root: Path) -> None:
        self.root = root

    def samples(self, split: str) -> list[Sample]:
        return [Sample(f"{split}0", "image", "label")]

    def stamps(self, samples: list[Sample]) -> list[str]:
        return [str(self.root.stat().st_mtime_ns) for _ in samples]

    def check_headers(self, sample: Sample) -> tuple[int, int]:
        return 4, 4

    def read(self, sample: Sample):
        _Intruder.out.mkdir(exist_ok=True)
        (_Intruder.out / "arrived-while-packing.txt").write_text("mine\n")
        return np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), 0, 0

    def read_label(self, sample: Sample):
        return np.zeros((4, 4), np.uint8)

    def fresh(self) -> _Intruder:
        return self


def test_files_that_arrive_while_packing_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))
    register_source("intruder", _Intruder)
    root, out = tmp_path / "raw", tmp_path / "packed"
    root.mkdir()
    _Intruder.out = out
    with pytest.raises(ValueError, match="holds other data than a packed dataset: arrived-while-packing.txt"):
        prepare(root=root, out=out, size=(4, 4), source="intruder", workers=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["arrived-while-packing.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "raw"]  # the temporary folder is gone


def test_the_rule_itself(tmp_path):
    folder = tmp_path / "out"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "images.npy").write_bytes(b"")
    (folder / "val").symlink_to(tmp_path, target_is_directory=True)  # a pack writes no links
    layout = {"train": {"images.npy"}, "val": {"images.npy"}, "manifest.json": None}
    assert foreign_entries(folder, layout) == ["val"]
    with pytest.raises(ValueError, match=r"holds other data than x: val; refusing to replace it"):
        check_replaceable(folder, layout, ours=True, what="x")
    (folder / "val").unlink()
    check_replaceable(folder, layout, ours=True, what="x")
    check_replaceable(tmp_path / "absent", layout, ours=False, what="x")
    with pytest.raises(ValueError, match=r"holds other data than x \(why\): train/"):
        check_replaceable(folder, layout, ours=False, what="x", why="why")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_replaceable(tmp_path / "file", layout, ours=True, what="x")
    check_apart(tmp_path / "a", {"input": tmp_path / "ab"})  # a shared prefix of the names is not nesting
    with pytest.raises(ValueError, match="lies inside the input"):
        check_apart(tmp_path / "a" / "b", {"input": tmp_path / "a"})


# --- synth ------------------------------------------------------------------------------------------------
def test_synth_zip_refuses_to_replace_the_official_archives(tmp_path):
    root = tmp_path / "cityscapes"
    root.mkdir()
    for archive, member in ((IMAGE_ZIP, "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"),
                            (LABEL_ZIP, "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")):  # fmt: skip
        with zipfile.ZipFile(root / archive, "w") as zf:
            zf.writestr("README", "Cityscapes")
            zf.writestr(member, b"real data")
    before = _files(root)
    with pytest.raises(ValueError, match=f"{IMAGE_ZIP}: {root} holds other Cityscapes data \\(README\\)"):
        generate_zips(root, TINY, workers=1, progress=False)
    assert _files(root) == before
    # its own archives are replaced, with or without the synth.json that Snakemake removes before a rerun
    own = tmp_path / "own"
    generate_zips(own, TINY, workers=1, progress=False)
    (own / "synth.json").unlink()
    assert generate_zips(own, SynthParams(train=1, val=1, size=(32, 64), seed=4), workers=1, progress=False) == 2


# --- export, report, figures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from segmodels.engine.checkpoint import save_atomic
    from segmodels.models import build_model
    from segmodels.study.config import StudyConfig, config_to_dict

    model = build_model("mobilenetv2", "fcn", num_classes=19, pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_atomic({"format": 1, "model": model.state_dict(), "backbone": "mobilenetv2", "head": "fcn",
                 "num_classes": 19, "output_stride": 8, "aux": True,
                 "config": config_to_dict(StudyConfig()), "iteration": 1}, path)  # fmt: skip
    return path


def test_export_refuses_to_write_over_its_checkpoint_or_into_a_folder(checkpoint, tmp_path, capsys):
    before = checkpoint.read_bytes()
    base = ["export", "--checkpoint", str(checkpoint), "--size", "32", "32", "--no-verify"]
    assert main([*base, "--out", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert f"--out {checkpoint} is the checkpoint {checkpoint}" in err and err.count("\n") == 1
    assert checkpoint.read_bytes() == before
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 1
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main([*base, "--out", str(folder)]) == 2
    assert f"--out {folder} is a folder; give the path of the file to write" in capsys.readouterr().err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["exports"]


def test_report_and_figures_name_an_out_of_the_wrong_kind_before_any_work(tmp_path):
    from conftest import small_config

    from segmodels.report.figures import make_figures
    from segmodels.report.typeset import write_report

    cfg = small_config()
    with pytest.raises(ValueError, match=f"--out {tmp_path} is a folder"):
        write_report(cfg, tmp_path / "results", tmp_path / "figures", tmp_path)
    (tmp_path / "figures").write_text("mine\n")
    with pytest.raises(ValueError, match=f"--out {tmp_path / 'figures'} is a file"):
        make_figures(cfg, tmp_path / "results", tmp_path / "figures")
    assert (tmp_path / "figures").read_text() == "mine\n" and os.listdir(tmp_path) == ["figures"]


def test_int8_export_files_get_the_mode_of_every_other_output(tmp_path, packed_data):
    from segmodels.atomic import FILE_MODE
    from segmodels.engine.export import record_path
    from segmodels.engine.quantize import int8_path

    out = tmp_path / "model.onnx"
    assert main(["export", "--model", "mobilenetv2-fcn", "--size", "32", "32", "--out", str(out), "--int8",
                 "--calibration", "1", "--data", str(packed_data), "--no-verify"]) == 0  # fmt: skip
    modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in (out, int8_path(out), record_path(out))}
    assert modes == dict.fromkeys(["model.onnx", "model.int8.onnx", "model.export.json"], oct(FILE_MODE))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(modes)  # no temporary file left
