"""A trained run on the CPU, path by path (:mod:`segmodels.study.deploy`): each path's scores on the validation
split, through the evaluation's own code, and the latency of every path, through the benchmark's.

All paths score whole images at one scale (``evaluate.scales`` and ``evaluate.sliding`` are set aside: an exported
graph has one input size), with the run's flip and resolution settings, so the differences from fp32 are like for
like. Each path scores the model its latency times: bf16 the BatchNorm-folded model of its ``amp+fold`` modes, the
ONNX paths the exported (folded) graph; fp32, the reference, the model as trained. MLflow keys:
``miou_deploy_{path}`` (``onnx-int8`` → ``onnx_int8``) and ``deploy_latency_ms_{mode}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segmodels.study.config import StudyConfig
from segmodels.study.deploy import LATENCY, PATHS, deploy_folder, path_modes, scored_paths

__all__ = ["calibration_count", "deploy_run", "score_path", "time_paths"]


def calibration_count(cfg: StudyConfig, data_dir: Path) -> int:
    """``deploy.calibration``, or the training split's size when it holds fewer images."""
    from segmodels.data.loader import PackedSplit

    train = Path(data_dir) / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"INT8 calibration needs the packed training split: {train} not found "
                                "(run 'segmodels prepare')")  # fmt: skip
    return min(cfg.deploy.calibration, len(PackedSplit(train)))


def _whole_images(cfg: StudyConfig) -> StudyConfig:
    cfg = dataclasses.replace(cfg)
    cfg.evaluate = dataclasses.replace(cfg.evaluate, scales=[1.0], sliding=False)
    return cfg


def score_path(cfg: StudyConfig, run_dir: str | Path, path: str, *, data: str | Path | None = None,
               log_mlflow: bool = True, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Score one path of the run on the validation split into ``RUN/deploy/{path}/``; metrics.json's dict."""
    from segmodels.engine.evaluate import evaluate, resolve_split

    out = deploy_folder(run_dir, path)  # also refuses a path that is not one of PATHS
    cfg = _whole_images(cfg)
    torch_path = path in ("fp32", "bf16")
    calibration = None
    if path == "onnx-int8":
        calibration = calibration_count(cfg, resolve_split(cfg, data).parent)
    # bf16 is timed folded (TIMED_MODES: amp+fold...), so it is scored folded: BatchNorm folded into the convolution
    # changes what bf16 rounds. fp32 is the reference as trained, its folded modes timed for the speed only.
    return evaluate(
        cfg, run_dir, data=data, out=out, device="cpu", log_mlflow=log_mlflow,
        progress=progress, backend="torch" if torch_path else path, calibration=calibration,
        amp=path == "bf16" if torch_path else None, log_tag="deploy_" + path.replace("-", "_"), fold=path == "bf16",
    )  # fmt: skip


def time_paths(cfg: StudyConfig, run_dir: str | Path, paths: Sequence[str], *, size: list[int] | None = None,
               repeats: int | None = None, warmup: int | None = None, log_mlflow: bool = True) -> dict[str, Any]:  # fmt: skip
    """Time fp32 and ``paths`` on the CPU (:data:`segmodels.study.deploy.TIMED_MODES`) into
    ``RUN/deploy/latency.json``; its dict."""
    from segmodels.engine.benchmark import benchmark_run

    return benchmark_run(
        cfg, run_dir, out=deploy_folder(run_dir) / LATENCY, size=size or cfg.deploy.size, modes=path_modes(paths),
        repeats=repeats, warmup=warmup, device="cpu", log_mlflow=log_mlflow, log_prefix="deploy_",
    )  # fmt: skip


def _require_onnx(int8: bool) -> None:
    """ImportError, saying what to install, when the ONNX paths cannot run here."""
    import importlib

    for module in ("onnx", "onnxruntime", *(("onnxruntime.quantization",) if int8 else ())):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"the ONNX deployment paths need {module}, which failed to import ({exc}): pip install "
                              "'segmodels[export]' (onnx, onnxruntime); or leave onnx and onnx-int8 out of "
                              "deploy.paths") from exc  # fmt: skip


def deploy_run(cfg: StudyConfig, run_dir: str | Path, *, paths: Sequence[str] | None = None,
               data: str | Path | None = None, scores: bool = True,
               latency: bool = True, log_mlflow: bool = True, progress: bool = True, repeats: int | None = None,
               log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Score (``scores``) ``paths`` of one run (default: fp32 and ``deploy.paths``) and time them (``latency``;
    fp32 is always timed, the speed-up's baseline)."""
    paths = scored_paths(cfg.deploy.paths) if paths is None else [p for p in PATHS if p in paths]
    if scores and any(p.startswith("onnx") for p in paths):  # before any path is scored
        _require_onnx("onnx-int8" in paths)
    out: dict[str, Any] = {"scores": {}, "latency": None}
    if scores:
        for path in paths:
            metrics = score_path(cfg, run_dir, path, data=data, log_mlflow=log_mlflow, progress=progress)
            out["scores"][path] = metrics
            log(f"{metrics['model']} {path}: mIoU {metrics['miou'] * 100:.2f} ({metrics['protocol']['precision']})")
    if latency:
        out["latency"] = time_paths(cfg, run_dir, paths, repeats=repeats, log_mlflow=log_mlflow)
    return out
