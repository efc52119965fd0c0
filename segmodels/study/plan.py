"""What a study will cost before it runs: ``segmodels plan`` (and ``results/{experiment}/plan.csv``).

Per run of the matrix: the expected training time of one seed, from the ``cost.json`` of an earlier training of
the same run on the same device when there is one (seconds per trained image × the schedule's images), else from
a short timed calibration on this device (:func:`segmodels.engine.calibrate.calibrate_run`: the run's own step at
its batch, crop, precision and micro-batch, times ``train.iterations``); the peak GPU memory of the calibration; the
evaluation time (one validation image at the protocol's resolution, times the split); the disk its checkpoints and
evaluation files take. In total: the packed data on disk, and the wall time on N GPUs given the DAG (each seed's
training then evaluation on one GPU, longest first on the freest GPU; the benchmarks one after another, each
taking every GPU), besides the sum of GPU-hours. Data preparation and the report are not counted (minutes).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmodels.study import runs
from segmodels.study.matrix import expand_runs, run_config
from segmodels.study.schema import StudyConfig

__all__ = ["PLAN_COLUMNS", "PlanRow", "makespan", "packed_gb", "plan_study", "planned_minutes", "read_plan",
           "recorded_eval_hours", "recorded_seconds_per_image", "totals", "val_images", "write_plan"]  # fmt: skip

PLAN_COLUMNS = ("model", "seeds", "train_hours", "train_source", "eval_hours", "benchmark_hours", "peak_gpu_gb",
                "micro_batch", "accumulate", "disk_gb", "device")  # fmt: skip
_CITYSCAPES = {"train": 2975, "val": 500}


@dataclass
class PlanRow:
    model: str
    seeds: int
    train_hours: float | None  # one seed
    train_source: str  # "recorded" (cost.json), "calibrated" (timed here), or "unknown"
    eval_hours: float | None  # one seed
    benchmark_hours: float | None
    peak_gpu_gb: float | None
    micro_batch: int | None
    accumulate: int | None
    disk_gb: float  # checkpoints and evaluation files of every seed
    device: str

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in PLAN_COLUMNS}


def recorded_seconds_per_image(folder: runs.RunFolder, device: str) -> float | None:
    """Seconds per trained image of a finished training's ``cost.json`` on ``device`` (its name), else None."""
    cost = runs.read_json(folder.cost)
    if not isinstance(cost, dict) or not cost.get("complete") or cost.get("device") != device:
        return None
    images, wall = cost.get("images"), cost.get("wall_s")
    return wall / images if isinstance(images, (int, float)) and images > 0 and isinstance(wall, (int, float)) else None


def recorded_eval_hours(folder: runs.RunFolder, device: str) -> float | None:
    """The wall hours of an earlier evaluation (metrics.json's ``cost``) on ``device``, else None."""
    cost = (runs.read_json(folder.metrics) or {}).get("cost")
    if not isinstance(cost, dict) or cost.get("device") != device:
        return None
    hours = cost.get("wall_hours")
    return float(hours) if isinstance(hours, (int, float)) and hours > 0 else None


