"""The report's robustness section: each scored model's mIoU on corrupted validation images (the ImageNet-C
corruptions of :mod:`segmodels.data.corruptions`, scored by :mod:`segmodels.study.robustness`), from summary.csv's
robustness columns, ``robustness.csv`` and ``robustness_comparisons.csv``.

The table gives per scored model the clean mIoU on the robustness images, the mean corruption mIoU, its mean per
group and the relative robustness (mean corruption mIoU ÷ clean), each with its paired bootstrap interval, the best
of each column in bold. The findings name the most and the least robust model, the hardest and easiest group, and
the design's pairs whose difference in relative robustness or in mean corruption mIoU is significant by its
Holm-adjusted p-value, or say that none is. A study without ``robustness.enabled`` has no such columns and no section;
the figures are drawn by :mod:`segmodels.report.figures_robustness`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from segmodels.models.catalog import display_name
from segmodels.report.results import Study, _read_csv
from segmodels.report.tables import _column, _level, _table, _text
from segmodels.report.verdicts import p_text, verdict_word
from segmodels.study.robustness import COMPARISONS, GROUP_ORDER, TABLE
from segmodels.study.significance import Comparison
from segmodels.study.stats import COMPARISON_COLUMNS, comparisons_from_table

__all__ = ["FIGURE_WIDTH", "ROBUSTNESS_TITLE", "corruption_groups", "corruption_label", "group_label",
           "has_robustness", "read_robustness", "robust_groups", "robust_models", "robustness_findings",
           "robustness_section", "robustness_table"]  # fmt: skip

ROBUSTNESS_TITLE = "Robustness to image corruptions"
FIGURE_WIDTH = {"robustness_heatmap": 85, "robustness_severity": 100, "robustness_samples": 100}  # % of the text
CSV_COLUMNS = ("model", "corruption", "group", "severity", "miou", "miou_clean")  # the least robustness.csv holds
_METRICS = {"robustness_rel": "relative robustness", "miou_c_mean": "mean corruption mIoU"}  # comparisons.csv's


# --- what the study scored -------------------------------------------------------------------------------------


def has_robustness(study: Study) -> bool:
    """Whether summary.csv has the robustness columns (``robustness.enabled``)."""
    return any(c in study.summary.columns for c in ("miou_c_mean", "robustness_rel"))


def robust_models(study: Study) -> list[str]:
    """The runs with robustness scores, in the summary's order."""
    keys = ("miou_c_clean", "miou_c_mean", "robustness_rel")
    return [m for m in study.summary.index if any(study.value(m, k) is not None for k in keys)]


def robust_groups(study: Study) -> list[str]:
    """The corruption groups summary.csv has columns for: :data:`GROUP_ORDER` first, others in column order."""
    found = [c.removeprefix("miou_c_") for c in study.summary.columns
             if c.startswith("miou_c_") and not c.endswith(("_lo", "_hi"))]  # fmt: skip
    found = [g for g in found if g not in ("clean", "mean")]
    return [g for g in GROUP_ORDER if g in found] + [g for g in found if g not in GROUP_ORDER]


def corruption_label(name: str) -> str:
    """``gaussian_noise`` → ``Gaussian noise``: the registry's label, else the name in words."""
    from segmodels.data.corruptions import CORRUPTIONS

    entry = CORRUPTIONS.get(name)
    return entry.label if entry is not None else name.replace("_", " ").capitalize()


def group_label(group: str) -> str:
    return group.replace("_", " ").capitalize()


def read_robustness(study: Study) -> pd.DataFrame | None:
    """robustness.csv's rows of this study's runs (model × corruption × severity), or None when absent."""
    table = _read_csv(study.root / TABLE, CSV_COLUMNS)
    if table is None:
        return None
    table = table[table["model"].isin(study.summary.index)]
    return table.astype({"severity": int}) if len(table) else None


def corruption_groups(table: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(group, its corruptions) in robustness.csv: groups in :data:`GROUP_ORDER` (others after, by name),
    corruptions in the registry's order (others after, in the file's)."""
    from segmodels.data.corruptions import CORRUPTIONS

    rank = {c: i for i, c in enumerate(CORRUPTIONS)}
    seen = list(dict.fromkeys(table["corruption"].astype(str)))
    group_of = dict(zip(table["corruption"].astype(str), table["group"].astype(str), strict=True))
    groups = set(group_of.values())
    ordered = [g for g in GROUP_ORDER if g in groups] + sorted(groups - set(GROUP_ORDER))
    by_rank = sorted(seen, key=lambda c: (rank.get(c, len(rank)), seen.index(c)))
    return [(g, [c for c in by_rank if group_of[c] == g]) for g in ordered]


# --- the table -------------------------------------------------------------------------------------------------


def _interval_column(study: Study, models: Sequence[str], key: str, digits: int) -> list[dict[str, Any]]:
    """``41.20 (40.10 to 42.30)``: the value and its interval, the column's best in bold; – where not scored."""
    cells = _column([study.value(m, key) for m in models], digits, "max")
    for cell, m in zip(cells, models, strict=True):
        lo, hi = study.value(m, f"{key}_lo"), study.value(m, f"{key}_hi")
        if cell["t"] != "–" and lo is not None and hi is not None:  # no break inside the interval
            cell["t"] += f" ({lo:.{digits}f}\u00a0to\u00a0{hi:.{digits}f})"
    return cells


