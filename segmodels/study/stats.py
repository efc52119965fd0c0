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

Several training seeds: seeds and images are crossed factors (every seed is scored on every image), not seeds
nested in images, so each is resampled on its own and the two deviations are added (on resampling crossed designs,
Owen, *The pigeonhole bootstrap*, Ann. Appl. Stat. 2007): the image part is the image bootstrap of the mean over
all S seeds; the seed part draws S of the S seeds with replacement and takes the deviation of their full-set
scores' mean from the mean of all S. Drawing S of S values spreads their mean by the plug-in variance, (S − 1)/S of
the unbiased s²/S (two thirds of the seed part for three seeds), so the seed deviation is scaled by
sqrt(S / (S − 1)) (:func:`seed_scale`): the seed part then has the variance s²/S of a mean over seeds. No
resampling of a crossed design is exactly unbiased (McCullagh, *Resampling and exchangeable arrays*, Bernoulli 2000): the seed × image
interaction, whose share of the variance is divided by S·N, is counted twice, once in each part, which errs on the
wide side and is small beside the seed and image parts when N is hundreds of images (``tests/test_significance.py``
checks both on a simulated crossed design). The seed indices come from ``stats.seed`` too and are the same for
every model with as many seeds, so differences stay paired: the k-th seed of each model is, as a rule, the same
training seed (the same data order). With one seed there is no seed part and the interval covers the image sampling
only. :attr:`ModelBootstrap.boot_std` is the standard deviation of the image part alone, to set beside the
seed-to-seed :attr:`ModelBootstrap.seed_std` like for like.

Tests: each discussed difference gets a two-sided bootstrap p-value and the report's family of comparisons is
adjusted with Holm's step-down procedure (:mod:`segmodels.study.significance`), so the chance of calling any of
the dozen differences significant by accident stays at 1 − confidence. A verdict uses the adjusted p-value; the
percentile interval is shown beside it. ``stats.resamples: auto`` sizes the resamples to the family: the smallest
Holm-adjusted p-value R resamples allow, 2·family / (R + 1), is then a tenth of alpha or less.

Vectorised: the (R, N) count matrix times the (N, C·C) per-image matrices is one matrix product giving
all R resampled matrices, taken in blocks of :data:`BLOCK` resamples so that memory stays bounded for large R
and many classes; 1,000 resamples of 500 images × 19 classes take well under a second
(``benchmarks/bench_bootstrap.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmodels.metrics import METRICS, metric_keys, metrics_of
from segmodels.models.catalog import pair_of, reference_variant, variant_of, with_variant
from segmodels.study.matrix import run_names
from segmodels.study.runs import RunFolder, run_dir
from segmodels.study.schema import StatsConfig, StudyConfig
from segmodels.study.significance import Comparison, bootstrap_p_value, holm, holm_floor, resample_count, with_holm

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BLOCK",
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
    "holm_floor",
    "load_per_image",
    "load_statistics",
    "percentile_interval",
    "resample_count",
    "resample_counts",
    "resample_seeds",
    "resampled_matrices",
    "resampled_statistics",
    "seed_scale",
    "study_comparisons",
    "study_family",
    "study_pairs",
    "with_holm",
]

# significant: Holm-adjusted p (p_holm) ≤ 1 − confidence within the family of the file's `family` comparisons
COMPARISON_COLUMNS = (
    "pair", "group", "a", "b", "diff", "lo", "hi", "significant", "seeds_a", "seeds_b", "resamples", "confidence",
    "p_value", "p_holm", "family",
)  # fmt: skip

BLOCK = 1000  # resamples scored at a time: (BLOCK, C, C) float64 matrices, 180 MB for 150 classes
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
    return resampled_statistics({"confusion": per_image}, counts)["confusion"]


