"""The run folder: ``{results}/{experiment}/{model}/seed{seed}/`` and every file in it.

This module is the one place that names a run folder's files and lays the folder out: the file names, a
:class:`RunFolder` with one path per file, the readers and (atomic) writers of its JSON and NPY files, the
Snakemake path patterns (:func:`pattern`). It stays light (no torch, numpy or mlflow at import) so the Snakefile
and MLflow tracking can read it; a job opens its run with :func:`segmodels.engine.run.open_run`, built on it.

Who writes what:

- training: ``checkpoint.pt`` and ``train_log.csv`` (the job's declared outputs); the resume state, never
  declared (Snakemake deletes declared outputs before a job and after a failure): ``last.pt``,
  ``train_log.partial.csv``, ``mlflow_run_id`` and ``mlflow_offline.jsonl``; also ``config.yaml`` (the run's
  resolved config) and ``cost.json``;
- evaluation: ``per_class.csv``, ``confusion.npy``, ``confusion_per_image.npy``, ``statistics_per_image.npz`` (the
  other per-image statistics, :mod:`segmodels.scoring`), ``samples/`` and, last,
  ``metrics.json``;
- benchmark: ``latency.json``.

Two lock files (:mod:`segmodels.locks`; :func:`job_locks`) keep jobs that would corrupt each other apart, and a
refused job says which process holds the folder (:class:`FolderBusyError`) before it does any work:
``.train.lock``, held exclusively by the training and shared by every job that reads the folder's checkpoint
(one training at a time, and never while its checkpoint is read), and ``.write.lock``, held by the job writing a
folder's evaluation or timing files (one writer per folder). Jobs writing different folders of one run (evaluate
into the run folder, deploy into ``deploy/{path}/``) run side by side, as the workflow schedules them. A lock
dies with its process, so a job killed with SIGKILL leaves none behind.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT", "CONFIG", "CONFUSION", "CONFUSION_PER_IMAGE", "COST", "FILES", "LAST", "LATENCY", "LAYOUT",
    "METRICS", "OFFLINE_FILE", "PER_CLASS", "RUN_ID_FILE", "SAMPLES", "STATISTICS_PER_IMAGE", "TRAIN_LOCK",
    "TRAIN_LOG", "TRAIN_LOG_PARTIAL", "WRITE_LOCK", "FolderBusyError", "RunFolder", "job_locks", "json_safe", "pattern", "primary_mode", "read_json",
    "read_npy", "run_dir", "write_json", "write_npy",
]  # fmt: skip

CHECKPOINT = "checkpoint.pt"  # the trained model (best/final weights), what evaluate and benchmark load
LAST = "last.pt"  # the resumable training state; kept at the end, so a finished run started again has nothing to redo
TRAIN_LOG = "train_log.csv"
TRAIN_LOG_PARTIAL = "train_log.partial.csv"  # the training log while training runs, renamed to TRAIN_LOG at the end
CONFIG = "config.yaml"  # the run's resolved config
RUN_ID_FILE = "mlflow_run_id"  # the MLflow run this folder logs to
OFFLINE_FILE = "mlflow_offline.jsonl"  # MLflow records kept while the server was unreachable
METRICS = "metrics.json"
PER_CLASS = "per_class.csv"
CONFUSION = "confusion.npy"
CONFUSION_PER_IMAGE = "confusion_per_image.npy"
STATISTICS_PER_IMAGE = "statistics_per_image.npz"  # beside CONFUSION_PER_IMAGE: the other metrics' statistics
SAMPLES = "samples"  # a folder: {index:04d}_{image_id}[_input|_gt].png
LATENCY = "latency.json"
COST = "cost.json"
TRAIN_LOCK = ".train.lock"  # the training's (exclusive), shared by the jobs reading the checkpoint
WRITE_LOCK = ".write.lock"  # the job writing the folder's evaluation or timing files (exclusive)
FILES = (CHECKPOINT, LAST, TRAIN_LOG, TRAIN_LOG_PARTIAL, CONFIG, RUN_ID_FILE, OFFLINE_FILE, METRICS, PER_CLASS,
         CONFUSION, CONFUSION_PER_IMAGE, STATISTICS_PER_IMAGE, SAMPLES, LATENCY, COST, TRAIN_LOCK, WRITE_LOCK)  # fmt: skip

LAYOUT = "{exp}/{model}/seed{seed}"  # a run folder under the results folder; the fields are Snakemake's wildcards
_SAMPLE_KINDS = {"pred": "", "input": "_input", "gt": "_gt"}
_SAMPLE = re.compile(r"^(\d+)_(.+?)(_input|_gt)?\.png$")


def run_dir(results: str | Path, experiment: str, model: str, seed: int) -> Path:
    """The folder of one model and seed of a study."""
    return Path(results) / LAYOUT.format(exp=experiment, model=model, seed=seed)


def pattern(name: str, results: str = "results") -> str:
    """The Snakemake path pattern of a run folder's file: ``pattern(METRICS)`` is
    ``"results/{exp}/{model}/seed{seed}/metrics.json"``."""
    if name not in FILES:
        raise ValueError(f"{name!r} is not a file of the run folder; the files are {', '.join(FILES)}")
    return f"{results}/{LAYOUT}/{name}"


# --- readers and writers -----------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """NaN and infinities → None, numpy scalars → Python numbers, recursively, so ``json.dumps(...,
    allow_nan=False)`` succeeds."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    np = sys.modules.get("numpy")  # an object can only be a numpy scalar once numpy is imported
    if np is not None and isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON file of the run folder, or None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open() as fh:
        return json.load(fh)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """``data`` as indented strict JSON (NaN written as null), atomically."""
    from segmodels.atomic import write_text_atomic

    return write_text_atomic(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def read_npy(path: str | Path) -> Any:
    """An NPY file of the run folder (no pickles), or None when absent."""
    import numpy as np

    path = Path(path)
    return np.load(path, allow_pickle=False) if path.is_file() else None


def write_npy(path: str | Path, array: Any) -> Path:
    """``array`` as an NPY file, atomically."""
    import numpy as np

    from segmodels.atomic import write_atomic

    return write_atomic(path, lambda fh: np.save(fh, array))


def primary_mode(latency: dict[str, Any], prefer: str = "fp32") -> str | None:
    """latency.json's mode for the study's latency column: ``prefer`` (the precision the model's mIoU was measured
    in) when it was timed, else fp32, else the first timed mode."""
    timed = [name for name, m in latency["modes"].items() if m.get("status") == "ok"]
    return next((name for name in (prefer, "fp32") if name in timed), timed[0] if timed else None)


class FolderBusyError(OSError):
    """Another job holds a folder; the message names the folder and, where its lock file says, the process."""


def _busy_message(path: Path, holder: Any, job: str) -> str:
    folder = path.parent
    if path.name == WRITE_LOCK:
        by = f"segmodels {holder.job}" if holder is not None and holder.job else "another job"
        return f"folder {folder} is being written by {by} ({holder or 'another process'}); run this {job} when it has ended"
    if holder is None:  # shared: jobs reading the checkpoint
        return (f"run folder {folder} is in use by jobs reading its checkpoint (segmodels evaluate, benchmark or "
                "deploy); train it when they have ended")  # fmt: skip
    then = "wait for that training to end (or stop it)" if job == "train" else f"{job} it when that training has ended"
    return f"run folder {folder} is being trained by {holder}; {then}"


@contextmanager
def job_locks(job: str, *, trains: str | Path | None = None, reads: str | Path | None = None,
              writes: str | Path | None = None) -> Iterator[list[Any]]:  # fmt: skip
    """Hold a job's locks (the :class:`segmodels.locks.Lock` list) while the block runs; taken at once or refused
    with :class:`FolderBusyError` (never waited for, so no two jobs wait on each other).

    ``trains``: the run folder a training writes (its ``.train.lock``, exclusive; the folder is made, and removed
    again when the job leaves it empty). ``reads``: the run folder whose checkpoint the job reads (its
    ``.train.lock``, shared; nothing when the folder does not exist). ``writes``: the folder the job writes its files
    into (its ``.write.lock``, exclusive). ``job`` (train, evaluate, benchmark) is written into an exclusive lock
    file, with the pid and host, for the message of a refused job.
    """
    from segmodels.locks import LockBusyError, holding

    taken = [(Path(trains) / TRAIN_LOCK, False)] if trains is not None else []
    if reads is not None and Path(reads).is_dir():
        taken.append((Path(reads) / TRAIN_LOCK, True))
    if writes is not None:
        taken.append((Path(writes) / WRITE_LOCK, False))
    with ExitStack() as stack:
        held = []
        for path, shared in taken:
            try:
                held.append(stack.enter_context(holding(path, shared=shared, job=job, label="run folder lock file")))
            except LockBusyError as exc:
                raise FolderBusyError(_busy_message(path, exc.holder, job)) from None
        yield held


class _File:
    """A :class:`RunFolder` attribute: the path of one of its files."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: RunFolder | None, owner: type | None = None) -> Any:
        return self if folder is None else folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    """One run folder: a path per file, and readers of the files others consume."""

    path: Path

    checkpoint = _File(CHECKPOINT)
    last = _File(LAST)
    train_log = _File(TRAIN_LOG)
    train_log_partial = _File(TRAIN_LOG_PARTIAL)
    config = _File(CONFIG)
    run_id_file = _File(RUN_ID_FILE)
    offline = _File(OFFLINE_FILE)
    metrics = _File(METRICS)
    per_class = _File(PER_CLASS)
    confusion = _File(CONFUSION)
    confusion_per_image = _File(CONFUSION_PER_IMAGE)
    statistics_per_image = _File(STATISTICS_PER_IMAGE)
    samples = _File(SAMPLES)
    latency = _File(LATENCY)
    cost = _File(COST)
    train_lock = _File(TRAIN_LOCK)
    write_lock = _File(WRITE_LOCK)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def read_metrics(self) -> dict[str, Any] | None:
        """metrics.json as written (``segmodels evaluate``), or None when absent."""
        return read_json(self.metrics)

    def read_latency(self) -> dict[str, Any] | None:
        """latency.json (``segmodels benchmark``), or None when absent."""
        return read_json(self.latency)

    def read_run_id(self) -> str | None:
        """The MLflow run id the folder logs to, or None."""
        return (self.run_id_file.read_text().strip() or None) if self.run_id_file.is_file() else None

    def training_log(self) -> Path | None:
        """train_log.csv, else the still-growing train_log.partial.csv, else None."""
        return next((p for p in (self.train_log, self.train_log_partial) if p.is_file()), None)

    def sample(self, index: int, image_id: str, kind: str = "pred") -> Path:
        """The PNG of image ``index`` of the evaluated split: its prediction (``pred``), ``input`` or ``gt``."""
        if kind not in _SAMPLE_KINDS:
            raise ValueError(f"sample kind {kind!r}: expected one of {', '.join(_SAMPLE_KINDS)}")
        return self.samples / f"{index:04d}_{image_id.replace('/', '_')}{_SAMPLE_KINDS[kind]}.png"

    def read_samples(self) -> dict[int, dict[str, Path]]:
        """``{image index: {"input"|"gt"|"pred": path}}`` of the ``samples/`` folder."""
        kinds = {suffix or None: kind for kind, suffix in _SAMPLE_KINDS.items()}
        found: dict[int, dict[str, Path]] = {}
        for path in sorted(self.samples.glob("*.png")) if self.samples.is_dir() else []:
            if match := _SAMPLE.match(path.name):
                found.setdefault(int(match.group(1)), {})[kinds[match.group(3)]] = path
        return found
