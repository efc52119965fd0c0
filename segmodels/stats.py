"""How sure each score is: a paired bootstrap over the validation images.

A model's mIoU is computed once on a fixed set of validation images, so it carries the sampling noise of
that set: another 500 street scenes would give another number. The percentile bootstrap (Efron and
Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13) estimates that noise without new inference:
draw N of the N images with replacement, sum their per-image confusion matrices (``confusion_per_image.npy``
of the evaluation), score the sum exactly as :func:`segmodels.metrics.compute_metrics` would, repeat R
times, and take the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles. IoU is a ratio of sums over
the whole set, not a mean over images, so the images are resampled and the scores recomputed from pooled
matrices, never averaged per image.

Paired: one (R, N) matrix of draw counts, from ``stats.seed``, serves every model, so a difference between
two models is taken image set by image set and the scene-to-scene variation both models share cancels (the
paired design that makes small differences testable, as in Bouthillier et al., *Accounting for Variance in
Machine Learning Benchmarks*, MLSys 2021).

Several training seeds: each seed is bootstrapped with the same draws and the per-resample scores are
averaged over seeds; the interval is that of the seed mean. It covers the choice of validation images
only, not the choice of seeds: the seed-to-seed standard deviation is reported beside it
(:attr:`ModelBootstrap.seed_std`), and :attr:`ModelBootstrap.boot_std` is the matching standard deviation
of the image sampling, so the two sources of variance can be compared like for like.

Vectorised: the (R, N) count matrix times the (N, C·C) per-image matrices is one matrix product giving
all R resampled matrices; 1,000 resamples of 500 images × 19 classes take well under a second
(``benchmarks/bench_bootstrap.py``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segmodels.config import StatsConfig, StudyConfig
from segmodels.matrix import pair_of, reference_variant, run_names, variant_of, with_variant

__all__ = [
    "COMPARISON_COLUMNS",
    "METRICS",
    "Comparison",
    "Interval",
    "ModelBootstrap",
    "bootstrap_models",
    "bootstrap_study",
    "compare",
    "comparisons_table",
    "load_per_image",
    "metrics_of_matrices",
    "resample_counts",
    "resampled_matrices",
    "study_pairs",
]

METRICS = ("miou", "macc", "allacc")
COMPARISON_COLUMNS = (
    "pair", "group", "a", "b", "diff", "lo", "hi", "significant", "seeds_a", "seeds_b", "resamples", "confidence",
)  # fmt: skip

# The pairs the report discusses, as (group, a, b): the difference is a − b in mIoU points.
_BACKBONE_PAIRS = (
    ("resnet50-ppm", "resnet18-ppm"),
    ("resnet101-ppm", "resnet50-ppm"),
    ("resnet101-ppm", "resnet18-ppm"),
    ("resnet50-ppm", "mobilenetv2-ppm"),
    ("resnet18-ppm", "mobilenetv2-ppm"),
)
_HEADS = ("ppm", "aspp", "ocr", "fcn")


def study_pairs(models: Sequence[str]) -> list[tuple[str, str, str]]:
    """The discussed pairs among the runs ``models``: backbones under PPM, context modules on ResNet18,
    MobileNetV3 against MobileNetV2, all among the plain runs (else among the runs of the first run's variant,
    :func:`segmodels.matrix.reference_variant`); then each other variant against its architecture there.
    Each as (group, a, b)."""
    present = set(models)
    ref = reference_variant(models)
    pairs = [("backbones (PPM)", a, b) for a, b in _BACKBONE_PAIRS]
    heads = [f"resnet18-{h}" for h in _HEADS]
    pairs += [("context modules (ResNet18)", a, b) for a, b in itertools.combinations(heads, 2)]
    pairs.append(("MobileNetV3", "mobilenetv3-ppm", "mobilenetv2-ppm"))
    pairs = [(g, with_variant(a, ref), with_variant(b, ref)) for g, a, b in pairs]
    pairs += [("variants", m, with_variant(pair_of(m), ref)) for m in models if variant_of(m) != ref]
    return [(g, a, b) for g, a, b in pairs if a in present and b in present]


# --- scores of many matrices at once -----------------------------------------------------------------------


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: nothing defined, the mean is NaN
        return np.nanmean(values, axis=axis)


def metrics_of_matrices(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """mIoU, mAcc and allAcc (fractions) of a stack of (..., C, C) confusion matrices, rows ground truth.

    The definitions of :func:`segmodels.metrics.compute_metrics`, applied along the leading axes: per-class
    IoU TP / (TP + FP + FN) and accuracy TP / (TP + FN), NaN where the denominator is 0 and left out of the
    means; allAcc ΣTP / Σ labelled, NaN when nothing is labelled.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"confusion matrices must be (..., C, C), got shape {m.shape}")
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    truth = m.sum(axis=-1)
    union = truth + m.sum(axis=-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(truth > 0, tp / truth, np.nan)
        labelled = truth.sum(axis=-1)
        allacc = np.where(labelled > 0, tp.sum(axis=-1) / labelled, np.nan)
    return {"miou": _nanmean(iou, -1), "macc": _nanmean(acc, -1), "allacc": allacc}


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(R, N) int64: how often each of N images is drawn in each of R resamples of N draws with replacement."""
    if n_images < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {n_images} images, {resamples} resamples")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    offsets = np.arange(resamples, dtype=np.int64)[:, None] * n_images
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


def resampled_matrices(per_image: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, C, C) float64: the summed confusion matrix of each resample, ``counts`` (R, N) @ ``per_image`` (N, C, C).

    float64 holds pixel counts exactly up to 2**53, far above any validation set's total.
    """
    n, c, c2 = per_image.shape
    if c != c2 or counts.shape[1] != n:
        raise ValueError(f"{counts.shape[1]} image counts per resample for {n} per-image {c}x{c2} matrices")
    flat = per_image.reshape(n, c * c).astype(np.float64)
    return (counts.astype(np.float64) @ flat).reshape(-1, c, c)


# --- intervals ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided percentile interval, in the unit of the estimate."""

    estimate: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


@dataclass
class ModelBootstrap:
    """One model's scores (percent, mean over its seeds) with intervals, seed std and bootstrap samples."""

    model: str
    seeds: int
    interval: dict[str, Interval]  # metric → estimate (seed mean of the full-set scores) and interval
    seed_std: dict[str, float]  # standard deviation over seeds of the full-set scores; NaN for one seed
    boot_std: dict[str, float]  # standard deviation of the resampled seed mean (image sampling)
    samples: dict[str, np.ndarray]  # metric → (R,) resampled seed means, for paired differences


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def load_per_image(path: str | Path) -> np.ndarray:
    """``confusion_per_image.npy`` (N×C×C, rows ground truth), checked; a clear error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-image confusion matrices not found: {path} (written by 'segmodels evaluate')")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 3 or array.shape[1] != array.shape[2] or array.shape[0] < 1:
        raise ValueError(f"{path}: expected N×C×C per-image confusion matrices, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.signedinteger) and (array < 0).any():
        raise ValueError(f"{path}: negative pixel counts")
    return array


def bootstrap_models(
    per_image: Mapping[str, Sequence[np.ndarray]], cfg: StatsConfig | None = None
) -> dict[str, ModelBootstrap]:
    """Paired bootstrap of every model: ``per_image`` maps a model to one (N, C, C) array per seed.

    Every array must describe the same N images (the same validation split in the same order); that is
    what makes the draws shared and the differences paired. Scores are returned in percent.
    """
    cfg = cfg or StatsConfig()
    if cfg.resamples < 1 or not 0 < cfg.confidence < 1:
        raise ValueError(f"stats: resamples must be >= 1 and 0 < confidence < 1, got {cfg}")
    shapes = {(model, i): a.shape for model, arrays in per_image.items() for i, a in enumerate(arrays)}
    if not shapes:
        return {}
    first_key, first = next(iter(shapes.items()))
    for key, shape in shapes.items():
        if shape != first or len(shape) != 3:
            raise ValueError(
                f"per-image matrices of {key[0]} (seed #{key[1]}) have shape {shape}, those of {first_key[0]} "
                f"{first}: a paired bootstrap needs the same validation images for every model"
            )
    counts = resample_counts(first[0], cfg.resamples, cfg.seed)
    out = {}
    for model, arrays in per_image.items():
        if not arrays:
            continue
        full = [metrics_of_matrices(a.sum(axis=0)) for a in arrays]
        boot = [metrics_of_matrices(resampled_matrices(a, counts)) for a in arrays]
        interval, seed_std, boot_std, samples = {}, {}, {}, {}
        for key in METRICS:
            values = np.array([float(f[key]) for f in full]) * 100
            mean_samples = np.mean([b[key] for b in boot], axis=0) * 100
            lo, hi = _percentiles(mean_samples, cfg.confidence)
            interval[key] = Interval(float(values.mean()), lo, hi)
            seed_std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            finite = mean_samples[np.isfinite(mean_samples)]
            boot_std[key] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            samples[key] = mean_samples
        out[model] = ModelBootstrap(model, len(arrays), interval, seed_std, boot_std, samples)
    return out


@dataclass(frozen=True)
class Comparison:
    """The paired difference a − b of one metric (points), with its interval and verdict."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    group: str = ""
    seeds_a: int = 1
    seeds_b: int = 1

    @property
    def significant(self) -> bool:
        """The interval excludes zero (both ends finite)."""
        return math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0)

    def flipped(self) -> Comparison:
        """b − a: the same comparison seen from the other model."""
        return Comparison(self.b, self.a, -self.diff, -self.hi, -self.lo, self.group, self.seeds_b, self.seeds_a)