def val_images(cfg: StudyConfig) -> int:
    """The validation images: the packed manifest's, else the generator's count, else Cityscapes' 500."""
    from segmodels.data.pack import read_manifest

    try:
        return len(read_manifest(Path("data/packed") / cfg.data.dataset)["splits"]["val"]["names"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        pass
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic.val
    return _CITYSCAPES["val"]


def _train_images(cfg: StudyConfig) -> int:
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic.train
    return _CITYSCAPES["train"]


def packed_gb(cfg: StudyConfig) -> float:
    """The packed arrays: images (3 bytes a pixel) and labels (1) of both splits, instance ids (2) of the val split
    for Cityscapes-format data."""
    h, w = cfg.data.size
    val = val_images(cfg)
    instances = 2 * val if cfg.data.source in ("cityscapes", "synthetic") else 0
    return (4 * (_train_images(cfg) + val) + instances) * h * w / 1e9


def makespan(chains: Sequence[float], gpus: int) -> float:
    """The wall time of independent jobs on ``gpus`` GPUs, each job to the GPU free first, longest first."""
    free = [0.0] * max(gpus, 1)
    for duration in sorted(chains, reverse=True):
        heapq.heapreplace(free, free[0] + duration)
    return max(free)


def plan_study(cfg: StudyConfig, results: str | Path, *, calibrate: Callable[[StudyConfig, str], dict] | None,
               device: str, params: Callable[[StudyConfig, str], int]) -> list[PlanRow]:  # fmt: skip
    """One :class:`PlanRow` per run of ``cfg``: recorded costs on ``device`` first, else ``calibrate(run_cfg, name)``
    (None: recorded costs only); ``params`` counts a run's parameters (for its checkpoints)."""
    rows = []
    n_val = val_images(cfg)
    for spec in expand_runs(cfg):
        run_cfg = run_config(cfg, spec.name)
        t = run_cfg.train
        folders = [runs.RunFolder(runs.run_dir(results, cfg.experiment, spec.name, s)) for s in cfg.seeds]
        recorded = [r for r in (recorded_seconds_per_image(f, device) for f in folders) if r is not None]
        calibration = None if recorded or calibrate is None else calibrate(run_cfg, spec.name)
        train_h = source = None
        if recorded:
            train_h, source = sum(recorded) / len(recorded) * t.iterations * t.batch_size / 3600, "recorded"
        elif calibration is not None:
            train_h, source = calibration["step_s"] * t.iterations / 3600, "calibrated"
        evaluated = [e for e in (recorded_eval_hours(f, device) for f in folders) if e is not None]
        eval_h = sum(evaluated) / len(evaluated) if evaluated else None
        bench_h = None
        if calibration is not None:
            eval_h = calibration["eval_image_s"] * n_val / 3600
            b = run_cfg.benchmark
            cpu = device == "cpu"
            timed = (min(b.warmup, b.cpu_warmup) + min(b.repeats, b.cpu_repeats)) if cpu else b.warmup + b.repeats
            bench_h = calibration["eval_image_s"] * timed * len(b.modes) / 3600
        classes = run_cfg.model.num_classes or 19
        per_seed = (3 * 4 * params(run_cfg, spec.name) + n_val * classes * classes * 4) / 1e9  # weights ×3, matrices
        rows.append(PlanRow(spec.name, len(cfg.seeds), train_h, source or "unknown", eval_h, bench_h,
                            (calibration or {}).get("peak_gb"), (calibration or {}).get("micro_batch"),
                            (calibration or {}).get("accumulate"), per_seed * len(cfg.seeds), device))  # fmt: skip
    return rows


def totals(rows: Sequence[PlanRow], cfg: StudyConfig, gpus: int) -> dict[str, float | None]:
    """The study's GPU-hours, wall hours on ``gpus`` GPUs and disk (None where a run's time is unknown)."""
    known = all(r.train_hours is not None for r in rows)
    chains = [(r.train_hours or 0) + (r.eval_hours or 0) for r in rows for _ in range(r.seeds)]
    bench = sum((r.benchmark_hours or 0) * r.seeds for r in rows)
    return {
        "gpu_hours": sum(chains) + bench * max(gpus, 1) if known else None,
        "wall_hours": makespan(chains, gpus) + bench if known else None,
        "disk_gb": packed_gb(cfg) + sum(r.disk_gb for r in rows),
        "packed_gb": packed_gb(cfg),
    }


def write_plan(rows: Sequence[PlanRow], path: str | Path) -> Path:
    """plan.csv (one row per run, :data:`PLAN_COLUMNS`), atomically."""
    import csv
    import io

    from segmodels.atomic import write_text_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, PLAN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.as_dict().items()})  # fmt: skip
    return write_text_atomic(path, buf.getvalue())


def read_plan(path: str | Path) -> dict[str, Mapping[str, str]]:
    """plan.csv by model; empty when there is none."""
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


def planned_minutes(plan: Mapping[str, Mapping[str, str]], model: str, default: int, *, margin: float = 1.5) -> int:
    """The minutes a scheduler should give one training of ``model``: the plan's time × ``margin`` (rounded up,
    at least 10), or ``default`` where the plan has none."""
    value = (plan.get(model) or {}).get("train_hours") or ""
    try:
        hours = float(value)
    except ValueError:
        return default
    return max(10, math.ceil(hours * 60 * margin)) if math.isfinite(hours) and hours > 0 else default
