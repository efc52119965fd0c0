"""A full disk: one clear error naming the file and the space left, the previous file intact, no traceback."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple

import pytest

from segmodels import atomic
from segmodels.atomic import DiskFullError, write_atomic, write_bytes_atomic
from segmodels.cli import main

_Usage = namedtuple("_Usage", "total used free")


def _temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def fsync_fails(monkeypatch):
    """Every fsync reports ENOSPC (as delayed allocation does), and the filesystem has 12 MiB left."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: _Usage(2**30, 2**30 - 12 * 2**20, 12 * 2**20))


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs, where mounting is allowed (root, outside restrictive containers)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _fill(folder):
    """Use up the free space of ``folder``'s filesystem."""
    with (folder / "filler").open("wb", buffering=0) as fh, pytest.raises(OSError) as raised:
        while True:
            fh.write(b"\0" * 4096)
    assert raised.value.errno == errno.ENOSPC


def test_simulated_full_disk_names_the_file_and_the_free_space(tmp_path, fsync_fails):
    target = tmp_path / "sub" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(DiskFullError) as raised:
        write_bytes_atomic(target, b"new contents")
    err = raised.value
    assert err.errno == errno.ENOSPC and err.filename == str(target) and isinstance(err, OSError)
    assert str(err) == f"No space left on device writing {target} (12.0 MiB free on its filesystem)"
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    assert target.read_text() == "old" and not _temp_files(target.parent)


def test_quota_and_other_errors(tmp_path, monkeypatch):
    def over_quota(fh):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskFullError, match=r"writing .*q\.bin \(\d+\.\d (B|KiB|MiB|GiB|TiB) free") as raised:
        write_atomic(tmp_path / "q.bin", over_quota)
    assert raised.value.errno == errno.EDQUOT

    def denied(fh):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError) as raised:  # not a disk-full error: passed on as it is
        write_atomic(tmp_path / "p.bin", denied)
    assert not isinstance(raised.value, DiskFullError)
    assert not _temp_files(tmp_path) and not (tmp_path / "q.bin").exists()


def test_cli_prints_one_line_and_fails(tmp_path, fsync_fails, capsys):
    target = tmp_path / "schema.yaml"
    target.write_text("previous\n")
    assert main(["schema", "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"segmodels schema: error: No space left on device writing {target} (12.0 MiB free")
    assert target.read_text() == "previous\n" and not _temp_files(tmp_path)


def test_cli_prints_any_os_error_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["schema", "--out", str(tmp_path / "file" / "schema.yaml")]) == 1  # a file where a folder should be
    err = capsys.readouterr().err
    assert err.startswith("segmodels schema: error: ") and err.count("\n") == 1 and "file" in err


def test_real_full_filesystem(tiny_fs, capsys):
    target = tiny_fs / "result.bin"
    target.write_bytes(b"previous")
    _fill(tiny_fs)
    with pytest.raises(DiskFullError, match=rf"No space left on device writing {target} \(\d+\.\d (B|KiB) free"):
        write_bytes_atomic(target, b"x" * 100_000)
    assert target.read_bytes() == b"previous" and not _temp_files(tiny_fs)

    assert main(["schema", "--out", str(tiny_fs / "schema.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(tiny_fs / "schema.yaml") in err


def test_real_full_filesystem_under_torch_save(tiny_fs):
    # torch.save re-raises the write's ENOSPC as a RuntimeError; the error must still say what happened.
    torch = pytest.importorskip("torch")
    from segmodels.engine.checkpoint import save_atomic

    target = tiny_fs / "last.pt"
    save_atomic({"iteration": 1}, target)
    _fill(tiny_fs)
    with pytest.raises(DiskFullError, match="No space left on device writing .*last.pt") as raised:
        save_atomic({"iteration": 2, "weights": torch.zeros(100_000)}, target)
    assert raised.value.errno == errno.ENOSPC
    assert torch.load(target, weights_only=True) == {"iteration": 1} and not _temp_files(tiny_fs)


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory):
    """A generated dataset of 3 images, written before any test makes the disk full."""
    from segmodels.data.synthetic import SynthParams, generate

    root = tmp_path_factory.mktemp("raw")
    generate(root, SynthParams(train=2, val=1, size=(32, 64), seed=2, color=False), workers=1, progress=False)
    return root


def test_prepare_on_a_full_disk_names_the_output_and_the_free_space(small_raw, tmp_path, fsync_fails, capsys):
    from segmodels.data.pack import prepare

    out = tmp_path / "packed"
    with pytest.raises(DiskFullError) as raised:
        prepare(root=small_raw, out=out, size=(16, 32), source="synthetic", workers=1, progress=False)
    assert str(raised.value) == f"No space left on device writing {out} (12.0 MiB free on its filesystem)"
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out)
    assert list(tmp_path.iterdir()) == []  # no half-packed folder left beside it
    args = ["prepare", "--source", "synthetic", "--root", str(small_raw), "--out", str(out), "--size", "16", "32",
            "--workers", "1", "--quiet"]  # fmt: skip
    assert main(args) == 1
    assert capsys.readouterr().err == f"segmodels prepare: error: {raised.value}\n"


def test_prepare_on_a_real_full_filesystem(small_raw, tiny_fs, capsys):
    out = tiny_fs / "packed"
    _fill(tiny_fs)
    args = ["prepare", "--source", "synthetic", "--root", str(small_raw), "--out", str(out), "--size", "16", "32",
            "--workers", "1", "--quiet"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"segmodels prepare: error: No space left on device writing {out} (")
    assert err.count("\n") == 1 and "free on its filesystem)" in err
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]


def _previous_export(out):
    """Stand-ins for an earlier export's three files; returns their contents."""
    from segmodels.engine.export import record_path
    from segmodels.engine.quantize import int8_path

    files = {out: b"earlier fp32 graph", int8_path(out): b"earlier int8 graph", record_path(out): b'{"earlier": 1}\n'}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def _export_args(out, packed_data):
    return ["export", "--model", "mobilenetv2-fcn", "--size", "32", "32", "--out", str(out), "--int8",
            "--calibration", "1", "--data", str(packed_data), "--no-verify"]  # fmt: skip


def test_export_on_a_full_disk_keeps_the_previous_export(tmp_path, packed_data, fsync_fails, capsys):
    out = tmp_path / "model.onnx"
    before = _previous_export(out)
    assert main(_export_args(out, packed_data)) == 1
    err = capsys.readouterr().err
    assert err == f"segmodels export: error: No space left on device writing {out} (12.0 MiB free on its filesystem)\n"
    assert {path: path.read_bytes() for path in before} == before and sorted(tmp_path.iterdir()) == sorted(before)


def test_int8_write_on_a_full_disk_keeps_the_previous_export(tmp_path, packed_data, monkeypatch, capsys):
    from onnxruntime import quantization

    from segmodels.engine.quantize import int8_path

    def disk_fills_up(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as fh:
            fh.write(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(quantization, "quantize_static", disk_fills_up)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: _Usage(2**30, 2**30 - 2**20, 2**20))
    out = tmp_path / "model.onnx"
    before = _previous_export(out)
    assert main(_export_args(out, packed_data)) == 1
    err = capsys.readouterr().err
    assert err == (f"segmodels export: error: No space left on device writing {int8_path(out)} "
                   "(1.0 MiB free on its filesystem)\n")  # fmt: skip
    assert {path: path.read_bytes() for path in before} == before and sorted(tmp_path.iterdir()) == sorted(before)
