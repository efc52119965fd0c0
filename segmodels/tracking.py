"""MLflow tracking: one run per (experiment, model, seed), resumed, never duplicated.

Facts this module is built around (measured on a 2-core machine with a SQLite store):

- A fresh SQLite file opened by several jobs at once breaks in the schema migrations, and a
  job that loses the experiment-creation race can land its run in "Default". So the database
  and the experiment are created once, under an ``fcntl.flock`` on a file beside the database,
  and runs are created with an explicit ``experiment_id``.
- One ``log_batch`` call every few seconds is several times cheaper than a call per metric.
- Params are write-once (compared as strings); logging a step again adds a second point. A
  resumed run therefore skips params it already holds and metric steps it already has.

The run id lives in ``RUN_DIR/mlflow_run_id``; later jobs log into the same run through
:func:`log_to_run`. When the tracking server cannot be reached, nothing here raises: a
warning is given once and records go to ``RUN_DIR/mlflow_offline.jsonl``, which
:func:`sync_offline` (``segmodels mlflow-sync``) pushes later. The module imports MLflow
lazily, so importing it is cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_URI",
    "HTTP_DEFAULTS",
    "OFFLINE_FILE",
    "RUN_ID_FILE",
    "RunLogger",
    "artifact_root",
    "ensure_experiment",
    "git_commit",
    "log_to_run",
    "read_run_id",
    "sync_offline",
    "tracking_uri",
]

DEFAULT_URI = "sqlite:///results/mlflow.db"
RUN_ID_FILE = "mlflow_run_id"
OFFLINE_FILE = "mlflow_offline.jsonl"
_BATCH_METRICS = 900  # MLflow accepts at most 1000 metrics per log_batch
_BATCH_PARAMS = 100  # ... and at most 100 params
_PARAM_CHARS = 6000


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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """An exclusive lock beside a SQLite store (``mlflow.db.lock``); nothing for a server."""
    db = _sqlite_path(uri)
    return contextlib.nullcontext() if db is None else _locked(db.with_name(db.name + ".lock"))


def _ready_mark(db: Path) -> str:
    import mlflow

    return f"ready {db.stat().st_ino} mlflow {mlflow.__version__}"


def _schema_ready(db: Path) -> bool:
    """The lock file names the database (inode) and MLflow version whose schema a client completed."""
    try:
        return db.with_name(db.name + ".lock").read_text().strip() == _ready_mark(db)
    except OSError:
        return False


# MLflow retries a failed HTTP request 7 times with doubling waits, about 4 minutes, and lets one request take
# 120 s: a job whose server is down would stall that long before going offline. These bounds (a few seconds
# for a refused connection, at most ~90 s for a host that drops packets) apply unless the environment sets them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _client(uri: str) -> Any:
    """A client whose store is open; a fresh SQLite file gets its schema here, one process at a time."""
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
    db = _sqlite_path(uri)
    if db is None or _schema_ready(db):
        return MlflowClient(tracking_uri=uri)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)  # opens the store: creates or migrates the schema
        client.search_experiments(max_results=1)
        db.with_name(db.name + ".lock").write_text(_ready_mark(db) + "\n")
    return client


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing; safe when many jobs call it at once.

    ``uri`` is used as given; None means :func:`tracking_uri` ``()``. The same holds for every
    ``uri`` argument below: resolve a study's ``tracking.uri`` with :func:`tracking_uri` first.
    """
    uri = uri or tracking_uri()
    client = _client(uri)
    with _store_lock(uri):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        root = artifact_root(uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}" if root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            # Another client of a server won the race; the experiment exists now.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


