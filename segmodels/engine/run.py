"""Opening a run: what a ``train``, ``evaluate`` or ``benchmark`` job does before its own work.

:func:`open_run` takes the job's locks on its folders, resolves the run's effective config once, knows its folder
(:class:`segmodels.study.runs.RunFolder`), loads or builds its model, and wraps the job's cost metering and MLflow
logging; the folder's files themselves are named, read and written by :mod:`segmodels.study.runs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmodels.engine.cost import CostMeter
from segmodels.engine.inference import load_model, model_name_from_path, recorded_run
from segmodels.models import build_model
from segmodels.models.catalog import arch_of, variant_of
from segmodels.study import runs
from segmodels.study.matrix import run_config
from segmodels.study.runs import RunFolder
from segmodels.study.schema import effective_norm
from segmodels.tracking import RunLogger, check_store, log_to_run, tracking_uri

__all__ = ["DEFAULT_NUM_CLASSES", "PLAIN_VARIANT", "OpenRun", "job_locks", "num_classes_of", "open_run", "resolve_run",
           "run_tags", "with_data_classes"]

# The ``variant`` tag of a run without variant tags. MLflow's runs table puts runs whose grouping tag is missing or
# empty into a collapsed "Additional runs" group left out of the charts; a name holds them in a group of their own,
# and parentheses, which no variant's tags may contain, keep it from meeting a real variant.
PLAIN_VARIANT = "(plain)"


# Classes of a model built without data to read them from (export or benchmark of an untrained model): Cityscapes'.
DEFAULT_NUM_CLASSES = 19


def with_data_classes(cfg: Any, data_dir: str | Path) -> Any:
    """``cfg`` with ``model.num_classes`` read from the packed data's manifest at ``data_dir`` (a dataset or split
    folder) when the config leaves it null; a number in the config is checked against the manifest instead.
    ValueError, before any model is built, when they differ or nothing says how many classes there are."""
    import dataclasses

    from segmodels.data.labelset import recorded_label_set
    from segmodels.data.pack import check_num_classes

    if cfg.model.num_classes is not None:
        check_num_classes(data_dir, cfg.model.num_classes)
        return cfg
    labels = recorded_label_set(data_dir)
    if labels is None:
        raise ValueError(f"'model.num_classes' is not set and {data_dir} has no manifest.json listing the classes: "
                         f"pack the data with `segmodels prepare`, or set model.num_classes in the config")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=labels.num_classes))


def num_classes_of(cfg: Any, data_dir: str | Path | None = None) -> int:
    """The classes of a model built without a run's data: ``model.num_classes``, else the manifest's at ``data_dir``
    (default ``data/packed/{data.dataset}``), else :data:`DEFAULT_NUM_CLASSES`."""
    from segmodels.data.labelset import recorded_label_set

    if cfg.model.num_classes is not None:
        return int(cfg.model.num_classes)
    labels = recorded_label_set(data_dir if data_dir is not None else Path("data/packed") / cfg.data.dataset)
    return labels.num_classes if labels is not None else DEFAULT_NUM_CLASSES


def resolve_run(cfg: Any, folder: str | Path | None = None, *, checkpoint: str | Path | None = None,
                model_name: str | None = None, fresh: bool = False,
                where: str = "config") -> tuple[str, Any, Path | None]:  # fmt: skip
    """The run a job works on: ``(run name, effective config, checkpoint)``.

    A trained run (``fresh`` false and a folder or checkpoint given) is the one its checkpoint records (by default
    the folder's checkpoint.pt, which must exist); otherwise ``model_name`` names the run and the checkpoint is
    None. The config is :func:`segmodels.study.matrix.run_config` of that run (a run's own effective config passes
    unchanged).
    """
    if fresh or (folder is None and checkpoint is None):
        if model_name is None:
            raise ValueError("give a run folder (--run) or a model name (--model)")
        return model_name, run_config(cfg, model_name, where=where), None
    path = Path(checkpoint) if checkpoint is not None else RunFolder(folder).checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    name = recorded_run(path)
    return name, run_config(cfg, name, where=where), path


def run_tags(name: str, seed: int, study: str) -> dict[str, str]:
    """The MLflow tags that name a model run: ``model`` (the run), ``backbone``, ``head``, ``variant`` (its tags,
    :data:`PLAIN_VARIANT` for none), ``seed`` and ``study``; the runs table groups by any of them."""
    backbone, head = arch_of(name)
    return {"model": name, "backbone": backbone, "head": head, "variant": variant_of(name) or PLAIN_VARIANT,
            "seed": str(seed), "study": study}  # fmt: skip


@dataclass
class OpenRun:
    """A run opened by :func:`open_run`: its effective config and folder, its model, the job's cost and MLflow."""

    job: str  # "train", "evaluate" or "benchmark": the cost record's job, as CostMeter names it
    name: str  # the run ({backbone}-{head}[_tag...])
    cfg: Any  # the run's effective StudyConfig
    folder: RunFolder | None
    checkpoint: Path | None  # the trained model's file; None for a model built fresh
    expected: str | None = None  # the run the checkpoint must be of (default: the folder's name)
    seed: int = 0
    log_mlflow: bool = True
    logger: Any = None  # the RunLogger of a training, once started

    def load_model(self, device: Any, *, expect_num_classes: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The checkpoint's eval-mode model on ``device`` and its metadata, checked against the expected run."""
        if self.checkpoint is None:
            raise ValueError(f"run {self.name} has no checkpoint to load; build its model instead")
        expected = self.expected or (model_name_from_path(self.folder.path) if self.folder else None)
        return load_model(self.checkpoint, device=device, expect_model=expected, expect_num_classes=expect_num_classes)

    def build_model(self, *, pretrained: bool = True) -> Any:
        """The run's model built from its ``model`` section, with the configured ImageNet weights
        (``model.pretrained``) unless ``pretrained`` is false."""
        m = self.cfg.model
        return build_model(*arch_of(self.name), num_classes=num_classes_of(self.cfg), output_stride=m.output_stride, aux=m.aux,
                           pretrained=m.pretrained if pretrained else None, bn_momentum=m.bn_momentum,
                           head_options=m.head_options, head_dropout=m.head_dropout,
                           norm=effective_norm(self.cfg))  # fmt: skip

    def meter(self, device: Any, *, gpus: int | None = None, save: bool = False, resume: bool = False) -> Any:
        """A :class:`~segmodels.engine.cost.CostMeter` of the job; with ``save`` it keeps the folder's cost.json."""
        path = self.folder.cost if save and self.folder is not None else None
        return CostMeter(self.job, device=device, gpus=gpus, path=path, resume=resume)

    def start_logger(self, params: dict[str, Any], tags: dict[str, Any],
                     inputs: Iterable[Mapping[str, Any]] = ()) -> Any:  # fmt: skip
        """Create (or continue) the run's MLflow run, log ``params``, ``tags`` and the dataset ``inputs`` it lacks
        (:func:`segmodels.tracking.packed_inputs`) and start MLflow's system metrics; ended when the run closes."""
        t = self.cfg.tracking
        self.logger = RunLogger(self.folder.path, experiment=t.experiment, uri=tracking_uri(t.uri),
                                run_name=f"{self.name}-seed{self.seed}", flush_seconds=t.flush_seconds,
                                tags=run_tags(self.name, self.seed, self.cfg.experiment)).start()
        self.logger.log_params(params)
        self.logger.set_tags(tags)
        self.logger.log_inputs(inputs)
        self.logger.monitor_system()
        return self.logger

    def log(self, *, metrics: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
            artifacts: list[Path] | tuple[Path, ...] = (), step: int | None = None) -> None:  # fmt: skip
        """Log to the run's MLflow run: through the training's logger when one is open, else added to the run the
        folder names (nothing without a folder or with ``log_mlflow`` off). None values are left out."""
        if self.logger is None:
            if self.log_mlflow and self.folder is not None:
                log_to_run(self.folder.path, metrics=metrics, tags=tags, artifacts=artifacts, step=step,
                           uri=tracking_uri(self.cfg.tracking.uri))  # fmt: skip
            return
        self.logger.log_metrics({k: float(v) for k, v in (metrics or {}).items() if v is not None}, step or 0)
        if tags:
            self.logger.set_tags(tags)
        for path in artifacts:
            self.logger.log_artifact(path)

    def end(self, status: str = "FINISHED") -> None:
        """End the training's MLflow run now (FINISHED, FAILED or KILLED); closing the run then does nothing."""
        if self.logger is not None:
            logger, self.logger = self.logger, None
            logger.end(status)


def job_locks(job: str, folder: str | Path | None, out: str | Path | None = None) -> AbstractContextManager:
    """The locks of a job on run ``folder`` (:func:`segmodels.study.runs.job_locks`): a training holds its folder;
    evaluation and the benchmark share the run folder's training lock (no training meanwhile) and hold the folder
    they write, ``out`` (default: the run folder). Under ``torchrun`` rank 0 holds them for every rank (and when
    a launcher holds them for all its processes, none takes them again: :data:`segmodels.locks.HELD_ENV`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    if job == "train":
        return runs.job_locks(job, trains=folder)
    return runs.job_locks(job, reads=folder, writes=out if out is not None else folder)


@contextmanager
def open_run(cfg: Any, folder: str | Path | None = None, *, job: str, model_name: str | None = None,
             checkpoint: str | Path | None = None, seed: int = 0, log_mlflow: bool = True,
             out: str | Path | None = None) -> Iterator[OpenRun]:  # fmt: skip
    """Open the run of a ``train``, ``evaluate`` or ``benchmark`` job (see :func:`resolve_run` for which run).

    First, before any work: the job's locks (:func:`job_locks`; ``out``, the folder an evaluation or benchmark
    writes, default ``folder``), refused at once with :class:`segmodels.study.runs.FolderBusyError` naming the
    process that holds them, and with ``log_mlflow`` a check that a local tracking database is one
    (:func:`segmodels.tracking.check_store`). A training builds its model fresh (:meth:`OpenRun.build_model`) into
    ``folder``; evaluation and the benchmark load the checkpoint (:meth:`OpenRun.load_model`, checked against
    ``model_name``, by default the folder's name). An MLflow run started with :meth:`OpenRun.start_logger` ends
    when the block does: FINISHED, or FAILED (KILLED on an interrupt) when it raises.
    """
    with job_locks(job, folder, out):
        name, cfg, path = resolve_run(cfg, folder, checkpoint=checkpoint, model_name=model_name, fresh=job == "train")
        if log_mlflow:
            check_store(tracking_uri(cfg.tracking.uri))
        run = OpenRun(job, name, cfg, RunFolder(folder) if folder is not None else None, path,
                      expected=model_name if path is not None else None, seed=seed, log_mlflow=log_mlflow)  # fmt: skip
        try:
            yield run
        except BaseException as exc:
            run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        run.end("FINISHED")
