"""The tracking store: its URI, the SQLite schema and experiment creation under a lock, the code's commit.

A fresh SQLite file opened by several jobs at once breaks in the schema migrations, and a job that loses the
experiment-creation race can land its run in "Default". So the database and the experiment are created once,
under an ``fcntl.flock`` on a file beside the database, and runs are created with an explicit ``experiment_id``.

A server that is down is a passing state (jobs go offline and push their records later); a local SQLite file
that is not a database, or cannot be opened, is not: :func:`check_store` and :func:`client` raise
:class:`StoreError`, naming the file and where to move it, before a job starts its work.
MLflow is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from segmodels.locks import locked

__all__ = [
    "DEFAULT_URI",
    "HTTP_DEFAULTS",
    "StoreError",
    "artifact_root",
    "check_store",
    "client",
    "ensure_experiment",
    "git_commit",
    "store_fault",
    "tracking_uri",
]

DEFAULT_URI = "sqlite:///results/mlflow.db"

# MLflow retries a failed HTTP request 7 times with doubling waits, about 4 minutes, and lets one request take
# 120 s: a job whose server is down would stall that long before going offline. These bounds (a few seconds
# for a refused connection, at most ~90 s for a host that drops packets) apply unless the environment sets them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def tracking_uri(configured: str | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else the config's ``tracking.uri``, else ``sqlite:///results/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def artifact_root(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database (absolute file URI); None for servers, which choose."""
    db = _sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None


_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file (an empty file is new)
# SQLite's words for a database file it cannot use; "database is locked" is not one: that passes.
_UNUSABLE = ("file is not a database", "database disk image is malformed", "unable to open database file")


class StoreError(ValueError):
    """A local tracking database that cannot be used; the message names the file and what to do."""


def _move_aside(db: Path, what: str) -> str:
    return (f"MLflow database {db} {what}: move it aside (mv {db} {db}.bad) and run again, which starts a new, empty "
            f"database there (the runs it held are not in it), or point MLFLOW_TRACKING_URI at another store")


def check_store(uri: str) -> None:
    """StoreError when ``uri`` is a local SQLite database whose file is there but is not an SQLite database, or
    cannot be read; nothing for a server, or for a file yet to be made (the first job makes it)."""
    db = _sqlite_path(uri)
    if db is None or not os.path.lexists(db):
        return
    try:
        with db.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(_move_aside(db, f"cannot be opened ({exc.strerror or exc})")) from exc
    if head and head != _SQLITE_HEADER:
        raise StoreError(_move_aside(db, "is corrupt (not an SQLite database)"))


def store_fault(uri: str, exc: BaseException) -> str | None:
    """The message for ``exc`` when it says that ``uri``'s local SQLite file is unusable (not a database, damaged,
    not openable); None for anything else (a server's trouble, a busy database)."""
    db = _sqlite_path(uri)
    text = f"{exc} {exc.__cause__ or ''}"
    if db is None or not any(words in text for words in _UNUSABLE):
        return None
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps sqlite3's own error
    first = next((line for line in str(cause).splitlines() if line.strip()), type(exc).__name__)
    return _move_aside(db, f"is corrupt or cannot be opened ({first.strip()[:200]})")


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """An exclusive lock beside a SQLite store (``mlflow.db.lock``); nothing for a server."""
    db = _sqlite_path(uri)
    return contextlib.nullcontext() if db is None else locked(db.with_name(db.name + ".lock"))


def _ready_mark(db: Path) -> str:
    import mlflow

    return f"ready {db.stat().st_ino} mlflow {mlflow.__version__}"


def _schema_ready(db: Path) -> bool:
    """The lock file names the database (inode) and MLflow version whose schema a client completed."""
    try:
        return db.with_name(db.name + ".lock").read_text().strip() == _ready_mark(db)
    except OSError:
        return False


def client(uri: str) -> Any:
    """A client whose store is open; a fresh SQLite file gets its schema here, one process at a time."""
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    db = _sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    check_store(uri)
    try:
        if _schema_ready(db):
            return MlflowClient(tracking_uri=uri)
        with _store_lock(uri):
            opened = MlflowClient(tracking_uri=uri)  # opens the store: creates or migrates the schema
            opened.search_experiments(max_results=1)
            db.with_name(db.name + ".lock").write_text(_ready_mark(db) + "\n")
        return opened
    except Exception as exc:
        if (message := store_fault(uri, exc)) is not None:
            raise StoreError(message) from exc
        raise


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing; safe when many jobs call it at once.

    ``uri`` is used as given; None means :func:`tracking_uri` ``()``. The same holds for every
    ``uri`` argument of this package: resolve a study's ``tracking.uri`` with :func:`tracking_uri` first.
    """
    uri = uri or tracking_uri()
    store = client(uri)
    with _store_lock(uri):
        exp = store.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                store.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        root = artifact_root(uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}" if root else None
        try:
            return store.create_experiment(name, artifact_location=location)
        except Exception:
            # Another client of a server won the race; the experiment exists now.
            exp = store.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


def git_commit(path: str | Path | None = None) -> str:
    """The commit checked out at ``path`` (default: the segmodels package folder), ``+dirty`` if modified; or unknown."""
    cwd = Path(path) if path else Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit
