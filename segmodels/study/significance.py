"""Tests of the study's differences: bootstrap p-values, Holm's adjustment, and how many resamples a family needs.

A bootstrap p-value of R resamples cannot go below 2 / (R + 1) (the +1 correction of Davison and Hinkley, *Bootstrap
Methods and their Application*, 1997, ch. 4), and Holm's step-down procedure (Holm, *A simple sequentially
rejective multiple test procedure*, Scand. J. Statist. 1979) multiplies the smallest of a family of m p-values by
m, so no Holm-adjusted p-value of the family can go below the *floor* 2·m / (R + 1). A fixed R therefore caps what
a family can show: with 1,000 resamples a family of more than 25 comparisons can reject nothing at 5%, and the
differences clear enough to sit at the floor all get the same adjusted p. ``stats.resamples: auto`` takes R from
the family, large enough that the floor is at most a tenth (:data:`FLOOR_MARGIN`) of alpha = 1 − confidence; a
fixed count is used as given, and a family whose floor lies above alpha is reported as not testable at that count
(:attr:`Comparison.testable`), with the count it would need (:func:`resamples_needed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "AUTO_MIN_RESAMPLES",
    "FLOOR_MARGIN",
    "Comparison",
    "auto_resamples",
    "bootstrap_p_value",
    "holm",
    "holm_floor",
    "resample_count",
    "resamples_needed",
    "with_holm",
]

AUTO_MIN_RESAMPLES = 1000  # auto never uses fewer: percentile intervals need about this many in any case
FLOOR_MARGIN = 10  # auto: the smallest attainable Holm-adjusted p-value is at most alpha / FLOOR_MARGIN


def holm_floor(resamples: int, family: int) -> float:
    """The smallest Holm-adjusted p-value ``resamples`` bootstrap resamples can give in a family of ``family``:
    2·family / (resamples + 1), at most 1 (NaN without a family or a known resample count)."""
    if family < 1 or resamples < 1:
        return math.nan
    return min(1.0, 2 * family / (resamples + 1))


def resamples_needed(family: int, alpha: float, margin: float = 1) -> int:
    """The fewest resamples whose Holm floor in a family of ``family`` is at most ``alpha / margin``:
    ceil(2·family·margin / alpha) − 1."""
    if family < 1 or not 0 < alpha < 1 or margin <= 0:
        raise ValueError(f"need a family of at least 1, 0 < alpha < 1 and margin > 0, got {family}, {alpha}, {margin}")
    # rounded first: 2·12·10 / 0.05 is 4800.000000000001 in binary floating point
    return max(1, math.ceil(round(2 * family * margin / alpha, 9)) - 1)


def auto_resamples(family: int, confidence: float) -> int:
    """``stats.resamples: auto``: at least :data:`AUTO_MIN_RESAMPLES`, and with a family of ``family`` comparisons
    enough that its Holm floor is at most (1 − confidence) / :data:`FLOOR_MARGIN`."""
    if family < 1:
        return AUTO_MIN_RESAMPLES
    return max(AUTO_MIN_RESAMPLES, resamples_needed(family, 1 - confidence, FLOOR_MARGIN))


def resample_count(resamples: int | str | None, confidence: float, family: int = 0) -> int:
    """The resample count of a ``stats.resamples`` setting: a number as given, ``auto`` or None from the family
    (:func:`auto_resamples`; without a known family :data:`AUTO_MIN_RESAMPLES`)."""
    if resamples is None or resamples == "auto":
        return auto_resamples(family, confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"stats.resamples must be auto or a number of at least 1, got {resamples!r}")
    return resamples


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
    resamples: int = 0  # bootstrap resamples behind the p-values; 0: not recorded

    @property
    def tested(self) -> bool:
        """Adjusted for multiplicity: the verdict comes from :attr:`p_holm`."""
        return math.isfinite(self.p_holm)

    @property
    def floor(self) -> float:
        """The smallest Holm-adjusted p-value the resamples allow in this family (:func:`holm_floor`); NaN when
        untested or the resample count is not recorded."""
        return holm_floor(self.resamples, self.family) if self.tested else math.nan

    @property
    def testable(self) -> bool:
        """False when the resamples cannot reach alpha in this family (floor above 1 − confidence): no verdict of
        "significant" was possible, so "not distinguishable" would say more than the test did."""
        return not self.floor > 1 - self.confidence

    @property
    def at_floor(self) -> bool:
        """Holm p at the floor: no resample crossed zero, so the p-value is bounded by the resample count."""
        return self.floor < 1 and math.isclose(self.p_holm, self.floor, rel_tol=1e-9)

    @property
    def significant(self) -> bool:
        """Holm-adjusted p ≤ 1 − confidence; a comparison made alone (no family): its interval excludes zero."""
        if self.tested:
            return self.testable and self.p_holm <= 1 - self.confidence
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