def git_commit(path: str | Path | None = None) -> str:
    """The commit checked out at ``path`` (default: this package's folder), ``+dirty`` if modified; or unknown."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
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


def read_run_id(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _write_run_id(run_dir: Path, run_id: str) -> None:
    from segmodels.atomic import write_text_atomic

    write_text_atomic(run_dir / RUN_ID_FILE, run_id + "\n")


class RunLogger:
    """The MLflow run of one training (or, with ``attach=True``, an existing run a later job adds to).

    ``start()`` continues the run named in ``run_dir/mlflow_run_id`` or creates one in
    ``experiment`` and writes that file. Metrics are buffered and sent with one ``log_batch``
    when ``flush_seconds`` have passed, at ``flush()`` and at ``end()``. A point at a step not
    above the last step the run holds for that key is dropped, so a resumed training continues
    at last step + 1. Any tracking failure switches the logger to offline mode for the rest of
    the job: records then go to ``run_dir/mlflow_offline.jsonl``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        experiment: str | None = None,
        uri: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_seconds: float = 30.0,
        attach: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.experiment, self.run_name, self.attach = experiment, run_name, attach
        self.uri = uri or tracking_uri()
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.flush_seconds = flush_seconds
        self.run_id: str | None = None
        self.offline = False
        self._replay = False  # pushing an offline file: failures raise instead of going offline
        self._client: Any = None
        self._params: dict[str, str] = {}
        self._floor: dict[str, int] = {}
        self._buffer: list[tuple[str, float, int, int]] = []
        self._last_flush = time.monotonic()
        self._warned_conflict = False

    def start(self) -> RunLogger:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = read_run_id(self.run_dir)
        if not self._replay and (self.run_dir / OFFLINE_FILE).is_file():
            try:  # a previous attempt of this job ran offline: its records go first
                sync_offline(self.run_dir, self.uri)
            except Exception as exc:
                self._go_offline(exc)
                return self
        try:
            self._client = _client(self.uri)
            self.run_id = read_run_id(self.run_dir)
            run = self._existing_run()
            if run is None:
                if self.attach or not self.experiment:
                    raise ValueError(f"{self.run_dir / RUN_ID_FILE}: no MLflow run to log into")
                exp_id = ensure_experiment(self.experiment, self.uri)
                run = self._client.create_run(exp_id, run_name=self.run_name, tags=self.tags)
                self.run_id = run.info.run_id
                _write_run_id(self.run_dir, self.run_id)
            elif not self.attach:
                if not self._replay:
                    self._client.update_run(self.run_id, status="RUNNING")
                self._floor = {k: self._last_step(k) for k in run.data.metrics}
                if self.tags:
                    self.set_tags(self.tags)
            self._params = dict(run.data.params)
        except ValueError:
            raise
        except Exception as exc:
            self._go_offline(exc)
        return self

    def _existing_run(self) -> Any:
        if self.run_id is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(self.run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            warnings.warn(f"{self.run_dir / RUN_ID_FILE}: run {self.run_id} is not in {self.uri}; starting a new run",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            return None
        if run.info.lifecycle_stage == "deleted":
            self._client.restore_run(self.run_id)
        return run

    def _last_step(self, key: str) -> int:
        return max((m.step for m in self._client.get_metric_history(self.run_id, key)), default=-1)

    def end(self, status: str = "FINISHED") -> None:
        """Send what is buffered and (unless attached) mark the run FINISHED, FAILED or KILLED."""
        self.flush()
        if self.attach:
            return
        if not self.offline:
            try:
                self._client.set_terminated(self.run_id, status=status)
                return
            except Exception as exc:
                self._go_offline(exc)
        self._write_offline({"kind": "end", "status": status})

    def __enter__(self) -> RunLogger:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def _send(self, record: dict[str, Any], **batch: Any) -> None:
        """One ``log_batch`` call, or the offline file when the store is (or just became) unreachable."""
        if not self.offline:
            try:
                self._client.log_batch(self.run_id, synchronous=True, **batch)
                return
            except Exception as exc:
                self._go_offline(exc)
        self._write_offline(record)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params the run does not hold yet; a held param with another value is kept, with a warning."""
        from mlflow.entities import Param

        new = {k: str(v)[:_PARAM_CHARS] for k, v in params.items()}
        conflicts = sorted(k for k, v in new.items() if k in self._params and self._params[k] != v)
        if conflicts and not self._warned_conflict:
            self._warned_conflict = True
            shown = ", ".join(f"{k} ({self._params[k]!r} -> {new[k]!r})" for k in conflicts[:10])
            warnings.warn(f"MLflow params are write-once; keeping the logged values of {shown}", stacklevel=2)
        todo = [(k, v) for k, v in new.items() if k not in self._params]
        for i in range(0, len(todo), _BATCH_PARAMS):
            chunk = dict(todo[i : i + _BATCH_PARAMS])
            self._send({"kind": "params", "params": chunk}, params=[Param(k, v) for k, v in chunk.items()])
        self._params.update(todo)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = {k: str(v) for k, v in tags.items()}
        self._send({"kind": "tags", "tags": tags}, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int, *, timestamp: int | None = None) -> None:
        """Buffer one point per key at ``step``; sent when ``flush_seconds`` have passed."""
        stamp = int(time.time() * 1000) if timestamp is None else int(timestamp)
        for key, value in metrics.items():
            if step > self._floor.get(key, -1):
                self._buffer.append((key, float(value), stamp, int(step)))
                self._floor[key] = int(step)
        if len(self._buffer) >= _BATCH_METRICS or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        from mlflow.entities import Metric

        self._last_flush = time.monotonic()
        points, self._buffer = self._buffer, []
        for i in range(0, len(points), _BATCH_METRICS):
            chunk = points[i : i + _BATCH_METRICS]
            self._send({"kind": "metrics", "points": [list(p) for p in chunk]}, metrics=[Metric(*p) for p in chunk])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path).resolve()
        if not path.is_file():
            warnings.warn(f"artifact {path} does not exist; not logged", RuntimeWarning, stacklevel=2)
            return
        if not self.offline:
            try:
                self._client.log_artifact(self.run_id, str(path), artifact_path)
                return
            except Exception as exc:
                self._go_offline(exc)
        self._write_offline({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def _go_offline(self, exc: BaseException) -> None:
        if self._replay:
            raise exc
        if self.offline:
            return
        self.offline = True
        warnings.warn(
            f"MLflow at {self.uri} is not reachable ({type(exc).__name__}: {str(exc)[:300]}); the job goes on and "
            f"tracking records go to {self.run_dir / OFFLINE_FILE} (push them later: segmodels mlflow-sync "
            f"{self.run_dir})",
            RuntimeWarning,
            stacklevel=3,
        )
        self._write_offline({"kind": "start", "experiment": self.experiment, "run_id": self.run_id,
                             "run_name": self.run_name, "tags": self.tags, "attach": self.attach})  # fmt: skip

    def _write_offline(self, record: dict[str, Any]) -> None:
        path = self.run_dir / OFFLINE_FILE
        line = json.dumps(record, default=str) + "\n"
        with _locked(path.with_name(path.name + ".lock")), path.open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _read_offline(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a job killed mid-write leaves at most a torn last line
                warnings.warn(f"{path}:{number}: skipping an unreadable line", RuntimeWarning, stacklevel=3)
    return records


def sync_offline(run_dir: str | Path, uri: str | None = None) -> str | None:
    """Push ``run_dir/mlflow_offline.jsonl`` into the tracking store, then remove it; returns the run id.

    Creates the run (and ``mlflow_run_id``) when the job never reached the store. Points at a step
    the run already holds for that key are skipped, so pushing twice adds nothing. Raises when the
    store cannot be reached (the file is kept).
    """
    run_dir = Path(run_dir)
    path = run_dir / OFFLINE_FILE
    if not path.is_file():
        return read_run_id(run_dir)
    records = _read_offline(path)
    starts = [r for r in records if r.get("kind") == "start"]
    head = next((r for r in starts if not r.get("attach")), {})
    logger = RunLogger(run_dir, experiment=head.get("experiment"), uri=uri, run_name=head.get("run_name"),
                       tags=head.get("tags"), flush_seconds=math.inf)  # fmt: skip
    logger._replay = True
    logger.start()
    status = None
    for rec in records:
        kind = rec.get("kind")
        if kind == "params":
            logger.log_params(rec["params"])
        elif kind == "tags":
            logger.set_tags(rec["tags"])
        elif kind == "metrics":
            for key, value, stamp, step in rec["points"]:
                logger.log_metrics({key: value}, step, timestamp=stamp)
        elif kind == "artifact":
            logger.log_artifact(rec["path"], rec.get("artifact_path"))
        elif kind == "end":
            status = rec["status"]
    if status is None:
        logger.flush()
    else:
        logger.end(status)
    path.unlink()
    return logger.run_id


def log_to_run(
    run_dir: str | Path,
    *,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    artifacts: Iterable[str | Path] = (),
    step: int | None = None,
    uri: str | None = None,
) -> None:
    """Add to the training run whose id is in ``run_dir/mlflow_run_id`` (evaluation, benchmark).

    Warns and does nothing when the folder names no run; never raises for tracking trouble
    (records go to the offline file then). Pass ``uri=tracking_uri(cfg.tracking.uri)``; None means
    ``$MLFLOW_TRACKING_URI`` or the default. Metrics without a ``step`` go to step 0.
    """
    run_dir = Path(run_dir)
    if read_run_id(run_dir) is None and not (run_dir / OFFLINE_FILE).is_file():
        warnings.warn(f"{run_dir}: no {RUN_ID_FILE}; nothing logged to MLflow", RuntimeWarning, stacklevel=2)
        return
    logger = RunLogger(run_dir, uri=uri, attach=True)
    try:
        logger.start()
    except ValueError as exc:
        warnings.warn(f"{exc}; nothing logged to MLflow", RuntimeWarning, stacklevel=2)
        return
    if params:
        logger.log_params(params)
    if tags:
        logger.set_tags(tags)
    if metrics:
        logger.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step or 0)
    for artifact in artifacts:
        logger.log_artifact(artifact)
    logger.end()
