"""A trained run on corrupted validation images (:mod:`segmodels.study.robustness`): each corruption and severity
scored by the evaluation's own code (:func:`segmodels.engine.evaluate.evaluate`) at the run's own protocol (its
resolution, flip, scales, precision), the corrupted pixels in place of the packed ones and every label, instance id
and raw mask as they are.

The corrupted pixels come from the study's cache (``segmodels corrupt``: ``data/corrupted/{dataset}/{corruption}/``)
when it is there, checked against the packed data it was made from, else they are made here (the same pixels: each
image's seed depends on its id, the corruption and the severity alone). A corruption and severity already scored
for this checkpoint, on these images and these pixels, is not scored again: an interrupted job resumes.
``robustness.json`` is written last; MLflow gets ``miou_c_mean``, ``miou_c_{group}``, ``miou_c_{corruption}``
(percent, means over severities) and ``robustness_rel`` (the mean corruption mIoU ÷ the clean mIoU on the same
images).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmodels.study import runs
from segmodels.study.config import StudyConfig
from segmodels.study.robustness import (
    CORRUPTED_ROOT,
    RESULT,
    group_of,
    robustness_folder,
    robustness_scores,
    study_corruptions,
)

__all__ = ["corrupted_pixels", "robustness_run", "score_corruption"]


def _count(cfg: StudyConfig, split: Any) -> int:
    """``robustness.images``, checked against the split; all of its images when null."""
    count = cfg.robustness.images or len(split)
    if count > len(split):
        raise ValueError(f"'robustness.images' {count} is more than the {len(split)} images of {split.path}; at most "
                         f"{len(split)}, or null for all")  # fmt: skip
    return count


def _cached(cfg: StudyConfig, split: Any, corruption: str, severity: int, *, count: int,
            cache_root: str | Path) -> tuple[np.ndarray, Path] | None:  # fmt: skip
    """The study's cached images of ``corruption`` at ``severity`` for the first ``count`` images of ``split``,
    checked against the split, and their folder; None where the cache does not hold that severity."""
    from segmodels.data.corrupted import MARKER, cache_folder, open_corrupted

    folder = cache_folder(cfg.data.dataset, corruption, root=str(cache_root))
    made = runs.read_json(folder / MARKER) if (folder / MARKER).is_file() else None
    if made is None or int(severity) not in (made.get("severities") or []):
        return None
    pixels = open_corrupted(folder, severity, split)
    if len(pixels) < count:
        raise ValueError(f"{folder}: holds {len(pixels)} corrupted images, {count} are scored (robustness.images); "
                         f"run 'segmodels corrupt --corruption {corruption}' again")  # fmt: skip
    return pixels[:count], folder


def corrupted_pixels(cfg: StudyConfig, split: Any, corruption: str, severity: int, *, count: int,
                     cache_root: str | Path = CORRUPTED_ROOT, workers: int = 1,
                     progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The first ``count`` images of ``split`` under ``corruption`` at ``severity``, and where they came from: the
    study's cache when it holds this corruption and severity (checked against the split), else made now (the same
    pixels)."""
    from segmodels.data.pack import data_identity

    source = {"data": data_identity(split.path.parent)}
    cached = _cached(cfg, split, corruption, severity, count=count, cache_root=cache_root)
    if cached is not None:
        return cached[0], source | {"pixels": "cache", "cache": str(cached[1])}
    from segmodels.data._io import Progress
    from segmodels.data.corruptions import corrupt_images, require_corruptions

    require_corruptions([corruption])
    with Progress(count, f"corrupt {corruption} s{severity}", enabled=progress) as bar:
        pixels = corrupt_images(np.asarray(split.images[:count]), list(split.names[:count]), corruption, severity,
                                workers=workers, progress=bar)  # fmt: skip
    return pixels, source | {"pixels": "made"}


def _check_pixels(cfg: StudyConfig, split: Any, corruptions: Sequence[str], severities: Sequence[int], *,
                  count: int, cache_root: str | Path) -> None:  # fmt: skip
    """Before any scoring: each corruption's cached images, where the cache holds them, checked against the split
    (and its count), and the packages of those to be made on the fly installed; else the error naming the file or
    the package."""
    from segmodels.data.corruptions import require_corruptions

    for c in corruptions:
        cached = [_cached(cfg, split, c, k, count=count, cache_root=cache_root) for k in severities]
        if any(found is None for found in cached):
            require_corruptions([c])


def _record(corruption: str, severity: int, count: int, source: dict[str, Any]) -> dict[str, Any]:
    return {"name": corruption, "group": group_of(corruption), "severity": int(severity), "images": count,
            "data": source.get("data"), "pixels": source.get("pixels")}  # fmt: skip


