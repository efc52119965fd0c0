"""The robustness section's figures, from ``robustness.csv`` and the run folders' ``robustness/`` samples: the mIoU
of each model under each corruption (a heat map, mean over severities), the mIoU against severity per corruption
group (one line per model, the clean mIoU at severity 0), and one validation image under each group at severity 3
with every scored model's prediction.

Drawn only for a study with robustness (``robustness.enabled``, or summary.csv's robustness columns): elsewhere
:func:`robustness_figures` is empty, so a study without it lists neither these figures nor their absence.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from segmodels.models.catalog import display_name, short_name
from segmodels.report.figures_common import Drawn, model_style, new_figure, palette_legend
from segmodels.report.figures_grids import _colour_codes, sample_cell
from segmodels.report.results import MANY_CLASSES, Study
from segmodels.report.robustness import (
    corruption_groups,
    corruption_label,
    group_label,
    has_robustness,
    read_robustness,
    robust_models,
)
from segmodels.study.robustness import TABLE, robustness_folder
from segmodels.study.runs import RunFolder

__all__ = ["fig_robustness_heatmap", "fig_robustness_samples", "fig_robustness_severity", "robustness_figures"]

ANNOTATED = 200  # the heat map's cells are numbered up to this many
SAMPLE_SEVERITY = 3  # the samples' severity, else the configured one nearest to it
_NO_TABLE = f"no {TABLE} (written by 'segmodels summarize' once the robustness jobs have run)"


def _models(study: Study, table) -> list[str]:
    """The runs in robustness.csv, in the summary's order."""
    present = set(table["model"])
    return [m for m in study.summary.index if m in present]


def _severities(table) -> str:
    values = sorted(set(table["severity"]))
    if len(values) > 1 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def _images(table) -> str:
    counts = sorted({int(n) for n in table["images"].dropna()}) if "images" in table else []
    return f"the first {' or '.join(map(str, counts))} validation images" if counts else "the validation images"


def fig_robustness_heatmap(study: Study) -> Drawn | str:
    """Model × corruption, the mIoU (%) averaged over severities, corruptions by group."""
    import seaborn as sns

    table = read_robustness(study)
    if table is None:
        return _NO_TABLE
    models, groups = _models(study, table), corruption_groups(table)
    corruptions = [c for _, cs in groups for c in cs]
    grid = table.groupby(["model", "corruption"])["miou"].mean().unstack().reindex(index=models, columns=corruptions)
    grid.index = [display_name(m) for m in models]
    grid.columns = [corruption_label(c) for c in corruptions]
    values = grid.to_numpy(dtype=float)
    low, high = np.nanmin(values), np.nanmax(values)
    low, high = 5 * math.floor(low / 5), max(5 * math.ceil(high / 5), 5 * math.floor(low / 5) + 5)
    fig = new_figure(min(11.0, max(7.0, 2.6 + 0.45 * len(corruptions))), 1.9 + 0.36 * len(models))
    ax = fig.add_subplot()
    sns.heatmap(grid, ax=ax, annot=values.size <= ANNOTATED, fmt=".0f", cmap="viridis", vmin=low, vmax=high,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "mIoU (%)", "pad": 0.01}, linewidths=0.5,
                linecolor="white")  # fmt: skip
    starts = np.cumsum([0] + [len(cs) for _, cs in groups])
    for x in starts[1:-1]:
        ax.axvline(x, color="white", lw=2.5)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b) / 2 for a, b in zip(starts[:-1], starts[1:], strict=True)],
                   labels=[group_label(g) for g, _ in groups])  # fmt: skip
    top.tick_params(length=0, labelsize=8)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    ax.collections[0].colorbar.ax.tick_params(labelsize=8)
    caption = (f"mIoU (%) of each model under each corruption, mean over severities {_severities(table)} and seeds, "
               f"on {_images(table)}; corruptions by group.")  # fmt: skip
    return Drawn(fig, caption, models)


