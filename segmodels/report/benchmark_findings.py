"""The finding on small objects and boundaries: which context module, and which backbone, gains most in iIoU and in
Boundary IoU, with paired bootstrap intervals and Holm-adjusted p-values.

The families are the report's: each context module on :data:`~segmodels.report.design.CONTEXT_BACKBONE` against the
plain head there (:data:`~segmodels.report.design.BASELINE_HEAD`, FCN: what a context module adds over none), and the
backbone pairs under :data:`~segmodels.report.design.BACKBONE_HEAD` (:data:`~segmodels.report.design.BACKBONE_PAIRS`).
Each family is Holm-adjusted on its own for each metric (:func:`segmodels.study.significance.with_holm`): a question
of its own beside the mIoU family of :mod:`segmodels.study.stats`. The differences are bootstrapped from the runs'
per-image statistics (``confusion_per_image.npy`` and ``statistics_per_image.npz``), loaded once for the finding and
only for the runs it compares, with the resample count and seed of the study's intervals, so that they are drawn
from the same resampled image sets as summary.csv's. A run without per-image statistics gets its difference from
summary.csv and is marked as not tested. iIoU exists only for Cityscapes-format data with instance ids: elsewhere
its clause is left out and Boundary IoU stands alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from segmodels.models import catalog
from segmodels.models.catalog import display_name
from segmodels.report import design
from segmodels.report.results import Study
from segmodels.report.verdicts import resamples_used, worded
from segmodels.study.runs import RunFolder
from segmodels.study.significance import Comparison, resample_count, with_holm
from segmodels.study.stats import ModelBootstrap, bootstrap_models, compare, load_statistics

__all__ = ["TESTED", "finding_small_objects"]

TESTED = {"iiou": "iIoU", "biou": "boundary IoU"}  # the metrics the finding tests, as its sentences name them


def _module(model: str) -> str:
    return catalog.head(catalog.arch_of(model)[1]).label


def _backbone(model: str) -> str:
    return catalog.backbone(catalog.arch_of(model)[0]).label


def _bootstraps(study: Study, models: Sequence[str], family: int) -> dict[str, ModelBootstrap]:
    """The paired bootstrap of ``models`` whose every evaluated seed has per-image statistics, with the resample
    count behind the study's intervals (else ``stats.resamples`` for a family of ``family``) and ``stats.seed``."""
    per_image = {}
    for model in dict.fromkeys(models):
        folders = [RunFolder(run) for run in study.runs(model)]
        if folders and all(f.confusion_per_image.is_file() for f in folders):
            per_image[model] = [load_statistics(f.confusion_per_image) for f in folders]
    stats = study.cfg.stats
    count = resamples_used(study) or resample_count(stats.resamples, stats.confidence, family)
    return bootstrap_models(per_image, replace(stats, resamples=count)) if per_image else {}


def _difference(study: Study, boots: Mapping[str, ModelBootstrap], a: str, b: str, key: str) -> Comparison:
    """``key``(a) − ``key``(b) in points: paired bootstrap where both have the metric's statistics, else summary.csv's
    difference without an interval (not tested)."""
    if all(m in boots and math.isfinite(getattr(boots[m].interval.get(key), "estimate", math.nan)) for m in (a, b)):
        return compare(boots, a, b, metric=key, confidence=study.cfg.stats.confidence)
    diff = study.value(a, key) - study.value(b, key)
    return Comparison(a, b, diff, math.nan, math.nan, confidence=study.cfg.stats.confidence)


def _worded(study: Study, c: Comparison) -> str:
    """``95% CI [+0.40, +3.10], Holm p = 0.012: significant``, as :func:`segmodels.report.verdicts.verdict` words
    an mIoU difference."""
    if not (math.isfinite(c.lo) and math.isfinite(c.hi)):
        return "not tested: no per-image statistics"
    return worded(study, c)


def _significant(comparisons: list[Comparison], what: str, where: str = "") -> str:
    """``, 2 of 3 modules differ significantly``: how many of a tested family's differences are significant."""
    tested = [c for c in comparisons if c.tested]
    if len(tested) < 2:
        return ""
    apart = sum(c.significant for c in tested)
    return f", {apart} of {len(tested)} {what} {'differs' if apart == 1 else 'differ'} significantly{where}"