def resampled_statistics(per_image: Mapping[str, np.ndarray], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-image statistic (name → (N, ...)) summed over each resample: name → (R, ...) float64."""
    out = {}
    for name, array in per_image.items():
        n = array.shape[0]
        if counts.shape[1] != n:
            raise ValueError(f"{counts.shape[1]} image counts per resample for {n} images of {name}")
        flat = np.asarray(array, dtype=np.float64).reshape(n, -1)
        out[name] = (counts.astype(np.float64) @ flat).reshape(-1, *array.shape[1:])
    return out


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
    # metric → seed mean of the full-set scores, interval over seeds and images; only the metrics whose statistics
    # every seed has (no iIoU without instance ids)
    interval: dict[str, Interval]
    seed_std: dict[str, float]  # standard deviation over seeds of the full-set scores; NaN for one seed
    boot_std: dict[str, float]  # standard deviation of the resampled seed mean over images alone (all seeds kept)
    samples: dict[str, np.ndarray]  # metric → (R,) resampled seed means over seeds and images, for differences

    @property
    def resamples(self) -> int:
        """R, the number of resamples behind the intervals and the differences' p-values."""
        return len(next(iter(self.samples.values()), ()))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval at ``confidence`` of the finite ``samples`` (NaN, NaN where none is)."""
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


def load_statistics(path: str | Path) -> dict[str, np.ndarray]:
    """The per-image statistics of an evaluation (name → (N, ...); see :mod:`segmodels.scoring`):
    ``confusion_per_image.npy`` at ``path`` and, where the evaluation wrote it, ``statistics_per_image.npz`` beside
    it. Evaluations written before it have the confusion matrices alone, so their other metrics stay undefined."""
    from segmodels.scoring import AXIS_NAMES
    from segmodels.study.runs import STATISTICS_PER_IMAGE

    path = Path(path)
    arrays = {"confusion": load_per_image(path)}
    extra = path.with_name(STATISTICS_PER_IMAGE)
    if extra.is_file():
        try:
            with np.load(extra, allow_pickle=False) as data:
                loaded = {name: data[name] for name in data.files if name not in AXIS_NAMES.values()}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{extra}: not a readable statistics file ({exc}); evaluate again") from exc
        for name, array in loaded.items():
            if array.shape[:1] != arrays["confusion"].shape[:1]:
                raise ValueError(f"{extra}: '{name}' has {array.shape[:1]} images, {path.name} "
                                 f"{arrays['confusion'].shape[0]}; evaluate again")  # fmt: skip
        arrays |= loaded
    return arrays


def _as_statistics(per_image: np.ndarray | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    return per_image if isinstance(per_image, Mapping) else {"confusion": per_image}


def _resampled_scores(per_image: np.ndarray | Mapping[str, np.ndarray], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric (fractions) of each resample's summed statistics, :data:`BLOCK` resamples at a time."""
    stats = _as_statistics(per_image)
    blocks = [metrics_of(resampled_statistics(stats, counts[start : start + BLOCK]))
              for start in range(0, len(counts), BLOCK)]  # fmt: skip
    return {key: np.concatenate([np.asarray(b[key], dtype=np.float64) for b in blocks]) for key in metric_keys()}


def seed_scale(seeds: int) -> float:
    """sqrt(S / (S − 1)): what a resampled seed mean's deviation is scaled by, so that drawing S of S seeds spreads
    it by s²/S, not by the plug-in (S − 1)/S · s²/S; 1 for one seed (nothing is drawn)."""
    return math.sqrt(seeds / (seeds - 1)) if seeds > 1 else 1.0


def bootstrap_models(
    per_image: Mapping[str, Sequence[np.ndarray]], cfg: StatsConfig | None = None, *, family: int = 0
) -> dict[str, ModelBootstrap]:
    """Paired bootstrap over seeds and images of every model: ``per_image`` maps a model to one (N, C, C) array
    of per-image confusion matrices per seed, or one mapping of per-image statistics (:func:`load_statistics`).

    Every array must describe the same N images (the same validation split in the same order); that is
    what makes the draws shared and the differences paired. Scores, one per metric of
    :data:`segmodels.metrics.METRICS`, are returned in percent. ``family``: the number of comparisons the
    resamples will be tested in, which ``stats.resamples: auto`` sizes them for
    (:func:`segmodels.study.significance.resample_count`).
    """
    cfg = cfg or StatsConfig()
    if not 0 < cfg.confidence < 1:
        raise ValueError(f"stats.confidence must be between 0 and 1, got {cfg.confidence}")
    resamples = resample_count(cfg.resamples, cfg.confidence, family)
    shapes = {(model, i): _as_statistics(a)["confusion"].shape for model, arrays in per_image.items()
              for i, a in enumerate(arrays)}  # fmt: skip
    if not shapes:
        return {}
    first_key, first = next(iter(shapes.items()))
    for key, shape in shapes.items():
        if shape != first or len(shape) != 3:
            raise ValueError(
                f"per-image matrices of {key[0]} (seed #{key[1]}) have shape {shape}, those of {first_key[0]} "
                f"{first}: a paired bootstrap needs the same validation images for every model"
            )
    counts = resample_counts(first[0], resamples, cfg.seed)
    out = {}
    for model, arrays in per_image.items():
        if not arrays:
            continue
        full = [metrics_of({name: v.sum(axis=0) for name, v in _as_statistics(a).items()}) for a in arrays]
        boot = [_resampled_scores(a, counts) for a in arrays]
        drawn = resample_seeds(len(arrays), resamples, cfg.seed)
        scale = seed_scale(len(arrays))
        interval, seed_std, boot_std, samples = {}, {}, {}, {}
        present = set.intersection(*(set(_as_statistics(a)) for a in arrays))
        for key in metric_keys():
            if not set(METRICS[key].inputs) <= present:  # e.g. no instance ids: no iIoU, rather than a NaN interval
                continue
            values = np.array([float(f[key]) for f in full]) * 100
            per_seed = np.stack([b[key] for b in boot], axis=1) * 100  # (R, S)
            images_only = per_seed.mean(axis=1)  # every seed, on the resample's images
            seeds_only = values[drawn].mean(axis=1) - values.mean()  # S of S seeds' full-set scores, centred (R,)
            crossed = images_only + scale * seeds_only
            lo, hi = percentile_interval(crossed, cfg.confidence)
            interval[key] = Interval(float(values.mean()), lo, hi)
            seed_std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            finite = images_only[np.isfinite(images_only)]
            boot_std[key] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            samples[key] = crossed
        out[model] = ModelBootstrap(model, len(arrays), interval, seed_std, boot_std, samples)
    return out


def compare(
    boots: Mapping[str, ModelBootstrap], a: str, b: str, *, metric: str = "miou", confidence: float = 0.95,
    group: str = "",
) -> Comparison:  # fmt: skip
    """The paired bootstrap interval and p-value of ``metric``(a) − ``metric``(b) in points, not yet adjusted."""
    for model in (a, b):
        if model not in boots:
            raise ValueError(f"no bootstrap of {model}: its per-image confusion matrices are missing")
    ba, bb = boots[a], boots[b]
    for model, boot in ((a, ba), (b, bb)):
        if metric not in boot.samples:
            raise ValueError(f"no {metric} for {model}: its evaluation lacks the statistics it needs")
    if ba.resamples != bb.resamples:
        raise ValueError(f"{a} has {ba.resamples} resamples, {b} {bb.resamples}: paired differences need the same "
                         "resampled image sets")  # fmt: skip
    differences = ba.samples[metric] - bb.samples[metric]
    lo, hi = percentile_interval(differences, confidence)
    diff = ba.interval[metric].estimate - bb.interval[metric].estimate
    return Comparison(a, b, diff, lo, hi, group, ba.seeds, bb.seeds, bootstrap_p_value(differences),
                      confidence=confidence, resamples=ba.resamples)  # fmt: skip


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
         "significant": c.significant, "seeds_a": c.seeds_a, "seeds_b": c.seeds_b, "resamples": c.resamples,
         "confidence": c.confidence, "p_value": c.p_value, "p_holm": c.p_holm, "family": c.family}
        for c in study_comparisons(boots, cfg, design=design)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _count(value: object) -> int:
    number = float(value)  # type: ignore[arg-type]
    return int(number) if math.isfinite(number) else 0


