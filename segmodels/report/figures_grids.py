"""The study's figures of images and grids: predictions of each backbone and of each context module on the same
validation images (the models of the study's design, :mod:`segmodels.report.design`, over the whole catalog),
the per-class IoU and confusion heat maps, and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmodels.models import catalog
from segmodels.models.catalog import display_name
from segmodels.report import design
from segmodels.report.figures_common import Drawn, new_figure, palette_legend
from segmodels.report.results import (
    MANY_CLASSES,
    Study,
    class_iou,
    class_selection,
    read_confusion,
    read_samples,
    read_train_log,
)

__all__ = ["fig_backbones", "fig_confusion", "fig_context_modules", "fig_per_class", "fig_training"]

CONFUSION_CLASSES = 25  # the confusion figure's rows when a dataset has more classes


def _comparison(study: Study, models: list[str], what: str, max_rows: int = 3) -> Drawn | str:
    """Rows of validation images; columns input, ground truth, then each model's prediction."""
    from PIL import Image

    samples = {m: read_samples(study.runs(m)[0]) for m in models if study.runs(m)}
    samples = {m: s for m, s in samples.items() if any("pred" in v for v in s.values())}
    if not samples:
        return f"no sample predictions of {', '.join(models)}"
    shown = [m for m in models if m in samples]
    indices = sorted({i for s in samples.values() for i in s})[:max_rows]
    columns = [("input", "Input"), ("gt", "Ground truth")] + [(m, display_name(m)) for m in shown]
    first = next(p for s in samples.values() for v in s.values() for p in v.values())
    with Image.open(first) as img:
        aspect = img.height / img.width
    fig = new_figure(2.2 * len(columns), 2.2 * aspect * len(indices) + 0.9)
    axes = np.atleast_2d(fig.subplots(len(indices), len(columns), squeeze=False))
    codes = _colour_codes(study.labels)
    present: set[int] = set()
    for r, index in enumerate(indices):
        for c, (key, title) in enumerate(columns):
            ax = axes[r, c]
            if key in ("input", "gt"):
                path = next((s[index][key] for s in samples.values() if key in s.get(index, {})), None)
            else:
                path = samples[key].get(index, {}).get("pred")
            present |= sample_cell(ax, path, codes, classes=key != "input")
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"val #{index}", fontsize=8)
    palette_legend(fig, study.labels, present if study.labels.num_classes > MANY_CLASSES else None)
    caption = f"{what}: input, ground truth and the prediction of {', '.join(display_name(m) for m in shown)}"
    return Drawn(fig, caption + f" on validation images {', '.join(map(str, indices))}.", shown)


def _colour_codes(label_set) -> dict[int, int]:
    """24-bit colour → class index of ``label_set`` (the first class of a colour used twice)."""
    codes: dict[int, int] = {}
    for c, (r, g, b) in enumerate(label_set.palette.astype(np.int64).tolist()):
        codes.setdefault((r << 16) | (g << 8) | b, c)
    return codes


def sample_cell(ax: Any, path: Path | None, codes: Any, *, classes: bool = True) -> set[int]:
    """One sample PNG drawn into ``ax`` without ticks ("n/a" where there is none); with ``classes`` (a colourised
    mask, not an input image) the classes it shows, for the legend."""
    from PIL import Image

    ax.set_xticks([])
    ax.set_yticks([])
    if path is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, color="0.5")
        return set()
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    ax.imshow(rgb, interpolation="nearest")
    return _classes_in(rgb, codes) if classes else set()


def _classes_in(rgb: np.ndarray, codes: dict[int, int]) -> set[int]:
    """The classes whose colours appear in a colourised label image."""
    values = rgb.astype(np.int64)
    found = np.unique((values[..., 0] << 16) | (values[..., 1] << 8) | values[..., 2])
    return {codes[v] for v in found.tolist() if v in codes}


def fig_backbones(study: Study) -> Drawn | str:
    head = catalog.head(design.BACKBONE_HEAD).label
    models = [m for m in map(study.reference_run, design.backbone_models()) if m in study.summary.index]
    return _comparison(study, models, f"Backbones under PSPNet's {head}") if models else f"no {head} model configured"


def fig_context_modules(study: Study) -> Drawn | str:
    backbone = catalog.backbone(design.CONTEXT_BACKBONE).label
    models = [m for m in map(study.reference_run, design.context_models()) if m in study.summary.index]
    what = f"Context modules on {backbone}"
    return _comparison(study, models, what) if models else f"no {backbone} model configured"


