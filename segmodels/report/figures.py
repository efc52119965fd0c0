"""The study's figures, drawn from the results files alone so they can be redrawn without training.

``make_figures(cfg, results, out)`` writes each figure as PNG and PDF into ``out`` and a ``figures.json``
beside them that lists every figure (files, one-line caption, models shown) and every figure skipped
because none of its inputs exist yet. The figures follow the earlier study's: predictions of each backbone
and of each context module on the same validation images (its figures 1-3), mIoU against latency (its
figure 4); plus mIoU against training cost, the paired bootstrap intervals of the discussed mIoU
differences, per-class IoU, training curves and the best model's confusion matrix. Matplotlib is used
through ``Figure`` objects and the Agg canvas only (no pyplot state), seaborn for the heat maps.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmodels.study.config import StudyConfig
from segmodels.report.results import (
    BACKBONE_LABELS,
    HEAD_LABELS,
    Study,
    class_iou,
    display_name,
    load_study,
    pareto_front,
    read_confusion,
    read_latency,
    read_samples,
    read_train_log,
)

__all__ = [
    "FIGURES",
    "fig_backbones",
    "fig_confusion",
    "fig_context_modules",
    "fig_differences",
    "fig_miou_cost",
    "fig_miou_latency",
    "fig_per_class",
    "fig_training",
    "make_figures",
]


@dataclass
class _Drawn:
    fig: Any  # matplotlib Figure
    caption: str
    models: list[str]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas is used for saving

    return Figure(figsize=(width, height), layout="constrained")


def _palette_legend(fig: Any) -> None:
    from matplotlib.patches import Patch

    from segmodels.data.labels import CLASS_NAMES, PALETTE

    handles = [Patch(facecolor=PALETTE[i] / 255, edgecolor="0.3", lw=0.3, label=n) for i, n in enumerate(CLASS_NAMES)]
    ncol = max(2, min(10, int(fig.get_figwidth() / 1.1)))  # as many columns as the figure's width holds
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False, handlelength=1.2)


def _comparison(study: Study, models: list[str], what: str, max_rows: int = 3) -> _Drawn | str:
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
    fig = _new_figure(2.2 * len(columns), 2.2 * aspect * len(indices) + 0.9)
    axes = np.atleast_2d(fig.subplots(len(indices), len(columns), squeeze=False))
    for r, index in enumerate(indices):
        for c, (key, title) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key in ("input", "gt"):
                path = next((s[index][key] for s in samples.values() if key in s.get(index, {})), None)
            else:
                path = samples[key].get(index, {}).get("pred")
            if path is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, color="0.5")
            else:
                with Image.open(path) as img:
                    ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"val #{index}", fontsize=8)
    _palette_legend(fig)
    caption = f"{what}: input, ground truth and the prediction of {', '.join(display_name(m) for m in shown)}"
    return _Drawn(fig, caption + f" on validation images {', '.join(map(str, indices))}.", shown)


def fig_backbones(study: Study) -> _Drawn | str:
    models = [m for m in (study.reference_run(f"{b}-ppm") for b in BACKBONE_LABELS) if m in study.summary.index]
    return _comparison(study, models, "Backbones under PSPNet's PPM") if models else "no PPM model configured"


def fig_context_modules(study: Study) -> _Drawn | str:
    models = [m for m in (study.reference_run(f"resnet18-{h}") for h in HEAD_LABELS) if m in study.summary.index]
    return _comparison(study, models, "Context modules on ResNet18") if models else "no ResNet18 model configured"


# Offsets (points) and alignments tried in turn for a point's label: right, left, above, below.
_LABEL_SPOTS = (
    (8, 4, "left", "bottom"),
    (8, -4, "left", "top"),
    (-8, 4, "right", "bottom"),
    (-8, -4, "right", "top"),
    (0, 9, "center", "bottom"),
    (0, -9, "center", "top"),
)


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]]) -> None:
    """Annotate each point where its label overlaps no earlier label, no marker and stays inside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the layout, so the data → pixel transform is final
    renderer = canvas.get_renderer()
    pad = 6 * fig.dpi / 72
    taken = [Bbox.from_bounds(*(ax.transData.transform((x, y)) - pad), 2 * pad, 2 * pad) for x, y, _ in labels]
    frame = ax.get_window_extent(renderer)
    for x, y, text in labels:
        best, best_cost = None, math.inf
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha, va=va, in_layout=False
            )
            box = ann.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in taken) + 4 * (box.width * box.height - _overlap(box, frame))
            ann.remove()
            if cost < best_cost:
                best, best_cost = (dx, dy, ha, va, box), cost
            if cost == 0:
                break
        dx, dy, ha, va, box = best
        ax.annotate(
            text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha, va=va, in_layout=False
        )
        taken.append(box)


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def fig_miou_latency(study: Study) -> _Drawn | str:
    """mIoU against latency, one point per model, the Pareto front, mIoU/speed beside each label."""
    points = {m: (study.value(m, "latency_ms"), study.value(m, "miou")) for m in study.summary.index}
    points = {m: p for m, p in points.items() if None not in p}
    if not points:
        return "no model has both an mIoU and a latency"
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    colours = dict(zip(HEAD_LABELS, mpl.colormaps["tab10"].colors, strict=False))
    markers = dict(zip(BACKBONE_LABELS, "osD^v", strict=True))
    labels = []
    for model, (lat, miou) in points.items():
        backbone, head = study.summary.at[model, "backbone"], study.summary.at[model, "head"]
        std = study.value(model, "miou_std") if (study.value(model, "seeds") or 0) > 1 else None
        ax.errorbar(lat, miou, yerr=std, fmt=markers.get(backbone, "o"), color=colours.get(head, "k"), ms=7, capsize=3)
        speed = study.value(model, "miou_per_speed")
        labels.append((lat, miou, display_name(model) + (f"\n{speed:.2f} mIoU/speed" if speed is not None else "")))
    front = pareto_front(points)
    ax.plot(
        [points[m][0] for m in front],
        [points[m][1] for m in front],
        "--",
        color="0.4",
        lw=1,
        zorder=0,
        drawstyle="steps-post",
    )
    lats = [p[0] for p in points.values()]
    if max(lats) / max(min(lats), 1e-9) > 8:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("latency (ms, median, batch 1)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    shown = study.summary.loc[list(points)]
    handles = [
        Line2D([], [], ls="", marker="o", color=colours[h], label=HEAD_LABELS[h])
        for h in HEAD_LABELS
        if h in set(shown["head"])
    ]
    handles += [
        Line2D([], [], ls="", marker=markers[b], color="0.35", mfc="none", label=BACKBONE_LABELS[b])
        for b in BACKBONE_LABELS
        if b in set(shown["backbone"])
    ]
    handles.append(Line2D([], [], ls="--", color="0.4", label="Pareto front"))
    fig.legend(
        handles=handles, loc="outside right upper", fontsize=7, title="colour: head\nmarker: backbone", title_fontsize=7
    )
    _place_labels(fig, ax, labels)
    devices = study.devices(list(points)) or ["unknown device"]
    size = "×".join(map(str, _benchmark_size(study, list(points)) or study.cfg.benchmark.size))
    caption = (
        f"mIoU against latency ({size} input, {', '.join(devices)}); error bars: std over seeds; dashed: "
        f"Pareto front ({', '.join(display_name(m) for m in front)}); mIoU/speed = mIoU / ms × 10."
    )
    return _Drawn(fig, caption, list(points))


def _miou_errors(study: Study, models: list[str]) -> tuple[np.ndarray | None, str]:
    """Asymmetric error bars (2, n) from the bootstrap intervals when every model has one, else seed stds."""
    v = study.value
    if all(v(m, "miou_lo") is not None and v(m, "miou_hi") is not None for m in models):
        lo = [v(m, "miou") - v(m, "miou_lo") for m in models]
        hi = [v(m, "miou_hi") - v(m, "miou") for m in models]
        level = f"{study.cfg.stats.confidence * 100:g}%"
        return np.clip(np.array([lo, hi]), 0, None), f"{level} bootstrap interval over validation images"
    stds = [v(m, "miou_std") if (v(m, "seeds") or 0) > 1 and v(m, "miou_std") is not None else 0.0 for m in models]
    return (np.array([stds, stds]), "std over seeds") if any(stds) else (None, "no interval")


def fig_miou_cost(study: Study) -> _Drawn | str:
    """mIoU against the hours one training run took: GPU-hours where a GPU trained, else process CPU-hours."""
    costs = {m: c for m in study.finished() if (c := study.train_cost(m)) and study.value(m, "miou") is not None}
    if not costs:
        return "no model has both an mIoU and a training cost (cost.json)"
    import matplotlib as mpl

    models = list(costs)
    errors, what = _miou_errors(study, models)
    fig = _new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    colours = dict(zip(HEAD_LABELS, mpl.colormaps["tab10"].colors, strict=False))
    markers = dict(zip(BACKBONE_LABELS, "osD^v", strict=True))
    labels = []
    for i, model in enumerate(models):
        hours, unit = costs[model]
        backbone, head = study.summary.at[model, "backbone"], study.summary.at[model, "head"]
        err = None if errors is None else errors[:, i : i + 1]
        ax.errorbar(hours, study.value(model, "miou"), yerr=err, fmt=markers.get(backbone, "o"), ms=7, capsize=3,
                    color=colours.get(head, "k"), mfc="none" if unit == "CPU-h" else None)  # fmt: skip
        labels.append((hours, study.value(model, "miou"), display_name(model)))
    units = sorted({u for _, u in costs.values()})
    hours = [h for h, _ in costs.values()]
    if max(hours) / max(min(hours), 1e-12) > 8:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"training cost of one run ({' or '.join(units)})")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    _place_labels(fig, ax, labels)
    caption = f"mIoU against the cost of training one run ({', '.join(units)}); error bars: {what}."
    if len(units) > 1:
        caption += " Hollow markers: CPU-hours (trained without a GPU), not comparable with GPU-hours."
    return _Drawn(fig, caption, models)


