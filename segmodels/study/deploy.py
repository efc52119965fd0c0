"""The study's CPU deployment section: which runs are deployed, on which paths, where the files go, and the
columns that ``summary.csv`` gains.

A *path* is one way to run a trained model on a CPU:

- ``fp32``: PyTorch in float32, the reference every other path is compared with (always scored);
- ``bf16``: PyTorch under bfloat16 autocast. Its scores are measured on every CPU (where bf16 is not native,
  PyTorch emulates it: the numbers hold, the speed does not); its latency only where bf16 is native (AVX512-BF16,
  AMX), skipped with the reason elsewhere;
- ``onnx``: the exported, BatchNorm-folded graph in ONNX Runtime, float32;
- ``onnx-int8``: that graph quantized by ONNX Runtime (static, QDQ, per-channel weights), calibrated on
  ``deploy.calibration`` packed training images of the study.

Per deployed run and seed, ``segmodels deploy`` scores each path on the validation split into
``RUN/deploy/{path}/`` (``metrics.json``, ``confusion_per_image.npy``, ... as ``segmodels evaluate`` writes them)
and times every path on the CPU into ``RUN/deploy/latency.json``. The summary pairs each path's per-image
confusion matrices with fp32's in one bootstrap (:mod:`segmodels.study.stats`), so each difference in mIoU comes
with its interval.

Light: no torch, numpy or pandas at import (the Snakefile reads it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segmodels.study import runs
from segmodels.study.schema import DEPLOY_PATHS, ConfigError, StudyConfig

__all__ = [
    "DEPLOY",
    "KEYS",
    "LATENCY",
    "PATHS",
    "TIMED_MODES",
    "chosen_runs",
    "deploy_columns",
    "deploy_folder",
    "deploy_pattern",
    "deploy_row",
    "deployed_runs",
    "latency_cells",
    "path_modes",
    "per_image_files",
    "scored_paths",
]

DEPLOY = "deploy"  # the run folder's sub-folder of the deployment files
LATENCY = runs.LATENCY  # RUN/deploy/latency.json
PATHS = DEPLOY_PATHS  # in the order of the table
KEYS = {"fp32": "fp32", "bf16": "bf16", "onnx": "onnx", "onnx-int8": "int8"}  # path → its summary columns' key
# The benchmark modes timed for each path; a path's latency is its fastest mode's. "fp32" (plain eager PyTorch)
# is also the baseline of the speed-up.
TIMED_MODES = {
    "fp32": ("fp32", "fp32+fold", "fp32+fold+channels_last"),
    "bf16": ("amp+fold", "amp+fold+channels_last"),
    "onnx": ("onnx",),
    "onnx-int8": ("onnx-int8",),
}
EAGER = "fp32"  # the mode of the speed-up's baseline: PyTorch as trained, float32, nothing folded


def scored_paths(paths: Sequence[str]) -> list[str]:
    """fp32 and the configured ``deploy.paths``, in table order, each once."""
    wanted = {"fp32", *paths}
    return [p for p in PATHS if p in wanted]


def path_modes(paths: Sequence[str]) -> list[str]:
    """The benchmark modes that time ``paths`` (fp32 and the configured ones)."""
    return [mode for path in scored_paths(paths) for mode in TIMED_MODES[path]]


def chosen_runs(enabled: bool, chosen: Sequence[str], names: Sequence[str], *, key: str,
                where: str = "config") -> list[str]:  # fmt: skip
    """The runs of ``names`` (the study's, in matrix order) a section works on: none when it is off (``enabled``),
    ``chosen`` (its ``{key}``) when given, each a run of the study (else a ConfigError naming it), else all."""
    if not enabled:
        return []
    if not chosen:
        return list(names)
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise ConfigError(f"{where}: '{key}' names '{unknown[0]}', which is not a run of the study; its "
                          f"runs: {', '.join(names)}")  # fmt: skip
    return [m for m in names if m in chosen]


def deployed_runs(cfg: StudyConfig, names: Sequence[str], *, where: str = "config") -> list[str]:
    """The runs of ``names`` that the deploy section deploys (:func:`chosen_runs` of ``deploy.models``)."""
    return chosen_runs(cfg.deploy.enabled, cfg.deploy.models, names, key="deploy.models", where=where)


def deploy_folder(run_dir: str | Path, path: str | None = None) -> Path:
    """``RUN/deploy/`` or, for a path, ``RUN/deploy/{path}/``."""
    folder = Path(run_dir) / DEPLOY
    if path is None:
        return folder
    if path not in PATHS:
        raise ValueError(f"deployment path must be one of {', '.join(PATHS)}, got {path!r}")
    return folder / path


def deploy_pattern(name: str, path: str | None = None, results: str = "results") -> str:
    """The Snakemake path pattern of a deployment file: ``deploy_pattern("metrics.json", "{path}")`` is
    ``"results/{exp}/{model}/seed{seed}/deploy/{path}/metrics.json"``."""
    return f"{results}/{runs.LAYOUT}/{DEPLOY}/" + (f"{path}/" if path else "") + name


def deploy_columns() -> list[str]:
    """summary.csv's deployment columns (only with ``deploy.enabled``): the CPU; per path the latency (ms, its
    fastest mode) and the mIoU (points); the fastest path and its speed-up over eager fp32 PyTorch; and per path
    other than fp32 the paired difference from fp32 in mIoU points with its interval."""
    keys = [KEYS[p] for p in PATHS]
    return [
        "deploy_cpu", "deploy_threads", "deploy_eager_ms",
        *(f"deploy_{k}_ms" for k in keys), "deploy_fp32_mode", "deploy_fastest", "deploy_speedup",
        *(f"deploy_miou_{k}" for k in keys),
        *(f"deploy_{k}_{end}" for k in keys[1:] for end in ("diff", "lo", "hi")),
    ]  # fmt: skip


def _fastest(latency: dict[str, Any], modes: Sequence[str]) -> tuple[str, float] | None:
    timed = [(m, latency["modes"][m]["median_ms"]) for m in modes
             if (latency["modes"].get(m) or {}).get("status") == "ok"]  # fmt: skip
    return min(timed, key=lambda t: t[1]) if timed else None


def latency_cells(latency: dict[str, Any] | None, paths: Sequence[str]) -> dict[str, Any]:
    """One seed's latency columns from its ``RUN/deploy/latency.json``."""
    if not latency:
        return {}
    row: dict[str, Any] = {"deploy_cpu": (latency.get("device") or {}).get("name"),
                           "deploy_threads": (latency.get("device") or {}).get("threads")}  # fmt: skip
    eager = _fastest(latency, [EAGER])
    row["deploy_eager_ms"] = eager[1] if eager else None
    best: tuple[str, float] | None = None
    for path in scored_paths(paths):
        fastest = _fastest(latency, TIMED_MODES[path])
        if fastest is None:
            continue
        row[f"deploy_{KEYS[path]}_ms"] = fastest[1]
        if path == "fp32":
            row["deploy_fp32_mode"] = fastest[0]
        if best is None or fastest[1] < best[1]:
            best = (path, fastest[1])
    if best is not None:
        row["deploy_fastest"] = best[0]
        if eager:
            row["deploy_speedup"] = eager[1] / best[1]
    return row