def _family(count: int, what: str) -> str:
    """`` Holm-adjusted over the 3 modules``; nothing for one comparison, which is its own family."""
    return f", Holm-adjusted over the {count} {what}s for each metric" if count > 1 else ""


def _module_gains(study: Study, boots: Mapping[str, ModelBootstrap], base: str, modules: list[str], key: str) -> str:
    """The module that gains most over ``base`` in ``key``, or that none gains, with its verdict."""
    word = TESTED[key]
    if study.value(base, key) is None:
        return f"{word} not available for {display_name(base)}"
    members = [m for m in modules if study.value(m, key) is not None]
    if not members:
        return f"{word} not available for the other modules"
    comparisons = with_holm([_difference(study, boots, m, base, key) for m in members])
    best = max(comparisons, key=lambda c: c.diff)
    if best.diff > 0:
        text = f"{_module(best.a)} gains most in {word}, {best.diff:.2f} points ({_worded(study, best)})"
    elif best.diff == 0:
        text = f"none gains in {word}, {_module(best.a)} ties with it ({_worded(study, best)})"
    else:
        text = f"none gains in {word}, {_module(best.a)} drops least, {-best.diff:.2f} points ({_worded(study, best)})"
    return text + _significant(comparisons, "modules", f" from {_module(base)}")


def _backbone_lead(study: Study, boots: Mapping[str, ModelBootstrap], pairs: list[tuple[str, str]], key: str) -> str:
    """The largest difference of ``key`` among the backbone pairs, larger minus smaller, with its verdict."""
    word = TESTED[key]
    defined = [(a, b) for a, b in pairs if study.value(a, key) is not None and study.value(b, key) is not None]
    if not defined:
        return f"{word} not available"
    comparisons = with_holm([_difference(study, boots, a, b, key) for a, b in defined])
    largest = max(comparisons, key=lambda c: abs(c.diff))
    largest = largest if largest.diff >= 0 else largest.flipped()
    return (f"the largest {word} difference is {_backbone(largest.a)} over {_backbone(largest.b)}, "
            f"{largest.diff:.2f} points ({_worded(study, largest)})"
            + _significant(comparisons, "pairs"))  # fmt: skip


def finding_small_objects(study: Study) -> str:
    """Over the plain head on the context backbone, the module that gains most in iIoU and the one in Boundary IoU;
    among the backbones, the largest difference of each; what is missing where an input is."""
    keys = [k for k in TESTED if any(study.value(m, k) is not None for m in study.finished())]
    if not keys:
        return ("Not available: no run has iIoU or boundary IoU scores (evaluated before they existed, or without "
                "per-image statistics; re-run 'segmodels evaluate').")  # fmt: skip
    base = study.reference_run(design.on_context_backbone(design.BASELINE_HEAD))
    modules = [m for m in map(study.reference_run, design.context_models())
               if m != base and study.value(m, "miou") is not None]  # fmt: skip
    pairs = [tuple(study.reference_run(design.under_backbone_head(b)) for b in pair) for pair in design.BACKBONE_PAIRS]
    pairs = [(a, b) for a, b in pairs if study.value(a, "miou") is not None and study.value(b, "miou") is not None]
    present = study.value(base, "miou") is not None
    compared = [*([base, *modules] if present else []), *(m for pair in pairs for m in pair)]
    boots = _bootstraps(study, compared, max(len(modules), len(pairs), 1))
    backbone = catalog.backbone(design.CONTEXT_BACKBONE).label
    if not present:
        text = f"Not available for the context modules: no {display_name(base)} run to measure their gains from."
    elif not modules:
        text = f"Not available for the context modules: no module on {backbone} besides {_module(base)} has results."
    else:
        text = (f"Over the plain {_module(base)} head on {backbone} (paired bootstrap{_family(len(modules), 'module')}): "
                + "; ".join(_module_gains(study, boots, base, modules, k) for k in keys) + ".")  # fmt: skip
    if pairs:
        head = catalog.head(design.BACKBONE_HEAD).label
        text += (f" Among the backbones ({head} head{_family(len(pairs), 'pair')}): "
                 + "; ".join(_backbone_lead(study, boots, pairs, k) for k in keys) + ".")  # fmt: skip
    return text