def score_corruption(cfg: StudyConfig, run_dir: str | Path, corruption: str, severity: int, *,
                     data: str | Path | None = None, cache_root: str | Path = CORRUPTED_ROOT, device: str | None = None,
                     log_mlflow: bool = False, progress: bool = True, workers: int = 1) -> dict[str, Any]:  # fmt: skip
    """Score the run on the validation split's first ``robustness.images`` images under ``corruption`` at
    ``severity`` into ``RUN/robustness/{corruption}/s{severity}/``; metrics.json's dict (its ``corruption`` says
    which, on how many images, and whether the pixels came from the cache). The pixel-level statistics alone are
    counted (mIoU, mAcc, the categories' IoU; not the Boundary IoU's nor the instances', a robustness pass's
    costliest part on a CPU and not among its numbers). With ``log_mlflow`` its scores go to the
    run's MLflow run as ``miou_c_{corruption}_s{severity}`` (and the other metrics' keys with that suffix)."""
    from segmodels.data.corruptions import CORRUPTIONS
    from segmodels.data.loader import PackedSplit
    from segmodels.engine.evaluate import evaluate, resolve_split

    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; one of: {', '.join(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    split_dir = resolve_split(cfg, data)
    split = PackedSplit(split_dir)
    count = _count(cfg, split)
    pixels, source = corrupted_pixels(cfg, split, corruption, severity, count=count, cache_root=cache_root,
                                      workers=workers, progress=progress)  # fmt: skip
    return evaluate(cfg, run_dir, data=split_dir, out=robustness_folder(run_dir, corruption, severity), device=device,
                    log_mlflow=log_mlflow, progress=progress, log_tag=f"c_{corruption}_s{int(severity)}",
                    images=np.asarray(pixels), corruption=_record(corruption, severity, count, source),
                    statistics="pixels")  # fmt: skip


def _scored(folder: Path, want: dict[str, Any], clean: dict[str, Any], checkpoint: Path) -> dict[str, Any] | None:
    """The metrics.json of ``folder`` when it scored this corruption, severity, image count and packed data for
    the checkpoint the clean evaluation scored (the same iteration, written after the checkpoint); else None."""
    metrics = runs.read_json(folder / runs.METRICS)
    if not metrics or not (folder / runs.CONFUSION_PER_IMAGE).is_file():
        return None
    done = metrics.get("corruption") or {}
    same = all(done.get(k) == want[k] for k in ("name", "severity", "images", "data"))
    fresh = (folder / runs.METRICS).stat().st_mtime >= checkpoint.stat().st_mtime
    return metrics if same and fresh and metrics.get("iteration") == clean.get("iteration") else None


def robustness_run(cfg: StudyConfig, run_dir: str | Path, *, corruptions: Sequence[str] | None = None,
                   severities: Sequence[int] | None = None, data: str | Path | None = None,
                   cache_root: str | Path = CORRUPTED_ROOT, device: str | None = None, log_mlflow: bool = True,
                   progress: bool = True, workers: int = 1, log: Callable[[str], Any] = print) -> dict[str, Any]:  # fmt: skip
    """Score the run under every corruption and severity (default: the config's ``robustness`` section) and write
    ``RUN/robustness/robustness.json``; its dict. Needs the run's clean evaluation (``segmodels evaluate``): the
    relative robustness divides by its mIoU on the same images."""
    from segmodels.data.loader import PackedSplit
    from segmodels.data.pack import data_identity
    from segmodels.engine.evaluate import resolve_split
    from segmodels.metrics import metrics_of
    from segmodels.study.stats import load_per_image
    from segmodels.tracking import log_to_run, tracking_uri

    run_dir = Path(run_dir)
    folder = runs.RunFolder(run_dir)
    corruptions = list(corruptions) if corruptions else study_corruptions(cfg)
    severities = [int(k) for k in (severities or cfg.robustness.severities)]
    split_dir = resolve_split(cfg, data)
    split = PackedSplit(split_dir)
    count = _count(cfg, split)
    clean = folder.read_metrics()
    if not clean or not folder.confusion_per_image.is_file():
        raise FileNotFoundError(f"{folder.metrics} and {folder.confusion_per_image} are needed (the clean scores the "
                                f"robustness is relative to): run 'segmodels evaluate --run {run_dir}' first")  # fmt: skip
    clean_images = load_per_image(folder.confusion_per_image)
    if len(clean_images) != len(split):
        raise ValueError(f"{folder.confusion_per_image} scores {len(clean_images)} images, {split_dir} holds "
                         f"{len(split)}: evaluate the run again")  # fmt: skip
    identity = data_identity(split_dir.parent)
    _check_pixels(cfg, split, corruptions, severities, count=count, cache_root=cache_root)
    start = time.monotonic()
    miou: dict[str, dict[int, float]] = {}
    with runs.job_locks("robustness", reads=run_dir, writes=robustness_folder(run_dir)):
        (robustness_folder(run_dir) / RESULT).unlink(missing_ok=True)  # its presence means: all scores are new
        for c in corruptions:
            for k in severities:
                want = {"name": c, "severity": k, "images": count, "data": identity}
                metrics = _scored(robustness_folder(run_dir, c, k), want, clean, folder.checkpoint)
                reused = metrics is not None
                if metrics is None:
                    metrics = score_corruption(cfg, run_dir, c, k, data=split_dir, cache_root=cache_root, device=device,
                                               log_mlflow=False, progress=progress, workers=workers)  # fmt: skip
                miou.setdefault(c, {})[k] = float(metrics["miou"])
                log(f"{metrics['model']} {c} severity {k}: mIoU {metrics['miou'] * 100:.2f}"
                    + (" (scored before)" if reused else ""))  # fmt: skip
        clean_miou = float(metrics_of(clean_images[:count].sum(axis=0))["miou"])
        record = {
            "model": clean["model"],
            "images": count,
            "iteration": clean.get("iteration"),
            "protocol": (clean.get("protocol") or {}).get("label"),
            "data": identity,
            **robustness_scores(miou, clean_miou),
            "seconds": round(time.monotonic() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        runs.write_json(robustness_folder(run_dir) / RESULT, record)
    if log_mlflow:
        scores = {"miou_c_mean": record["miou_c_mean"] * 100, "robustness_rel": record["robustness_rel"],
                  **{f"miou_c_{g}": v * 100 for g, v in record["groups"].items()},
                  **{f"miou_c_{c}": e["mean"] * 100 for c, e in record["corruptions"].items()}}  # fmt: skip
        log_to_run(run_dir, metrics={k: v for k, v in scores.items() if v == v}, step=record["iteration"],
                   uri=tracking_uri(cfg.tracking.uri))  # fmt: skip
    return record
