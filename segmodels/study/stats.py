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

Several training seeds: a two-level bootstrap (Davison and Hinkley, *Bootstrap Methods and their
Application*, 1997, sec. 3.8), so that an interval holds the seed-to-seed variation as well as the image
sampling. Each resample draws S of the S seeds with replacement and one image draw shared by those seeds
(the seeds are scored on the same images, so image effects are crossed with seeds, not nested in them),
and averages the drawn seeds' scores. The seed indices come from ``stats.seed`` too and are the same for
every model with as many seeds, so differences stay paired: the k-th seed of each model is, as a rule, the
same training seed (the same data order). With one seed the draw is that seed every time and the interval
covers the image sampling only. :attr:`ModelBootstrap.boot_std` is the standard deviation of the image
sampling alone (every seed kept), to set beside the seed-to-seed :attr:`ModelBootstrap.seed_std` like for
like.

Tests: each discussed difference gets a two-sided bootstrap p-value, 2·min(P(d ≤ 0), P(d ≥ 0)) with the
+1 correction (Davison and Hinkley, ch. 4), and the report's family of comparisons is adjusted with
Holm's step-down procedure (Holm, *A simple sequentially rejective multiple test procedure*, Scand. J.
Statist. 1979), so the chance of calling any of the dozen differences significant by accident stays at
1 − confidence. A verdict uses the adjusted p-value; the percentile interval is shown beside it.

Vectorised: the (R, N) count matrix times the (N, C·C) per-image matrices is one matrix product giving
all R resampled matrices; 1,000 resamples of 500 images × 19 classes take well under a second
(``benchmarks/bench_bootstrap.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmodels.metrics import metric_keys, metrics_of_matrices
from segmodels.models.catalog import pair_of, reference_variant, variant_of, with_variant
from segmodels.study.matrix import run_names
from segmodels.study.runs import RunFolder, run_dir
from segmodels.study.schema import StatsConfig, StudyConfig

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COMPARISON_COLUMNS",
    "Comparison",
    "Interval",
    "ModelBootstrap",
    "bootstrap_models",
    "bootstrap_p_value",
    "bootstrap_study",
    "compare",
    "comparisons_from_table",
    "comparisons_table",
    "holm",
    "load_per_image",
    "resample_counts",
    "resample_seeds",
    "resampled_matrices",
    "study_comparisons",
    "study_pairs",
    "with_holm",
]

# significant: Holm-adjusted p (p_holm) ≤ 1 − confidence within the family of the file's `family` comparisons
COMPARISON_COLUMNS = (
    "pair", "group", "a", "b", "diff", "lo", "hi", "significant", "seeds_a", "seeds_b", "resamples", "confidence",
    "p_value", "p_holm", "family",
)  # fmt: skip

Pairs = Sequence[tuple[str, str, str]]  # (group, a, b): the difference is a − b in mIoU points


def study_pairs(models: Sequence[str], design: Pairs) -> list[tuple[str, str, str]]:
    """The discussed pairs among the runs ``models``: the ``design``'s fixed comparisons of {backbone}-{head}
    pairs (the report's: :func:`segmodels.report.design.fixed_pairs`), all among the plain runs (else among the
    runs of the first run's variant, :func:`segmodels.models.catalog.reference_variant`; a design's run name with
    tags, such as a distilled run's, is taken as it is); then each other variant against its architecture there,
    unless the design compares them already. Each as (group, a, b)."""
    present = set(models)
    ref = reference_variant(models)
    pairs = [(g, *(n if variant_of(n) else with_variant(n, ref) for n in (a, b))) for g, a, b in design]
    drawn = {frozenset(pair[1:]) for pair in pairs}
    pairs += [("variants", m, with_variant(pair_of(m), ref)) for m in models
              if variant_of(m) != ref and frozenset((m, with_variant(pair_of(m), ref))) not in drawn]  # fmt: skip
    return [(g, a, b) for g, a, b in pairs if a in present and b in present]


