"""Reading a study's results files: one small function per file type, and the study as one object.

The study also holds the paired bootstrap comparisons of :mod:`segmodels.study.stats`: read from
``comparisons.csv`` (``segmodels compare``) when present, else bootstrapped in memory from the runs'
``confusion_per_image.npy`` (a note says so).

Every figure and the report read results through here, so a change in a producer's file format
(``segmodels/engine/evaluate.py``, ``benchmark.py``, ``train.py``, ``segmodels/study/summary.py``) is a change in
one ``read_*`` function. A missing file reads as None, never as an error: a partial study is normal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmodels.data.labelset import LabelSet
from segmodels.models.catalog import (  # noqa: F401  (display_name, head_label: importable from here too)
    arch_of,
    display_name,
    head_label,
    reference_variant,
    variant_of,
    with_variant,
)
from segmodels.study import runs
from segmodels.study.config import StudyConfig
from segmodels.study.matrix import run_names
from segmodels.study.runs import read_json
from segmodels.study.stats import COMPARISON_COLUMNS, Comparison, comparisons_from_table
from segmodels.study.summary import summarize

__all__ = [
    "MANY_CLASSES",
    "Study",
    "class_iou",
    "class_selection",
    "label_set_of_study",
    "load_study",
    "pareto_front",
    "read_comparisons",
    "read_confusion",
    "read_latency",
    "read_metrics",
    "read_samples",
    "read_summary",
    "read_train_log",
    "timed_batch",
]

SUMMARY_COLUMNS = ("model", "status", "miou", "latency_ms")  # the least a summary.csv must hold
MANY_CLASSES = 40  # above this many classes, per-class tables and figures show the best and the worst classes


# --- readers: one per file type -------------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str], **kwargs: Any) -> pd.DataFrame | None:
    """A CSV holding at least the ``required`` columns, or None when absent."""
    if not path.is_file():
        return None
    table = pd.read_csv(path, **kwargs)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: column '{missing[0]}' is missing (columns found: {', '.join(table.columns)})")
    return table


def read_summary(path: Path) -> pd.DataFrame | None:
    """summary.csv (``segmodels summarize``), or None when absent."""
    return _read_csv(path, SUMMARY_COLUMNS, dtype={"mlflow_run_ids": str, "device": str})


def _run_file(path: Path, name: str) -> Path:
    """The file ``name`` of the run folder ``path``; a path to the file itself passes unchanged."""
    path = Path(path)
    return path / name if path.is_dir() else path


def read_metrics(run: Path) -> dict[str, Any] | None:
    """A run's metrics.json with ``iou``/``acc`` as per-class lists (NaN where undefined), or None when absent."""
    data = read_json(_run_file(run, runs.METRICS))
    if data is None:
        return None
    if "per_class" in data and "iou" not in data:  # evaluate.py writes {class: {"iou", "acc"}}, null for NaN
        per_class = data["per_class"]
        data["iou"] = [_nan(v.get("iou")) for v in per_class.values()]
        data["acc"] = [_nan(v.get("acc")) for v in per_class.values()]
        data.setdefault("class_names", list(per_class))
    for key in ("iou", "acc"):
        if key in data:
            data[key] = [_nan(v) for v in data[key]]
    return data


def read_confusion(run: Path) -> np.ndarray | None:
    """A run's confusion.npy (C×C int64, rows ground truth), or None when absent."""
    path = _run_file(run, runs.CONFUSION)
    matrix = runs.read_npy(path)
    if matrix is None:
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{path}: a confusion matrix must be square, got shape {matrix.shape}")
    return matrix


def read_comparisons(path: Path) -> list[Comparison] | None:
    """comparisons.csv (``segmodels compare``) as :class:`~segmodels.study.stats.Comparison` objects, or None."""
    table = _read_csv(path, COMPARISON_COLUMNS)
    return None if table is None else comparisons_from_table(table)


def read_latency(run: Path) -> dict[str, Any] | None:
    """A run's latency.json (``segmodels benchmark``), or None when absent."""
    return read_json(_run_file(run, runs.LATENCY))


def read_train_log(run: Path) -> pd.DataFrame | None:
    """A run's training log (train_log.csv, else the still-growing train_log.partial.csv) as columns
    ``iteration``, ``loss`` and, when validation ran, ``val_miou`` in percent; None when there is none."""
    path = runs.RunFolder(run).training_log()
    if path is None:
        return None
    log = pd.read_csv(path)
    missing = [c for c in ("iteration", "loss") if c not in log.columns]
    if missing:
        raise ValueError(f"{path}: column '{missing[0]}' is missing (columns found: {', '.join(log.columns)})")
    out = pd.DataFrame({"iteration": log["iteration"], "loss": pd.to_numeric(log["loss"], errors="coerce")})
    if "val_miou" in log.columns:  # train.py logs fractions, as compute_metrics returns them
        out["val_miou"] = pd.to_numeric(log["val_miou"], errors="coerce") * 100
    return out


