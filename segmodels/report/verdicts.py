"""How a finding words a comparison: the inputs it lacks, the confidence level, the verdict on a difference, the
rule the verdicts follow, and what the resample count allowed them to show.

A Holm-adjusted bootstrap p-value cannot go below 2·family / (resamples + 1) (:mod:`segmodels.study.significance`).
The report states that floor beside the verdicts; where it lies above alpha no comparison could have been called
significant, so the verdict reads "not testable at N resamples" rather than "not distinguishable", and the note
gives the count that would be needed. A p-value at the floor (no resample crossed zero) is printed as "≤ floor".
"""

from __future__ import annotations

from collections.abc import Sequence

from segmodels.models.catalog import display_name
from segmodels.report.results import Study
from segmodels.study.significance import (
    FLOOR_MARGIN,
    Comparison,
    auto_resamples,
    holm_floor,
    resamples_needed,
)

__all__ = ["level", "need", "p_text", "resampling", "resamples_used", "untested", "verdict", "verdict_rule",
           "verdict_word"]  # fmt: skip


def need(study: Study, models: Sequence[str], keys: Sequence[str]) -> str | None:
    """None when every model has every key, else a sentence naming what is missing."""
    names = {"miou": "mIoU", "latency_ms": "latency"}
    lacking = []
    for m in models:
        absent = [names.get(k, k) for k in keys if study.value(m, k) is None]
        if m not in study.summary.index:
            lacking.append(f"{display_name(m)} (not among this study's models)")
        elif absent:
            lacking.append(f"{display_name(m)} ({', '.join(absent)})")
    return f"Not available, inputs missing: {'; '.join(lacking)}." if lacking else None


def level(study: Study) -> str:
    return f"{study.cfg.stats.confidence * 100:g}%"


def _alpha(study: Study) -> str:
    return f"{(1 - study.cfg.stats.confidence) * 100:g}%"


def _number(p: float) -> str:
    return "0.001" if p < 0.001 else f"{p:.3f}"


def p_text(c: Comparison) -> str:
    """The Holm-adjusted p-value as printed: ``0.030``, ``< 0.001``, or ``≤ 0.005`` at the resampling floor."""
    if c.at_floor:
        return f"≤ {_number(c.p_holm)}" if c.p_holm >= 0.001 else "< 0.001"
    return "< 0.001" if c.p_holm < 0.001 else f"{c.p_holm:.3f}"


def verdict_word(c: Comparison) -> str:
    """significant, not distinguishable, or not testable (the resamples could not reach alpha in its family)."""
    if c.significant:
        return "significant"
    return "not distinguishable" if c.testable else f"not testable at {c.resamples:,} resamples"


def verdict(study: Study, a: str, b: str) -> str | None:
    """``95% CI [+1.02, +2.31], Holm p = 0.010: significant`` for the mIoU difference a − b, or None without
    an interval; a comparison outside a tested family has no p (its verdict is then the interval's)."""
    c = study.comparison(a, b)
    return None if c is None else worded(study, c)


def worded(study: Study, c: Comparison) -> str:
    """A comparison's interval, Holm p and verdict word, in the words of :func:`verdict` (any metric)."""
    text = p_text(c) if c.tested else ""
    test = f", Holm p {text if text[0] in '<≤' else '= ' + text}" if text else ""
    return f"{level(study)} CI [{c.lo:+.2f}, {c.hi:+.2f}]{test}: {verdict_word(c)}"


def resamples_used(study: Study) -> int | None:
    """The resample count behind the study's intervals: summary.csv's ``boot_resamples``, else the comparisons',
    else a number set in ``stats.resamples``; None when none is known."""
    if "boot_resamples" in study.summary.columns:
        counts = study.summary["boot_resamples"].dropna()
        if len(counts):
            return int(counts.max())
    recorded = [c.resamples for c in study.comparisons if c.resamples > 0]
    if recorded:
        return max(recorded)
    setting = study.cfg.stats.resamples
    return setting if isinstance(setting, int) else None


def resampling(study: Study) -> str:
    """How many resamples the tests used and why, the smallest Holm-adjusted p-value they allow, and, where it is
    above alpha, that no comparison can be declared significant and how many resamples would be needed."""
    tested = [c for c in study.comparisons if c.tested and c.resamples > 0]
    if not tested:
        return ""
    family, count = max(c.family for c in tested), max(c.resamples for c in tested)
    confidence = study.cfg.stats.confidence
    alpha, floor, auto = 1 - confidence, holm_floor(count, family), auto_resamples(family, confidence)
    setting = study.cfg.stats.resamples
    if setting in (None, "auto"):
        why = "chosen for the family's size (stats.resamples: auto)" if count == auto else "not sized for this family"
    else:
        why = "as set in stats.resamples" if count == setting else f"not the {setting:,} of stats.resamples"
    text = (f"{count:,} resamples, {why}: the smallest Holm-adjusted p-value they allow over the family of {family} "
            f"is 2·{family} / ({count:,} + 1) = {floor:.4f}")  # fmt: skip
    if floor > alpha:
        need = resamples_needed(family, alpha)
        return (f"{text}, above {_alpha(study)}, so no comparison can be declared significant at this resample "
                f"count; that needs at least {need:,} resamples (auto: {auto:,}).")  # fmt: skip
    if floor > alpha / FLOOR_MARGIN:
        text += (f", more than a tenth of {_alpha(study)}: a p-value near it is bounded by the resample count, not "
                 f"by the data (auto: {auto:,} resamples)")  # fmt: skip
    else:
        text += f", at most a tenth of {_alpha(study)}"
    if any(c.at_floor for c in tested):
        text += "; ≤: no resample crossed zero, so the p-value is at most that floor"
    return text + "."


def untested(study: Study) -> list[str]:
    """The finished runs no comparison of the report's family includes."""
    compared = {m for c in study.comparisons for m in (c.a, c.b)}
    return [m for m in study.finished() if m not in compared]


def verdict_rule(study: Study) -> str:
    """How the verdicts on the study's differences were reached, over how large a family and at how many
    resamples, and which runs no comparison tests."""
    shown = study.comparisons
    if not shown:
        return ""
    alpha = _alpha(study)
    tested = [c for c in shown if c.tested]
    if len(tested) < len(shown):
        text = (f"A difference is called significant when its {level(study)} interval excludes zero, each of the "
                f"{len(shown)} comparisons on its own: not adjusted for multiple comparisons.")  # fmt: skip
    else:
        family = max(c.family for c in tested)
        part = f" ({len(shown)} of them shown here)" if family != len(shown) else ""
        text = (
            f"A difference is called significant when its two-sided paired bootstrap p-value, adjusted by the Holm–"
            f"Bonferroni method over the family of {family} pairwise comparisons{part}, is at most {alpha}, which "
            f"keeps the chance of any false 'significant' among them at most {alpha}."
        )
        if how := resampling(study):
            text += f" {how}"
    if left := untested(study):
        text += f" In no comparison, so untested: {', '.join(display_name(m) for m in left)}."
    return text