def comparisons_from_table(table: pd.DataFrame) -> list[Comparison]:
    """The rows of a comparisons.csv table (:func:`comparisons_table`) as :class:`Comparison` objects."""
    return [
        Comparison(str(r.a), str(r.b), float(r.diff), float(r.lo), float(r.hi), str(r.group), int(r.seeds_a),
                   int(r.seeds_b), float(r.p_value), float(r.p_holm), int(r.family), float(r.confidence),
                   _count(getattr(r, "resamples", 0)))
        for r in table.itertuples()
    ]  # fmt: skip


def study_family(models: Sequence[str], design: Pairs | None) -> int:
    """How many comparisons the ``design`` tests among ``models`` (:func:`study_pairs`); 0 without a design."""
    return 0 if design is None else len(study_pairs(list(models), design))


def bootstrap_study(
    cfg: StudyConfig, results: str | Path, *, design: Pairs | None = None
) -> tuple[dict[str, ModelBootstrap], list[str]]:
    """Bootstrap every run of ``cfg`` from its run folders under ``results/{experiment}``, with ``cfg.stats``;
    with ``design`` (the report's fixed comparisons) ``stats.resamples: auto`` is sized for the family it tests.

    A model is bootstrapped when every evaluated seed (``metrics.json`` present) has its
    ``confusion_per_image.npy``, so the estimate is the same seed mean as the summary's; the others are
    named in the returned notes.
    """
    per_image: dict[str, list[Mapping[str, np.ndarray]]] = {}
    notes = []
    for model in run_names(cfg):
        folders = [RunFolder(run_dir(results, cfg.experiment, model, seed)) for seed in cfg.seeds]
        evaluated = [f for f in folders if f.metrics.is_file()]
        lacking = [f for f in evaluated if not f.confusion_per_image.is_file()]
        if lacking:
            notes.append(f"{model}: no interval, {lacking[0].confusion_per_image} not found (re-run evaluate)")
        elif evaluated:
            per_image[model] = [load_statistics(f.confusion_per_image) for f in evaluated]
    return bootstrap_models(per_image, cfg.stats, family=study_family(per_image, design)), notes
