"""How a finding words a comparison: the inputs it lacks, the confidence level, the verdict on a difference."""

from __future__ import annotations

from collections.abc import Sequence

from segmodels.models.catalog import display_name
from segmodels.report.results import Study

__all__ = ["level", "need", "verdict"]


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


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(study: Study, a: str, b: str) -> str | None:
    """``95% CI [+1.02, +2.31], Holm p = 0.010: significant`` for the mIoU difference a − b, or None without
    an interval; a comparison outside a tested family has no p (its verdict is then the interval's)."""
    c = study.comparison(a, b)
    if c is None:
        return None
    word = "significant" if c.significant else "not distinguishable"
    test = f", Holm {_p(c.p_holm)}" if c.tested else ""
    return f"{level(study)} CI [{c.lo:+.2f}, {c.hi:+.2f}]{test}: {word}"