def fig_differences(study: Study) -> _Drawn | str:
    """The discussed mIoU differences a − b with their paired bootstrap intervals, against zero."""
    rows = study.comparisons
    if not rows:
        return "no paired bootstrap comparison (no confusion_per_image.npy for two models of a discussed pair)"
    fig = _new_figure(7.0, 1.0 + 0.32 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, c in zip(y, rows, strict=True):
        colour = "tab:blue" if c.significant else "0.55"
        ax.errorbar(c.diff, yi, xerr=[[max(c.diff - c.lo, 0)], [max(c.hi - c.diff, 0)]], fmt="o", color=colour,
                    mfc=colour if c.significant else "white", capsize=3, ms=5)  # fmt: skip
    ax.axvline(0, color="0.3", lw=0.8, ls="--")
    ax.set_yticks(y, [f"{display_name(c.a)} − {display_name(c.b)}" for c in rows], fontsize=7)
    ax.set_xlabel("mIoU difference (points)")
    ax.grid(axis="x", alpha=0.3)
    level = f"{study.cfg.stats.confidence * 100:g}%"
    alpha = f"{(1 - study.cfg.stats.confidence) * 100:g}%"
    rule = (f"Holm-adjusted p ≤ {alpha} over {max(c.family for c in rows)} comparisons" if all(c.tested for c in rows)
            else "the interval excludes zero, not adjusted for multiple comparisons")  # fmt: skip
    caption = (
        f"Paired bootstrap mIoU differences (a − b) with {level} intervals over the training seeds and validation "
        f"images; filled blue: significant ({rule}); hollow grey: not distinguishable."
    )
    return _Drawn(fig, caption, sorted({m for c in rows for m in (c.a, c.b)}))


def _benchmark_size(study: Study, models: list[str]) -> list[int] | None:
    """The [height, width] the latencies were measured at, from the first latency.json that records it."""
    for model in models:
        for run in study.runs(model):
            latency = read_latency(run / "latency.json")
            if latency and latency.get("size"):
                return list(latency["size"])
    return None


def fig_per_class(study: Study) -> _Drawn | str:
    import seaborn as sns

    from segmodels.data.labels import CLASS_NAMES

    rows = {m: class_iou(study, m) for m in study.summary.index}
    rows = {display_name(m): v for m, v in rows.items() if v is not None}
    if not rows:
        return "no metrics.json with per-class IoU"
    table = pd.DataFrame(rows, index=list(CLASS_NAMES)[: len(next(iter(rows.values())))]).T
    fig = _new_figure(11.0, 1.2 + 0.42 * len(table))
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
    return _Drawn(fig, caption, [m for m in study.summary.index if class_iou(study, m) is not None])


def fig_training(study: Study) -> _Drawn | str:
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
    fig = _new_figure(11.0, 3.8)
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
    return _Drawn(fig, f"Training curves: {what} against iteration; thin lines: further seeds.", list(logs))


def fig_confusion(study: Study) -> _Drawn | str:
    import seaborn as sns

    from segmodels.data.labels import CLASS_NAMES

    ranked = sorted(
        (m for m in study.finished() if study.value(m, "miou") is not None), key=lambda m: -study.value(m, "miou")
    )
    for model in ranked:
        matrices = [c for run in study.runs(model) if (c := read_confusion(run / "confusion.npy")) is not None]
        if matrices:
            break
    else:
        return "no confusion.npy of a finished model"
    total = np.sum(matrices, axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = total / total.sum(axis=1, keepdims=True) * 100
    names = list(CLASS_NAMES)[: len(norm)] if len(norm) <= len(CLASS_NAMES) else list(range(len(norm)))
    fig = _new_figure(7.0, 6.2)
    ax = fig.add_subplot()
    annot = np.where(norm >= 1, np.char.mod("%.0f", np.nan_to_num(norm)), "")
    sns.heatmap(
        pd.DataFrame(norm, index=names, columns=names),
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
        f"({study.value(model, 'miou'):.2f} mIoU); rows: true class; cells under 1 % left blank."
    )
    return _Drawn(fig, caption, [model])


# name → drawing function, in the report's order
FIGURES: dict[str, Callable[[Study], _Drawn | str]] = {
    "backbones": fig_backbones,
    "context_modules": fig_context_modules,
    "miou_latency": fig_miou_latency,
    "miou_cost": fig_miou_cost,
    "differences": fig_differences,
    "per_class_iou": fig_per_class,
    "training_curves": fig_training,
    "confusion": fig_confusion,
}


def _save(fig: Any, path: Path, fmt: str) -> None:
    from segmodels.atomic import write_bytes_atomic

    buf = io.BytesIO()
    metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}  # same inputs, same bytes
    fig.savefig(buf, format=fmt, dpi=200, metadata=metadata)
    write_bytes_atomic(path, buf.getvalue())


def make_figures(cfg: StudyConfig, results: str | Path, out: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """Draw every figure whose inputs exist into ``out`` (PNG + PDF) and write ``out/figures.json``; return it."""
    from segmodels.atomic import write_text_atomic

    study = load_study(cfg, results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"experiment": cfg.experiment, "figures": [], "skipped": [], "notes": study.notes}
    for name, draw in FIGURES.items():
        drawn = draw(study)
        if isinstance(drawn, str):
            index["skipped"].append({"name": name, "reason": drawn})
            log(f"figure {name}: skipped ({drawn})")
            continue
        for fmt in ("png", "pdf"):
            _save(drawn.fig, out / f"{name}.{fmt}", fmt)
        entry = {"name": name, "png": f"{name}.png", "pdf": f"{name}.pdf", "caption": drawn.caption}
        index["figures"].append(entry | {"models": drawn.models})
        log(f"figure {name}: {out / entry['png']}")
    write_text_atomic(out / "figures.json", json.dumps(index, indent=1) + "\n")
    return index