def _note(study: Study, models: Sequence[str], groups: Sequence[str]) -> str:
    table = read_robustness(study)
    images = sorted({int(n) for m in models if (n := study.value(m, "robust_images")) is not None})
    severities = (sorted(set(table["severity"])) if table is not None else None) or study.cfg.robustness.severities
    where = f"the first {' or '.join(map(str, images))} validation images" if images else "the validation images"
    text = (f"mIoU in % on {where}, clean and corrupted at severities {', '.join(map(str, severities))}, mean over "
            "seeds. Clean: the uncorrupted images. Mean: the mIoU averaged over severities and corruptions")  # fmt: skip
    if table is not None:
        listed = [f"{group_label(g)}: {', '.join(corruption_label(c) for c in cs)}"
                  for g, cs in corruption_groups(table) if g in groups]  # fmt: skip
        text += f"; each group's over its corruptions ({'; '.join(listed)})"
    return (text + ". Relative: mean ÷ clean, the share of its clean mIoU a model keeps. In parentheses the "
            f"{_level(study)} paired bootstrap interval over the images (and seeds), the same resampled images for "
            "every model and corruption. Best of each column in bold.")  # fmt: skip


def robustness_table(study: Study) -> dict[str, Any] | None:
    """Per scored model the clean, mean corruption and per-group mIoU and the relative robustness with their
    intervals, or None when no model was scored. A column no model has a value for is left out."""
    models = robust_models(study) if has_robustness(study) else []
    if not models:
        return None
    groups = robust_groups(study)
    specs = [  # (group, header, cells)
        ("", "Model", _text([display_name(m) for m in models])),
        ("mIoU (%)", "Clean", _interval_column(study, models, "miou_c_clean", 2)),
        ("mIoU (%)", "Mean", _interval_column(study, models, "miou_c_mean", 2)),
        *(("mIoU (%)", group_label(g), _interval_column(study, models, f"miou_c_{g}", 2)) for g in groups),
        ("", "Relative", _interval_column(study, models, "robustness_rel", 2)),
    ]
    specs = [s for s in specs if s[1] == "Model" or any(c["t"] != "–" for c in s[2])]
    table = _table(ROBUSTNESS_TITLE, [s[1] for s in specs], [s[2] for s in specs], "l" + "r" * (len(specs) - 1),
                   _note(study, models, groups))  # fmt: skip
    table["groups"] = []
    for group, *_ in specs:
        if table["groups"] and table["groups"][-1][0] == group:
            table["groups"][-1][1] += 1
        else:
            table["groups"].append([group, 1])
    return table


# --- the findings ----------------------------------------------------------------------------------------------


def _with_interval(study: Study, model: str, key: str) -> str:
    lo, hi = study.value(model, f"{key}_lo"), study.value(model, f"{key}_hi")
    return f" ({_level(study)} CI {lo:.2f}–{hi:.2f})" if lo is not None and hi is not None else ""


def _ranking(study: Study, models: Sequence[str]) -> str:
    v = study.value
    rel = {m: r for m in models if (r := v(m, "robustness_rel")) is not None}
    if not rel:
        return "Not available: no model has a relative robustness (clean mIoU of zero, or not yet summarised)."

    def keeps(m: str) -> str:
        clean, mean = v(m, "miou_c_clean"), v(m, "miou_c_mean")
        scores = f": {mean:.2f} mean corruption mIoU against {clean:.2f} clean" if None not in (clean, mean) else ""
        return (f"{display_name(m)} keeps {rel[m]:.2f} of its clean mIoU under corruption"
                f"{_with_interval(study, m, 'robustness_rel')}{scores}")  # fmt: skip

    best, worst = max(rel, key=rel.get), min(rel, key=rel.get)
    if len(rel) == 1:
        return f"{keeps(best)}."
    text = f"Most robust: {keeps(best)}; least robust: {keeps(worst)}."
    means = {m: x for m in models if (x := v(m, "miou_c_mean")) is not None}
    top = max(means, key=means.get) if means else best
    if top != best:
        text += (f" The highest mean corruption mIoU is {display_name(top)}'s, {means[top]:.2f}"
                 f"{_with_interval(study, top, 'miou_c_mean')}: it starts higher and keeps less.")  # fmt: skip
    return text