# --- resampled matrices (scored by segmodels.metrics.metrics_of_matrices, every metric at once) --------------


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(R, N) int64: how often each of N images is drawn in each of R resamples of N draws with replacement."""
    if n_images < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {n_images} images, {resamples} resamples")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    offsets = np.arange(resamples, dtype=np.int64)[:, None] * n_images
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


def resample_seeds(n_seeds: int, resamples: int, seed: int) -> np.ndarray:
    """(R, S) int64: the S seed indices, drawn with replacement, of each of R resamples.

    Column k is drawn from the k-th uniform of its own stream, scaled to S, so every model with S seeds
    gets the same indices (paired) and one seed gives index 0 throughout (no seed variation to resample).
    """
    if n_seeds < 1 or resamples < 1:
        raise ValueError(f"need at least one seed and one resample, got {n_seeds} seeds, {resamples} resamples")
    # A child stream of stats.seed: the image draws of resample_counts stay what they were with one seed.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    uniforms = rng.random((n_seeds, resamples)).T  # filled row by row: column k does not depend on S
    return np.minimum((uniforms * n_seeds).astype(np.int64), n_seeds - 1)


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


@dataclass
class ModelBootstrap:
    """One model's scores (percent, mean over its seeds) with intervals, seed std and bootstrap samples."""

    model: str
    seeds: int
    interval: dict[str, Interval]  # metric → seed mean of the full-set scores, interval over seeds and images
    seed_std: dict[str, float]  # standard deviation over seeds of the full-set scores; NaN for one seed
    boot_std: dict[str, float]  # standard deviation of the resampled seed mean over images alone (all seeds kept)
    samples: dict[str, np.ndarray]  # metric → (R,) two-level resampled seed means, for paired differences


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
    """Paired two-level bootstrap of every model: ``per_image`` maps a model to one (N, C, C) array per seed.

    Every array must describe the same N images (the same validation split in the same order); that is
    what makes the draws shared and the differences paired. Scores, one per metric of
    :data:`segmodels.metrics.METRICS`, are returned in percent.
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
        drawn = resample_seeds(len(arrays), cfg.resamples, cfg.seed)
        interval, seed_std, boot_std, samples = {}, {}, {}, {}
        for key in metric_keys():
            values = np.array([float(f[key]) for f in full]) * 100
            per_seed = np.stack([b[key] for b in boot], axis=1) * 100  # (R, S)
            two_level = np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)
            lo, hi = _percentiles(two_level, cfg.confidence)
            interval[key] = Interval(float(values.mean()), lo, hi)
            seed_std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            images_only = per_seed.mean(axis=1)
            finite = images_only[np.isfinite(images_only)]
            boot_std[key] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            samples[key] = two_level
        out[model] = ModelBootstrap(model, len(arrays), interval, seed_std, boot_std, samples)
    return out


@dataclass(frozen=True)
class Comparison:
    """The paired difference a − b of one metric (points), with its interval, p-values and verdict."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    group: str = ""
    seeds_a: int = 1
    seeds_b: int = 1
    p_value: float = math.nan  # two-sided bootstrap p-value of this difference alone
    p_holm: float = math.nan  # Holm-adjusted within its family; NaN when it was not tested in one
    family: int = 0  # how many comparisons the adjustment covered
    confidence: float = 0.95

    @property
    def tested(self) -> bool:
        """Adjusted for multiplicity: the verdict comes from :attr:`p_holm`."""
        return math.isfinite(self.p_holm)

    @property
    def significant(self) -> bool:
        """Holm-adjusted p ≤ 1 − confidence; a comparison made alone (no family): its interval excludes zero."""
        if self.tested:
            return self.p_holm <= 1 - self.confidence
        return math.isfinite(self.lo) and math.isfinite(self.hi) and (self.lo > 0 or self.hi < 0)

    def flipped(self) -> Comparison:
        """b − a: the same comparison seen from the other model (the p-values are two-sided)."""
        return replace(self, a=self.b, b=self.a, diff=-self.diff, lo=-self.hi, hi=-self.lo,
                       seeds_a=self.seeds_b, seeds_b=self.seeds_a)  # fmt: skip


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from resampled differences: 2·min(P(d ≤ 0), P(d ≥ 0)), each
    share counted as (1 + count) / (1 + R) so that R resamples never claim p below 2 / (1 + R)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return min(1.0, 2 * (1 + tail) / (1 + d.size))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given; NaN stays NaN and is not counted in the family.

    The i-th smallest of m p-values becomes max over j ≤ i of min(1, (m − j + 1)·p_(j)); rejecting where the
    adjusted value is ≤ alpha is Holm's procedure at family-wise error alpha.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (finite.size - rank) * p[i]))  # monotone: a later p never rejects first
        adjusted[i] = running
    return adjusted.tolist()


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons as one family: each with its Holm-adjusted p-value and the family size."""
    adjusted = holm([c.p_value for c in comparisons])
    family = sum(math.isfinite(q) for q in adjusted)
    return [replace(c, p_holm=q, family=family if math.isfinite(q) else 0)
            for c, q in zip(comparisons, adjusted, strict=True)]  # fmt: skip


def compare(
    boots: Mapping[str, ModelBootstrap], a: str, b: str, *, metric: str = "miou", confidence: float = 0.95,
    group: str = "",
) -> Comparison:  # fmt: skip
    """The paired bootstrap interval and p-value of ``metric``(a) − ``metric``(b) in points, not yet adjusted."""
    for model in (a, b):
        if model not in boots:
            raise ValueError(f"no bootstrap of {model}: its per-image confusion matrices are missing")
    ba, bb = boots[a], boots[b]
    differences = ba.samples[metric] - bb.samples[metric]
    lo, hi = _percentiles(differences, confidence)
    diff = ba.interval[metric].estimate - bb.interval[metric].estimate
    return Comparison(a, b, diff, lo, hi, group, ba.seeds, bb.seeds, bootstrap_p_value(differences),
                      confidence=confidence)  # fmt: skip


def study_comparisons(
    boots: Mapping[str, ModelBootstrap], cfg: StatsConfig | None = None, *, design: Pairs
) -> list[Comparison]:
    """The discussed pairs (:func:`study_pairs` of ``design``) among ``boots``, compared and Holm-adjusted as one
    family."""
    cfg = cfg or StatsConfig()
    pairs = study_pairs(list(boots), design)
    return with_holm([compare(boots, a, b, confidence=cfg.confidence, group=g) for g, a, b in pairs])


def comparisons_table(
    boots: Mapping[str, ModelBootstrap], cfg: StatsConfig | None = None, *, design: Pairs
) -> pd.DataFrame:
    """:func:`study_comparisons` as a pandas table of :data:`COMPARISON_COLUMNS` (mIoU differences in points)."""
    import pandas as pd

    cfg = cfg or StatsConfig()
    rows = [
        {"pair": f"{c.a} vs {c.b}", "group": c.group, "a": c.a, "b": c.b, "diff": c.diff, "lo": c.lo, "hi": c.hi,
         "significant": c.significant, "seeds_a": c.seeds_a, "seeds_b": c.seeds_b, "resamples": cfg.resamples,
         "confidence": c.confidence, "p_value": c.p_value, "p_holm": c.p_holm, "family": c.family}
        for c in study_comparisons(boots, cfg, design=design)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def comparisons_from_table(table: pd.DataFrame) -> list[Comparison]:
    """The rows of a comparisons.csv table (:func:`comparisons_table`) as :class:`Comparison` objects."""
    return [
        Comparison(str(r.a), str(r.b), float(r.diff), float(r.lo), float(r.hi), str(r.group), int(r.seeds_a),
                   int(r.seeds_b), float(r.p_value), float(r.p_holm), int(r.family), float(r.confidence))
        for r in table.itertuples()
    ]  # fmt: skip


def bootstrap_study(cfg: StudyConfig, results: str | Path) -> tuple[dict[str, ModelBootstrap], list[str]]:
    """Bootstrap every run of ``cfg`` from its run folders under ``results/{experiment}``, with ``cfg.stats``.

    A model is bootstrapped when every evaluated seed (``metrics.json`` present) has its
    ``confusion_per_image.npy``, so the estimate is the same seed mean as the summary's; the others are
    named in the returned notes.
    """
    per_image: dict[str, list[np.ndarray]] = {}
    notes = []
    for model in run_names(cfg):
        folders = [RunFolder(run_dir(results, cfg.experiment, model, seed)) for seed in cfg.seeds]
        evaluated = [f for f in folders if f.metrics.is_file()]
        lacking = [f for f in evaluated if not f.confusion_per_image.is_file()]
        if lacking:
            notes.append(f"{model}: no interval, {lacking[0].confusion_per_image} not found (re-run evaluate)")
        elif evaluated:
            per_image[model] = [load_per_image(f.confusion_per_image) for f in evaluated]
    return bootstrap_models(per_image, cfg.stats), notes