def fig_robustness_severity(study: Study) -> Drawn | str:
    """Per group, the mIoU (mean over the group's corruptions) against severity, one line per model."""
    import matplotlib as mpl

    table = read_robustness(study)
    if table is None:
        return _NO_TABLE
    models, groups = _models(study, table), corruption_groups(table)
    curves = table.groupby(["model", "group", "severity"])["miou"].mean()
    clean = table.groupby("model")["miou_clean"].mean()
    severities = sorted(set(table["severity"]))
    columns = min(4, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig = new_figure(11.0 if columns > 2 else 4.0 + 2.8 * columns, 0.6 + 2.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    colours = mpl.colormaps["tab10"].colors  # one per model, as the training curves: two PPMs apart
    for ax, (group, corruptions) in zip(axes, groups, strict=False):
        for k, m in enumerate(models):
            marker, colour = model_style(m)[0], colours[k % len(colours)]
            ys = [curves.get((m, group, k), math.nan) for k in severities]
            ax.plot([0, *severities], [clean.get(m, math.nan), *ys], marker=marker, color=colour, lw=1.2, ms=4,
                    label=display_name(m))  # fmt: skip
        ax.set_title(f"{group_label(group)} ({len(corruptions)} corruption{'s' if len(corruptions) > 1 else ''})",
                     fontsize=9)  # fmt: skip
        ax.set_xticks([0, *severities], labels=["clean", *map(str, severities)])
        ax.set_xlabel("severity", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("mIoU (%)", fontsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    caption = (f"mIoU (%) against corruption severity per group, mean over the group's corruptions and the seeds, "
               f"on {_images(table)}; at 'clean' the uncorrupted mIoU on the same images.")  # fmt: skip
    return Drawn(fig, caption, models)


def _sample_severity(study: Study, table) -> int:
    severities = sorted(set(table["severity"])) if table is not None else list(study.cfg.robustness.severities)
    return min(severities, key=lambda k: (abs(k - SAMPLE_SEVERITY), k))


def _group_samples(study: Study, models: list[str], corruption: str, severity: int) -> dict[str, dict]:
    """Model → its first seed's ``{index: {kind: path}}`` under ``corruption`` at ``severity`` (none for a model without samples)."""
    found = {}
    for m in models:
        for run in study.runs(m):
            samples = RunFolder(robustness_folder(run, corruption, severity)).read_samples()
            if samples:
                found[m] = samples
                break
    return found


def fig_robustness_samples(study: Study) -> Drawn | str:
    """One validation image under each group's first corruption: corrupted input, ground truth, predictions."""
    from PIL import Image

    table = read_robustness(study)
    models = robust_models(study) or (_models(study, table) if table is not None else [])
    if table is None:
        return _NO_TABLE
    severity = _sample_severity(study, table)
    rows = [(g, cs[0], _group_samples(study, models, cs[0], severity)) for g, cs in corruption_groups(table)]
    indices = sorted({i for _, _, found in rows for samples in found.values() for i in samples})
    if not indices:
        return f"no sample images under RUN/robustness/{{corruption}}/s{severity}/samples/ (evaluate.samples empty?)"
    index = indices[0]
    rows = [(g, c, found) for g, c, found in rows if any(index in s for s in found.values())]
    shown = [m for m in models if any(index in found.get(m, {}) for _, _, found in rows)]
    columns = [("input", "Corrupted input"), ("gt", "Ground truth")] + [(m, short_name(m)) for m in shown]
    first = next(p for _, _, found in rows for s in found.values() for p in s.get(index, {}).values())
    with Image.open(first) as img:
        aspect = img.height / img.width
    width = min(2.2, 11.0 / len(columns))  # of a column, in inches: at most the text's width in all
    fig = new_figure(width * len(columns), width * aspect * len(rows) + 0.9)
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    codes, present = _colour_codes(study.labels), set()
    for r, (_, corruption, found) in enumerate(rows):
        for col, (key, title) in enumerate(columns):
            ax = axes[r, col]
            if key in ("input", "gt"):
                path = next((s[index][key] for s in found.values() if key in s.get(index, {})), None)
            else:
                path = found.get(key, {}).get(index, {}).get("pred")
            present |= sample_cell(ax, path, codes, classes=key != "input")
            if r == 0:
                ax.set_title(title, fontsize=7 if len(columns) > 6 else 9)
            if col == 0:
                ax.set_ylabel(corruption_label(corruption).replace(" ", "\n", 1), fontsize=7)
    palette_legend(fig, study.labels, present if study.labels.num_classes > MANY_CLASSES else None)
    caption = (f"Validation image #{index} under each corruption group at severity {severity} (rows: "
               f"{', '.join(corruption_label(c) for _, c, _ in rows)}): the corrupted input, the ground truth and the "
               f"prediction of {', '.join(display_name(m) for m in shown)} (first seed).")  # fmt: skip
    return Drawn(fig, caption, shown)


def robustness_figures(study: Study) -> dict[str, Callable[[Study], Drawn | str]]:
    """Name → drawing function of the robustness figures, in the report's order; empty for a study without
    robustness, so its figures.json is unchanged."""
    if not (study.cfg.robustness.enabled or has_robustness(study)):
        return {}
    return {"robustness_heatmap": fig_robustness_heatmap, "robustness_severity": fig_robustness_severity,
            "robustness_samples": fig_robustness_samples}  # fmt: skip