def compare(
    boots: Mapping[str, ModelBootstrap], a: str, b: str, *, metric: str = "miou", confidence: float = 0.95,
    group: str = "",
) -> Comparison:  # fmt: skip
    """The paired bootstrap interval of ``metric``(a) − ``metric``(b) in points."""
    for model in (a, b):
        if model not in boots:
            raise ValueError(f"no bootstrap of {model}: its per-image confusion matrices are missing")
    ba, bb = boots[a], boots[b]
    lo, hi = _percentiles(ba.samples[metric] - bb.samples[metric], confidence)
    diff = ba.interval[metric].estimate - bb.interval[metric].estimate
    return Comparison(a, b, diff, lo, hi, group, ba.seeds, bb.seeds)


def comparisons_table(boots: Mapping[str, ModelBootstrap], cfg: StatsConfig | None = None):
    """The discussed pairs (:func:`study_pairs`) with bootstrapped models, as a pandas table of
    :data:`COMPARISON_COLUMNS` (mIoU differences in points)."""
    import pandas as pd

    cfg = cfg or StatsConfig()
    rows = []
    for group, a, b in study_pairs(list(boots)):
        c = compare(boots, a, b, confidence=cfg.confidence, group=group)
        rows.append({
            "pair": f"{a} vs {b}", "group": group, "a": a, "b": b, "diff": c.diff, "lo": c.lo, "hi": c.hi,
            "significant": c.significant, "seeds_a": c.seeds_a, "seeds_b": c.seeds_b,
            "resamples": cfg.resamples, "confidence": cfg.confidence,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def bootstrap_study(cfg: StudyConfig, results: str | Path) -> tuple[dict[str, ModelBootstrap], list[str]]:
    """Bootstrap every run of ``cfg`` from its run folders under ``results/{experiment}``, with ``cfg.stats``.

    A model is bootstrapped when every evaluated seed (``metrics.json`` present) has its
    ``confusion_per_image.npy``, so the estimate is the same seed mean as the summary's; the others are
    named in the returned notes.
    """
    root = Path(results) / cfg.experiment
    per_image: dict[str, list[np.ndarray]] = {}
    notes = []
    for model in run_names(cfg):
        runs = [root / model / f"seed{seed}" for seed in cfg.seeds]
        evaluated = [r for r in runs if (r / "metrics.json").is_file()]
        lacking = [r for r in evaluated if not (r / "confusion_per_image.npy").is_file()]
        if lacking:
            notes.append(f"{model}: no interval, {lacking[0] / 'confusion_per_image.npy'} not found (re-run evaluate)")
        elif evaluated:
            per_image[model] = [load_per_image(r / "confusion_per_image.npy") for r in evaluated]
    return bootstrap_models(per_image, cfg.stats), notes
