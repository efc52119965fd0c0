"""Robustness subcommands: ``corrupt`` makes a corruption's images once per study, ``robustness`` scores a run under
every configured corruption and severity (:mod:`segmodels.study.robustness`).

argparse only at import time; numpy, torch and the engine load inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["COMMANDS"]


def _workers(value: int | None) -> int:
    import os

    if value is not None and value < 1:
        raise ValueError(f"--workers must be at least 1, got {value}")
    return value or len(os.sched_getaffinity(0))


def _add_corrupt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); its 'robustness' section says "
                   "the severities and how many validation images")  # fmt: skip
    p.add_argument("--corruption", required=True, help="one corruption: gaussian_noise, shot_noise, impulse_noise, "
                   "speckle_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur, snow, frost, fog, "
                   "brightness, spatter, contrast, elastic_transform, pixelate, jpeg_compression, saturate")  # fmt: skip
    p.add_argument("--data", type=Path, help="packed split folder (default: data/packed/{dataset}/val)")
    p.add_argument("--root", type=Path, default=Path("data/corrupted"),
                   help="where the corrupted images go: ROOT/{dataset}/{corruption}/ (default: data/corrupted)")
    p.add_argument("--workers", type=int, help="processes (default: every core this job may use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_corrupt(args: argparse.Namespace) -> int:
    from segmodels.data.corrupted import cache_folder, write_corrupted
    from segmodels.data.corruptions import CORRUPTIONS, require_corruptions
    from segmodels.engine.evaluate import resolve_split
    from segmodels.study.config import load_config

    cfg = load_config(args.config)
    if args.corruption not in CORRUPTIONS:
        raise ValueError(f"--corruption {args.corruption!r} is not a corruption; one of: {', '.join(CORRUPTIONS)}")
    require_corruptions([args.corruption])  # before any image is read: name the package to install
    split_dir = resolve_split(cfg, args.data)
    folder = cache_folder(cfg.data.dataset, args.corruption, root=str(args.root))
    record = write_corrupted(split_dir, folder, args.corruption, list(cfg.robustness.severities),
                             images=cfg.robustness.images, workers=_workers(args.workers),
                             progress=not args.no_progress)  # fmt: skip
    print(f"wrote {folder}: {record['count']} images × severities {', '.join(map(str, record['severities']))}")
    return 0


def _add_robustness(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); its 'robustness' section")
    p.add_argument("--run", type=Path, required=True, help="run folder, results/{experiment}/{model}/seed{seed}")
    p.add_argument("--corruptions", nargs="+", metavar="NAME", help="corruptions or groups (noise, blur, weather, "
                   "digital, all) (default: robustness.corruptions)")  # fmt: skip
    p.add_argument("--severities", nargs="+", type=int, metavar="K", help="1 to 5 (default: robustness.severities)")
    p.add_argument("--data", type=Path, help="packed split folder (default: data/packed/{dataset}/val)")
    p.add_argument("--root", type=Path, default=Path("data/corrupted"), help="the corrupted images made by "
                   "`segmodels corrupt` (default: data/corrupted); a corruption without them is made on the fly")  # fmt: skip
    p.add_argument("--device", help="auto (a free GPU if any, else the CPU), cpu, cuda or cuda:N (default: the "
                   "config's evaluate.device)")  # fmt: skip
    p.add_argument("--workers", type=int, help="processes making corrupted images on the fly (default: every core)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")


def _run_robustness(args: argparse.Namespace) -> int:
    import dataclasses

    from segmodels.engine.robustness import robustness_run
    from segmodels.engine.run import resolve_run
    from segmodels.study.config import load_config
    from segmodels.study.robustness import study_corruptions

    study = load_config(args.config)
    bad = [k for k in args.severities or [] if not 1 <= k <= 5]
    if bad:
        raise ValueError(f"--severities: {bad[0]} is not a severity; 1 to 5")
    if args.corruptions:
        study.robustness = dataclasses.replace(study.robustness, corruptions=list(args.corruptions))
    corruptions = study_corruptions(study, where="--corruptions")
    _, cfg, _ = resolve_run(study, args.run, where=str(args.config))
    record = robustness_run(cfg, args.run, corruptions=corruptions, severities=args.severities, data=args.data,
                            cache_root=args.root, device=args.device, log_mlflow=not args.no_mlflow,
                            workers=_workers(args.workers))  # fmt: skip
    groups = ", ".join(f"{g} {v * 100:.2f}" for g, v in record["groups"].items())
    print(f"{record['model']}: clean mIoU {record['clean'] * 100:.2f}, mean corruption mIoU "
          f"{record['miou_c_mean'] * 100:.2f} ({groups}), relative robustness {record['robustness_rel']:.3f} "
          f"on {record['images']} images")  # fmt: skip
    return 0


COMMANDS = {
    "corrupt": ("Corrupt the validation images once for the study: one corruption at the configured severities, "
                "into data/corrupted/{dataset}/{corruption}/", _add_corrupt, _run_corrupt),
    "robustness": ("Score a trained run under every configured corruption and severity (RUN/robustness/): mIoU per "
                   "corruption, mean corruption mIoU, relative robustness", _add_robustness, _run_robustness),
}  # fmt: skip
