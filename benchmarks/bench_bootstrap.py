"""Bootstrap benchmark: ``python benchmarks/bench_bootstrap.py [--images 500 --resamples 1000 ...]``.

Times the paired bootstrap of :mod:`segmodels.study.stats` on Cityscapes-sized inputs (500 validation images,
19 classes, per-image matrices summing to a 1024×2048 image each): the draw counts, the resampled
matrices (one matrix product), the scores of every resample, and a whole study of several models and
seeds with all discussed pairs. Prints the median of ``--repeats`` runs of each, with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from segmodels.devices import cpu_name
from segmodels.metrics import metrics_of_matrices
from segmodels.report.design import fixed_pairs
from segmodels.study.config import StatsConfig
from segmodels.study.stats import (
    bootstrap_models,
    comparisons_table,
    resample_counts,
    resampled_matrices,
)

STUDY = ("resnet18-ppm", "resnet50-ppm", "resnet101-ppm", "mobilenetv2-ppm", "mobilenetv3-ppm", "resnet18-aspp",
         "resnet18-ocr", "resnet18-fcn")  # fmt: skip


def _per_image(rng: np.random.Generator, images: int, classes: int, pixels: int) -> np.ndarray:
    """Per-image confusion matrices of ``pixels`` labelled pixels each, mostly on the diagonal."""
    weights = rng.random((images, classes, classes)) ** 8
    weights[:, np.arange(classes), np.arange(classes)] += rng.random((images, classes)) * 40
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    return np.round(weights * pixels).astype(np.int32)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch allocations and BLAS initialisation are not the steady cost
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="validation images (default: 500, Cityscapes val)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--classes", type=int, default=19, help="classes (default: 19)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model in the study run (default: 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, median reported (default: 5)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    one = _per_image(rng, args.images, args.classes, 1024 * 2048)
    cfg = StatsConfig(resamples=args.resamples)
    counts = resample_counts(args.images, args.resamples, cfg.seed)
    stack = resampled_matrices(one, counts)
    study = {m: [_per_image(rng, args.images, args.classes, 1024 * 2048) for _ in range(args.seeds)] for m in STUDY}

    def whole_study() -> None:
        comparisons_table(bootstrap_models(study, cfg), cfg, design=fixed_pairs())

    rows = [
        ("draw counts (R×N)", _median_seconds(lambda: resample_counts(args.images, args.resamples, 0), args.repeats)),
        ("resampled matrices (R×C×C)", _median_seconds(lambda: resampled_matrices(one, counts), args.repeats)),
        ("scores of every resample", _median_seconds(lambda: metrics_of_matrices(stack), args.repeats)),
        ("one model, one seed, end to end", _median_seconds(lambda: bootstrap_models({"m": [one]}, cfg), args.repeats)),
        (f"study: {len(STUDY)} models × {args.seeds} seeds + all pairs", _median_seconds(whole_study, args.repeats)),
    ]
    print(f"paired bootstrap, {args.images} images × {args.classes} classes × {args.resamples} resamples "
          f"(median of {args.repeats})")  # fmt: skip
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    for name, seconds in rows:
        print(f"  {name:<45} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