def read_samples(run: Path) -> dict[int, dict[str, Path]]:
    """``{image index: {"input"|"gt"|"pred": path}}`` from a run's ``samples/`` folder."""
    return runs.RunFolder(run).read_samples()


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# --- the study's results ---------------------------------------------------------------------------------------


@dataclass
class Study:
    """A study's results: the summary table (one row per run of the matrix) and its run folders."""

    cfg: StudyConfig
    root: Path  # results/{experiment}
    summary: pd.DataFrame  # indexed by run name, in the matrix's order; status missing where nothing finished
    notes: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)  # paired bootstrap of mIoU differences
    reference: str = ""  # the variant the fixed comparisons draw from; "" for the plain runs
    label_set: LabelSet | None = None  # the classes the runs were scored on; None: found on first use

    @property
    def labels(self) -> LabelSet:
        """The classes the runs were scored on (:func:`label_set_of_study`)."""
        if self.label_set is None:
            self.label_set = label_set_of_study(self)
        return self.label_set

    def reference_run(self, pair: str) -> str:
        """The run of ``pair`` ({backbone}-{head}) that the backbone and context-module comparisons use."""
        return with_variant(pair, self.reference)

    def comparison(self, a: str, b: str) -> Comparison | None:
        """The mIoU difference a − b with its interval (a stored b − a is flipped), or None."""
        for c in self.comparisons:
            if (c.a, c.b) == (a, b):
                return c
            if (c.a, c.b) == (b, a):
                return c.flipped()
        return None

    def runs(self, model: str) -> list[Path]:
        """The model's evaluated run folders (metrics.json present), in the config's seed order."""
        folders = [runs.run_dir(self.root.parent, self.root.name, model, seed) for seed in self.cfg.seeds]
        return [f for f in folders if runs.RunFolder(f).metrics.is_file()]

    def finished(self) -> list[str]:
        return [m for m in self.summary.index if self.summary.at[m, "status"] != "missing"]

    def devices(self, models: list[str] | None = None) -> list[str]:
        """The benchmark devices recorded for ``models`` (default: all), sorted, without repeats."""
        if "device" not in self.summary.columns:
            return []
        column = self.summary["device"] if models is None else self.summary.loc[models, "device"]
        return sorted({str(d) for d in column.dropna()})

    def train_cost(self, model: str) -> tuple[float, str] | None:
        """Hours to train one run of ``model``: (GPU-hours, "GPU-h") when it trained on a GPU, else
        (process CPU-hours, "CPU-h"); None when no cost.json was recorded."""
        gpu = self.value(model, "train_gpu_hours")
        if gpu is not None:
            return gpu, "GPU-h"
        cpu = self.value(model, "train_cpu_hours")
        return (cpu, "CPU-h") if cpu is not None else None

    def value(self, model: str, column: str) -> float | None:
        """A finite number of the summary, or None (model absent, column absent, NaN)."""
        if model not in self.summary.index or column not in self.summary.columns:
            return None
        value = pd.to_numeric(self.summary.at[model, column], errors="coerce")
        return float(value) if pd.notna(value) and math.isfinite(value) else None


def timed_batch(study: Study, models: Sequence[str], *, deploy: bool = False) -> str:
    """``batch 1``: the batch the latencies of ``models`` were timed at, as their latency.json records it (with
    ``deploy`` RUN/deploy/latency.json), else the run's ``benchmark.batch_size``; per model where they differ."""
    from segmodels.study.deploy import LATENCY, deploy_folder
    from segmodels.study.matrix import run_config

    batches = {}
    for m in models:
        files = [deploy_folder(run) / LATENCY if deploy else runs.RunFolder(run).latency for run in study.runs(m)]
        recorded = [b for f in files if isinstance(b := (read_json(f) or {}).get("batch_size"), int)]
        try:
            batches[m] = recorded[0] if recorded else run_config(study.cfg, m).benchmark.batch_size
        except ValueError:  # not a run of this study's matrix
            continue
    distinct = sorted(set(batches.values())) or [study.cfg.benchmark.batch_size]
    if len(distinct) == 1:
        return f"batch {distinct[0]}"
    return "batch " + ", ".join(f"{b} ({display_name(m)})" for m, b in batches.items())