def _by_group(study: Study, models: Sequence[str]) -> str:
    """Per group the share of the clean mIoU the models keep, hardest group first."""
    v = study.value
    kept = {}
    for g in robust_groups(study):
        shares = {m: v(m, f"miou_c_{g}") / v(m, "miou_c_clean") for m in models
                  if v(m, f"miou_c_{g}") is not None and (v(m, "miou_c_clean") or 0) > 0}  # fmt: skip
        if shares:
            kept[g] = shares
    if not kept:
        return "Not available: no model has per-group scores and a clean mIoU."
    order = sorted(kept, key=lambda g: sum(kept[g].values()) / len(kept[g]))
    parts = []
    for g in order:
        shares = kept[g]
        best, worst = max(shares, key=shares.get), min(shares, key=shares.get)
        part = f"{group_label(g).lower()}, {shares[best]:.2f} ({display_name(best)})"
        parts.append(part + (f" to {shares[worst]:.2f} ({display_name(worst)})" if worst != best else ""))
    return ("Share of the clean mIoU kept per group (group mean corruption mIoU ÷ clean, point estimates), hardest "
            f"first: {'; '.join(parts)}.")  # fmt: skip


def _comparisons(study: Study) -> dict[str, list[Comparison]] | None:
    """robustness_comparisons.csv's comparisons among this study's runs, per metric; None when absent."""
    table = _read_csv(study.root / COMPARISONS, ("metric", *COMPARISON_COLUMNS))
    if table is None:
        return None
    names = set(study.summary.index)
    return {metric: [c for c in comparisons_from_table(table[table["metric"] == metric])
                     if c.a in names and c.b in names] for metric in _METRICS}  # fmt: skip


def _worded(study: Study, c: Comparison, digits: int) -> str:
    """``95% CI [+0.030, +0.110], Holm p = 0.004: significant``, as :func:`segmodels.report.verdicts.worded`."""
    p = p_text(c) if c.tested else ""
    test = f", Holm p {p if p[0] in '<≤' else '= ' + p}" if p else ""
    return f"{_level(study)} CI [{c.lo:+.{digits}f}, {c.hi:+.{digits}f}]{test}: {verdict_word(c)}"


def _pair(study: Study, c: Comparison, metric: str) -> str:
    """One difference, the higher model first, with its interval and verdict."""
    c = c if c.diff >= 0 else c.flipped()
    a, b = display_name(c.a), display_name(c.b)
    va, vb = study.value(c.a, metric), study.value(c.b, metric)
    if metric == "robustness_rel":
        what = f"{a} keeps {va:.2f} of its clean mIoU against {b}'s {vb:.2f}" if None not in (va, vb) else f"{a} − {b}"
        return f"{what} ({c.diff:+.3f}; {_worded(study, c, 3)})"
    what = (f"{a} scores {va:.2f} mean corruption mIoU against {b}'s {vb:.2f}" if None not in (va, vb)
            else f"{a} − {b}")  # fmt: skip
    return f"{what} ({c.diff:+.2f} points; {_worded(study, c, 2)})"


def _differences(study: Study) -> str:
    found = _comparisons(study)
    if found is None:
        return f"Not tested: no {COMPARISONS} beside summary.csv (written by 'segmodels summarize')."
    parts = []
    for metric, word in _METRICS.items():
        rows = found[metric]
        if not rows:
            parts.append(f"In {word}, no pair of the study's design among the scored models was compared.")
            continue
        family = max((c.family for c in rows if c.tested), default=0)
        holm = f", Holm-adjusted over {family} pairs" if family > 1 else ""
        apart = [c for c in rows if c.significant]
        if apart:
            parts.append(f"In {word} ({len(apart)} of {len(rows)} pairs significant{holm}): "
                         + "; ".join(_pair(study, c, metric) for c in apart) + ".")  # fmt: skip
        else:
            largest = max(rows, key=lambda c: abs(c.diff))
            parts.append(f"In {word} no difference among the {len(rows)} pairs is significant{holm}; the largest: "
                         f"{_pair(study, largest, metric)}.")  # fmt: skip
    return " ".join(parts)


def robustness_findings(study: Study) -> list[dict[str, str]]:
    """The section's findings, each a title and sentences computed from the numbers."""
    models = robust_models(study)
    return [
        {"title": "Most and least robust", "text": _ranking(study, models)},
        {"title": "By corruption group", "text": _by_group(study, models)},
        {"title": "Differences", "text": _differences(study)},
    ]


def robustness_section(study: Study, index: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The section's intro, table, findings and figures (the entries of figures.json ``index`` drawn by
    :mod:`segmodels.report.figures_robustness`), or None when summary.csv has no robustness scores."""
    table = robustness_table(study)
    if table is None:
        return None
    models = robust_models(study)
    figures = [{"file": f"figures/{f['png']}", "caption": f["caption"], "width": FIGURE_WIDTH[f["name"]]}
               for f in (index or {}).get("figures", []) if f.get("name") in FIGURE_WIDTH]  # fmt: skip
    groups = [group_label(g).lower() for g in robust_groups(study)]
    kinds = ", ".join(groups[:-1]) + (" and " if len(groups) > 1 else "") + (groups[-1] if groups else "")
    intro = (f"{len(models)} model{'s' if len(models) != 1 else ''} scored on validation images corrupted as "
             f"ImageNet-C corrupts them ({kinds + ' ' if kinds else ''}corruptions at graded severities); every model "
             "saw the same corrupted pixels, so the differences are paired.")  # fmt: skip
    return {"title": "Robustness", "intro": intro, "table": table, "findings": robustness_findings(study),
            "figures": figures}  # fmt: skip