def fig_per_class(study: Study) -> Drawn | str:
    import warnings

    import seaborn as sns

    from segmodels.data.labelset import names_or_indices

    rows = {m: class_iou(study, m) for m in study.summary.index}
    rows = {display_name(m): v for m, v in rows.items() if v is not None}
    if not rows:
        return "no metrics.json with per-class IoU"
    n = len(next(iter(rows.values())))
    table = pd.DataFrame(rows, index=names_or_indices(study.labels.classes, n)).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent everywhere
        shown, selection = class_selection(np.nanmean(table.to_numpy(dtype=float), axis=0))
    table = table.iloc[:, shown]
    fig = new_figure(11.0 if len(shown) <= 24 else 14.0, max(1.2 + 0.42 * len(table), 2.6 if selection else 0))
    ax = fig.add_subplot()
    sns.heatmap(
        table,
        ax=ax,
        annot=True,
        fmt=".0f",
        cmap="viridis",
        vmin=0,
        vmax=100,
        annot_kws={"fontsize": 7},
        cbar_kws={"label": "IoU (%)", "pad": 0.01},
        linewidths=0.5,
        linecolor="white",
    )
    ax.set_xticklabels(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8, rotation=0)
    caption = "Per-class IoU (%) of every evaluated model (mean over seeds; blank: class absent from the data)."
    if selection:
        caption = caption[:-1] + f"; {selection}."
    return Drawn(fig, caption, [m for m in study.summary.index if class_iou(study, m) is not None])


def fig_training(study: Study) -> Drawn | str:
    import matplotlib as mpl

    logs = {}
    for model in study.summary.index:
        folders = [study.root / model / f"seed{s}" for s in study.cfg.seeds]
        found = [log for f in folders if (log := read_train_log(f)) is not None]
        if found:
            logs[model] = found
    if not logs:
        return "no train_log.csv"
    with_val = any("val_miou" in log and log["val_miou"].notna().any() for runs in logs.values() for log in runs)
    fig = new_figure(11.0, 3.8)
    axes = fig.subplots(1, 2 if with_val else 1, squeeze=False)[0]
    colours = mpl.colormaps["tab10"].colors
    for k, (model, runs) in enumerate(logs.items()):
        for s, log in enumerate(runs):
            kw = {"color": colours[k % 10], "lw": 1.2 if s == 0 else 0.7, "alpha": 1.0 if s == 0 else 0.5}
            kw["label"] = display_name(model) if s == 0 else None
            loss = log.dropna(subset=["loss"])  # validation rows may carry no loss
            axes[0].plot(loss["iteration"], loss["loss"], **kw)
            if with_val and "val_miou" in log:
                val = log.dropna(subset=["val_miou"])
                axes[1].plot(val["iteration"], val["val_miou"], marker="o", ms=3, **kw)
    axes[0].set(xlabel="iteration", ylabel="training loss")
    if with_val:
        axes[1].set(xlabel="iteration", ylabel="validation mIoU (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    what = "loss and validation mIoU" if with_val else "loss (no validation during training)"
    return Drawn(fig, f"Training curves: {what} against iteration; thin lines: further seeds.", list(logs))


def fig_confusion(study: Study) -> Drawn | str:
    import seaborn as sns

    from segmodels.data.labelset import names_or_indices

    ranked = sorted(
        (m for m in study.finished() if study.value(m, "miou") is not None), key=lambda m: -study.value(m, "miou")
    )
    for model in ranked:
        matrices = [c for run in study.runs(model) if (c := read_confusion(run)) is not None]
        if matrices:
            break
    else:
        return "no confusion.npy of a finished model"
    total = np.sum(matrices, axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = total / total.sum(axis=1, keepdims=True) * 100
    names = names_or_indices(study.labels.classes, len(norm))
    subset = ""
    if len(norm) > CONFUSION_CLASSES:  # the most frequent true classes, and one column for all the others
        keep = sorted(np.argsort(-total.sum(axis=1), kind="stable")[:CONFUSION_CLASSES].tolist())
        rest = np.setdiff1d(np.arange(len(norm)), keep)
        norm = np.concatenate([norm[np.ix_(keep, keep)], norm[np.ix_(keep, rest)].sum(axis=1, keepdims=True)], 1)
        names, columns = [names[i] for i in keep], [names[i] for i in keep] + ["(other)"]
        subset = (f" Of {len(total)} classes, the {CONFUSION_CLASSES} with the most true pixels; '(other)': "
                  "predicted as any other class.")  # fmt: skip
    else:
        columns = names
    fig = new_figure(7.0, 6.2)
    ax = fig.add_subplot()
    annot = np.where(norm >= 1, np.char.mod("%.0f", np.nan_to_num(norm)), "")
    sns.heatmap(
        pd.DataFrame(norm, index=names, columns=columns),
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=100,
        square=True,
        annot=annot,
        fmt="",
        annot_kws={"fontsize": 6},
        cbar_kws={"label": "% of the true class", "shrink": 0.8},
        linewidths=0.3,
        linecolor="0.9",
    )
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.tick_params(labelsize=7)
    caption = (
        f"Row-normalised confusion matrix (%) of the best model, {display_name(model)} "
        f"({study.value(model, 'miou'):.2f} mIoU); rows: true class; cells under 1 % left blank.{subset}"
    )
    return Drawn(fig, caption, [model])