def _seed_folders(cfg: StudyConfig, results: Path, model: str) -> list[Path]:
    return [runs.run_dir(results, cfg.experiment, model, seed) for seed in cfg.seeds]


def deploy_row(cfg: StudyConfig, results: Path, model: str, boots: dict[str, Any] | None) -> dict[str, Any]:
    """The deployment columns of ``model``: latencies (median over seeds), mIoU per path (mean over seeds) and, from
    ``boots`` (:func:`segmodels.study.stats.bootstrap_models` of ``{model}@{path}``), the paired differences."""
    from segmodels.study.stats import compare

    folders = _seed_folders(cfg, results, model)
    paths = scored_paths(cfg.deploy.paths)
    cells = [latency_cells(runs.read_json(deploy_folder(f) / LATENCY), paths) for f in folders]
    row: dict[str, Any] = {}
    for column in deploy_columns():
        values = [c[column] for c in cells if c.get(column) is not None]
        if values:
            numeric = all(isinstance(v, (int, float)) for v in values)
            row[column] = statistics.median(values) if numeric else values[0]
    for path in paths:
        scores = [m["miou"] * 100 for f in folders
                  if (m := runs.read_json(deploy_folder(f, path) / runs.METRICS)) and m.get("miou") is not None]
        if scores:
            row[f"deploy_miou_{KEYS[path]}"] = statistics.fmean(scores)
    reference = f"{model}@fp32"
    for path in paths[1:]:
        name = f"{model}@{path}"
        if boots and reference in boots and name in boots:
            c = compare(boots, name, reference, confidence=cfg.stats.confidence)
            key = KEYS[path]
            row |= {f"deploy_{key}_diff": c.diff, f"deploy_{key}_lo": c.lo, f"deploy_{key}_hi": c.hi}
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def per_image_files(cfg: StudyConfig, results: Path, model: str) -> dict[str, list[Path]]:
    """``{model}@{path}`` → the seeds' ``confusion_per_image.npy`` of that path, for paths scored on every
    evaluated seed (so each estimate is the seed mean the summary shows)."""
    out = {}
    folders = _seed_folders(cfg, results, model)
    for path in scored_paths(cfg.deploy.paths):
        files = [deploy_folder(f, path) / runs.CONFUSION_PER_IMAGE for f in folders]
        done = [deploy_folder(f, path) / runs.METRICS for f in folders]
        if all(p.is_file() for p in files) and all(p.is_file() for p in done):
            out[f"{model}@{path}"] = files
    return out
