"""The MLflow run of one training: one run per (experiment, model, seed), resumed, never duplicated.

- One ``log_batch`` call every few seconds is several times cheaper than a call per metric.
- Params are write-once (compared as strings); logging a step again adds a second point. A resumed run
  therefore skips params it already holds and metric steps it already has.

A training's run also gets its data as dataset inputs (:meth:`RunLogger.log_inputs`, each logged once however
often the run resumes) and MLflow's own system metrics (:meth:`RunLogger.monitor_system`: ``system/...`` keys).

The run id lives in ``RUN_DIR/mlflow_run_id``; later jobs log into the same run through :func:`log_to_run`.
When the tracking server cannot be reached, nothing here raises: a warning is given once and records go to
``RUN_DIR/mlflow_offline.jsonl``, which :func:`sync_offline` (``segmodels mlflow-sync``) pushes later. A local
SQLite file that is not a database or cannot be opened is no passing state: ``start()`` raises
:class:`~segmodels.tracking.store.StoreError` naming it.
MLflow is imported inside the methods.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segmodels.study.runs import OFFLINE_FILE, RUN_ID_FILE
from segmodels.tracking.offline import append_record, read_records
from segmodels.tracking.store import StoreError, client, ensure_experiment, store_fault, tracking_uri

__all__ = ["RunLogger", "log_to_run", "read_run_id", "sync_offline"]

_BATCH_METRICS = 900  # MLflow accepts at most 1000 metrics per log_batch
_BATCH_PARAMS = 100  # ... and at most 100 params
_PARAM_CHARS = 6000


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id a run folder names in ``mlflow_run_id``; None without one."""
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
        self._inputs: set[tuple[str, str, str]] = set()  # (name, digest, context) of the run's dataset inputs
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor, while it runs

    def start(self) -> RunLogger:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = read_run_id(self.run_dir)
        if not self._replay and (self.run_dir / OFFLINE_FILE).is_file():
            try:  # a previous attempt of this job ran offline: its records go first
                sync_offline(self.run_dir, self.uri)
            except StoreError:
                raise
            except Exception as exc:
                self._go_offline(exc)
                return self
        try:
            self._client = client(self.uri)
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
            self._inputs = {_input_key(i) for i in getattr(run.inputs, "dataset_inputs", None) or ()}
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
        """Stop the system metrics, send what is buffered and (unless attached) mark the run FINISHED, FAILED or
        KILLED."""
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()  # sends its last samples while the run is still RUNNING
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

    def _call(self, record: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> None:
        """``MlflowClient.{method}(run_id, ...)``, or ``record`` to the offline file when the store is (or just
        became) unreachable."""
        if not self.offline:
            try:
                getattr(self._client, method)(self.run_id, *args, **kwargs)
                return
            except Exception as exc:
                self._go_offline(exc)
        self._write_offline(record)

    def _send(self, record: dict[str, Any], **batch: Any) -> None:
        """One ``log_batch`` call (see :meth:`_call`)."""
        self._call(record, "log_batch", synchronous=True, **batch)

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
        self._call({"kind": "artifact", "path": str(path), "artifact_path": artifact_path}, "log_artifact", str(path),
                   artifact_path)  # fmt: skip

    def log_inputs(self, inputs: Iterable[Mapping[str, Any]]) -> None:
        """Log datasets as inputs of the run, each ``{"dataset": {...}, "context": "training"}`` where the dataset
        holds the fields of ``mlflow.entities.Dataset`` (name, digest, source_type, source, schema, profile; see
        :func:`segmodels.tracking.datasets.packed_inputs`). One the run holds already (same name, digest and
        context) is left out, so a resumed run adds none twice."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        todo = [{"dataset": dict(i["dataset"]), "context": str(i["context"])} for i in inputs]
        todo = [i for i in todo if _input_key(i) not in self._inputs]
        if not todo:
            return
        self._inputs.update(_input_key(i) for i in todo)
        entities = [DatasetInput(Dataset(**i["dataset"]), tags=[InputTag(MLFLOW_DATASET_CONTEXT, i["context"])])
                    for i in todo]  # fmt: skip
        self._call({"kind": "inputs", "inputs": todo}, "log_inputs", datasets=entities)

    def monitor_system(self) -> None:
        """Start MLflow's system metrics for the run until :meth:`end`: ``system/...`` keys (CPU and memory
        utilisation, disk, network, and each GPU's utilisation, memory and power where ``nvidia-ml-py`` (NVML) or
        ROCm answers), sampled every ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10) and
        continuing at the last step + 1 on a resumed run. ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns
        it off; an attached or offline logger starts nothing, and a missing ``psutil`` is warned, never raised."""
        from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING as enabled

        if self.attach or self.offline or self._monitor is not None or (enabled.is_set() and not enabled.get()):
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.uri)
        except Exception as exc:  # psutil missing, or the store failing the monitor's first read
            warnings.warn(f"MLflow system metrics are not logged ({type(exc).__name__}: {str(exc)[:300]})",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            return
        monitor.start()
        self._monitor = monitor

    def _go_offline(self, exc: BaseException) -> None:
        if self._replay:
            raise exc
        if self.offline:
            return
        self.offline = True
        # a local database that breaks while the job runs is named as such; one broken at the start raised in start()
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        what = store_fault(self.uri, exc) or f"MLflow at {self.uri} is not reachable ({reason})"
        warnings.warn(
            f"{what}; the job goes on and tracking records go to {self.run_dir / OFFLINE_FILE} (push them later: "
            f"segmodels mlflow-sync {self.run_dir})",
            RuntimeWarning,
            stacklevel=3,
        )
        self._write_offline({"kind": "start", "experiment": self.experiment, "run_id": self.run_id,
                             "run_name": self.run_name, "tags": self.tags, "attach": self.attach})  # fmt: skip

    def _write_offline(self, record: dict[str, Any]) -> None:
        append_record(self.run_dir, record)


def _input_key(item: Any) -> tuple[str, str, str]:
    """(name, digest, context) of a dataset input: an ``mlflow.entities.DatasetInput`` or a
    :meth:`RunLogger.log_inputs` item."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if isinstance(item, Mapping):
        return item["dataset"]["name"], item["dataset"]["digest"], item["context"]
    context = next((t.value for t in item.tags if t.key == MLFLOW_DATASET_CONTEXT), "")
    return item.dataset.name, item.dataset.digest, context


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
    records = read_records(path)
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
        elif kind == "inputs":
            logger.log_inputs(rec["inputs"])
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
    artifact_path: str | None = None,
) -> None:
    """Add to the training run whose id is in ``run_dir/mlflow_run_id`` (evaluation, benchmark).

    Warns and does nothing when the folder names no run; never raises for tracking trouble
    (records go to the offline file then). Pass ``uri=tracking_uri(cfg.tracking.uri)``; None means
    ``$MLFLOW_TRACKING_URI`` or the default. Metrics without a ``step`` go to step 0; ``artifacts`` go to the
    run's ``artifact_path`` folder (default: its top).
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
        logger.log_artifact(artifact, artifact_path)
    logger.end()