def load_study(cfg: StudyConfig, results: str | Path) -> Study:
    """The summary.csv of ``results/{experiment}``, or one built in memory from the run folders."""
    root = Path(results) / cfg.experiment
    notes = []
    table = read_summary(root / "summary.csv")
    if table is None:
        from segmodels.report.design import fixed_pairs

        notes.append(f"{root / 'summary.csv'} not found: summarised the run folders directly")
        table = summarize(cfg, Path(results), design=fixed_pairs(cfg))
    names = run_names(cfg)
    table = table.drop_duplicates("model").set_index("model").reindex(names)
    table["status"] = table["status"].fillna("missing")
    table["backbone"] = [arch_of(m)[0] for m in table.index]
    table["head"] = [arch_of(m)[1] for m in table.index]
    table["variant"] = [variant_of(m) for m in table.index]
    reference = reference_variant(names)
    if reference:
        notes.append(f"no plain {{backbone}}-{{head}} run: the backbone and context-module comparisons use the "
                     f"runs of variant '{reference}'")  # fmt: skip
    comparisons = read_comparisons(root / "comparisons.csv")
    if comparisons is not None:  # a file of a larger study: only the pairs of this config's runs
        comparisons = [c for c in comparisons if c.a in names and c.b in names]
    else:
        from segmodels.report.design import fixed_pairs
        from segmodels.study.stats import bootstrap_study, study_comparisons

        design = fixed_pairs(cfg)
        boots, _ = bootstrap_study(cfg, Path(results), design=design)
        comparisons = study_comparisons(boots, cfg.stats, design=design)
        if comparisons:
            notes.append(f"{root / 'comparisons.csv'} not found: bootstrapped the per-image matrices directly")
    return Study(cfg=cfg, root=root, summary=table, notes=notes, comparisons=comparisons, reference=reference)


def label_set_of_study(study: Study) -> LabelSet:
    """The classes the study's runs were scored on: recorded in their metrics.json by ``evaluate``; for older
    results, the packed data's manifest (``data/packed/{dataset}``), then the per-class names of a metrics.json
    with the default palette, then Cityscapes' 19 classes."""
    from segmodels.data.labelset import cityscapes_label_set, label_set_of

    names = None
    for model in study.summary.index:
        for run in study.runs(model):
            data = read_json(runs.RunFolder(run).metrics)
            if isinstance(data, dict) and isinstance(data.get("label_set"), dict):
                try:
                    return LabelSet.from_manifest(data["label_set"], str(runs.RunFolder(run).metrics))
                except ValueError:
                    continue
            if isinstance(data, dict) and names is None and isinstance(data.get("per_class"), dict):
                names = list(data["per_class"])
    try:
        return label_set_of(Path("data/packed") / study.cfg.data.dataset)
    except (FileNotFoundError, ValueError):
        pass
    if names is not None and tuple(names) != cityscapes_label_set().classes:
        return LabelSet(study.cfg.data.dataset, tuple(names))
    return cityscapes_label_set()


def class_selection(mean_iou: np.ndarray, limit: int = MANY_CLASSES) -> tuple[list[int], str]:
    """The classes a per-class table or figure shows: all of them up to ``limit``; beyond, the ``limit / 2`` with
    the highest and those with the lowest mean IoU (NaN last), best first. Returns (indices, a note; "" when all)."""
    n = len(mean_iou)
    if n <= limit:
        return list(range(n)), ""
    values = np.where(np.isfinite(mean_iou), mean_iou, -np.inf)
    order = [int(i) for i in np.argsort(-values, kind="stable")]
    each = limit // 2
    defined = [i for i in order if np.isfinite(mean_iou[i])]
    top, bottom = defined[:each], [i for i in defined[-each:] if i not in defined[:each]]
    note = (f"{n} classes: the {len(top)} with the highest and the {len(bottom)} with the lowest mean IoU over the "
            f"models shown; every class is in each run's per_class.csv")  # fmt: skip
    return top + bottom, note


def class_iou(study: Study, model: str) -> np.ndarray | None:
    """Per-class IoU in percent, averaged over the model's seeds (NaN where no seed defines it)."""
    rows = []
    for run in study.runs(model):
        metrics = read_metrics(run)
        if metrics and "iou" in metrics:
            rows.append(np.asarray(metrics["iou"], dtype=float) * 100)
    if not rows:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a class absent everywhere
        return np.nanmean(np.vstack(rows), axis=0)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Models not beaten on both axes by another, ``points`` = {model: (latency, miou)}, by latency."""
    front = [
        m
        for m, (lat, miou) in points.items()
        if not any(l2 <= lat and m2 >= miou and (l2, m2) != (lat, miou) for l2, m2 in points.values())
    ]
    return sorted(front, key=lambda m: points[m][0])
