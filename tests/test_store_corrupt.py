"""A local MLflow database file that is not one is named, with where to move it, before a job does any work; a server
that is down still sends a job offline (tests/test_tracking.py)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from segmodels.study.runs import OFFLINE_FILE
from segmodels.tracking import RunLogger, StoreError, check_store, ensure_experiment, log_to_run


def _garbage(path: Path, head: bytes = b"") -> str:
    """``path`` filled with random bytes after ``head``; its tracking URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + random.Random(0).randbytes(8192))
    return f"sqlite:///{path}"


def _corrupt(db: Path, why: str) -> str:
    return rf"^MLflow database {re.escape(str(db))} {why}: move it aside \(mv {re.escape(f'{db} {db}.bad')}\)"


def test_a_file_of_garbage_is_named_corrupt_not_unreachable(tmp_path):
    db = tmp_path / "results" / "mlflow.db"
    uri = _garbage(db)
    message = _corrupt(db, r"is corrupt \(not an SQLite database\)")
    with pytest.raises(StoreError, match=message):
        check_store(uri)
    with pytest.raises(StoreError, match=message):
        ensure_experiment("study", uri)  # segmodels mlflow-init, the workflow's first job
    with pytest.raises(StoreError, match=message):
        RunLogger(tmp_path / "run", experiment="study", uri=uri, run_name="m-seed0").start()
    assert not (tmp_path / "run" / OFFLINE_FILE).exists()  # not taken for a server that is down
    (tmp_path / "run" / "mlflow_run_id").write_text("0" * 32 + "\n")
    with pytest.warns(RuntimeWarning, match=message.removeprefix("^")):
        log_to_run(tmp_path / "run", metrics={"miou": 0.5}, uri=uri)  # a later job's logging names it too


def test_a_damaged_database_and_a_folder_in_its_place_are_named(tmp_path):
    db = tmp_path / "damaged" / "mlflow.db"
    uri = _garbage(db, head=b"SQLite format 3\x00")  # the header of a database, nothing of one after it
    check_store(uri)  # the header alone passes the cheap check; opening it does not
    with pytest.raises(StoreError, match=_corrupt(db, r"is corrupt or cannot be opened \(file is not a database\)")):
        ensure_experiment("study", uri)
    folder = tmp_path / "folder" / "mlflow.db"
    folder.mkdir(parents=True)
    with pytest.raises(StoreError, match=_corrupt(folder, r"cannot be opened \(Is a directory\)")):
        check_store(f"sqlite:///{folder}")
    check_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # a file yet to be made is fine
    check_store("http://127.0.0.1:9")  # a server's state is not checked here


def test_training_with_a_corrupt_database_fails_before_it_builds_the_model(tmp_path, packed_data, monkeypatch, capsys):
    from conftest import small_config, write_config

    from segmodels.cli import main

    db = tmp_path / "results" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _garbage(db))
    # Weights that do not exist: building the model would fail first, were the store checked after it.
    cfg = small_config(model={"pretrained": str(tmp_path / "missing.pth")})
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "results" / "study" / "mobilenetv2-fcn" / "seed0"
    args = ["train", "--config", str(config), "--model", "mobilenetv2-fcn", "--out", str(out), "--data",
            str(packed_data)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.match(_corrupt(db, r"is corrupt \(not an SQLite database\)").replace("^", "^segmodels train: error: "),
                    err) and err.count("\n") == 1, err  # fmt: skip
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]  # no run folder, no offline records
