"""The study's figures of points: mIoU against latency and against training cost, one point per model (colour:
head, marker: backbone, see :mod:`segmodels.report.figures_common`), and the paired mIoU differences with their
intervals."""

from __future__ import annotations

import numpy as np

from segmodels.models.catalog import display_name
from segmodels.report.figures_common import Drawn, model_style, new_figure, place_labels, style_handles
from segmodels.report.results import Study, pareto_front, read_latency, timed_batch

__all__ = ["fig_differences", "fig_miou_cost", "fig_miou_latency"]


def fig_miou_latency(study: Study) -> Drawn | str:
    """mIoU against latency, one point per model, the Pareto front, mIoU/speed beside each label."""
    points = {m: (study.value(m, "latency_ms"), study.value(m, "miou")) for m in study.summary.index}
    points = {m: p for m, p in points.items() if None not in p}
    if not points:
        return "no model has both an mIoU and a latency"
    from matplotlib.lines import Line2D

    fig = new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    labels = []
    for model, (lat, miou) in points.items():
        marker, colour = model_style(model)
        std = study.value(model, "miou_std") if (study.value(model, "seeds") or 0) > 1 else None
        ax.errorbar(lat, miou, yerr=std, fmt=marker, color=colour, ms=7, capsize=3)
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
    ax.set_xlabel(f"latency (ms, median, {timed_batch(study, list(points))})")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    handles = style_handles(points)
    handles.append(Line2D([], [], ls="--", color="0.4", label="Pareto front"))
    fig.legend(
        handles=handles, loc="outside right upper", fontsize=7, title="colour: head\nmarker: backbone", title_fontsize=7
    )
    place_labels(fig, ax, labels)
    devices = study.devices(list(points)) or ["unknown device"]
    size = "×".join(map(str, _benchmark_size(study, list(points)) or study.cfg.benchmark.size))
    caption = (
        f"mIoU against latency ({size} input, {', '.join(devices)}); error bars: std over seeds; dashed: "
        f"Pareto front ({', '.join(display_name(m) for m in front)}); mIoU/speed = mIoU / ms × 10."
    )
    return Drawn(fig, caption, list(points))


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


def fig_miou_cost(study: Study) -> Drawn | str:
    """mIoU against the hours one training run took: GPU-hours where a GPU trained, else process CPU-hours."""
    costs = {m: c for m in study.finished() if (c := study.train_cost(m)) and study.value(m, "miou") is not None}
    if not costs:
        return "no model has both an mIoU and a training cost (cost.json)"
    models = list(costs)
    errors, what = _miou_errors(study, models)
    fig = new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    labels = []
    for i, model in enumerate(models):
        hours, unit = costs[model]
        marker, colour = model_style(model)
        err = None if errors is None else errors[:, i : i + 1]
        ax.errorbar(hours, study.value(model, "miou"), yerr=err, fmt=marker, ms=7, capsize=3, color=colour,
                    mfc="none" if unit == "CPU-h" else None)  # fmt: skip
        labels.append((hours, study.value(model, "miou"), display_name(model)))
    units = sorted({u for _, u in costs.values()})
    hours = [h for h, _ in costs.values()]
    if max(hours) / max(min(hours), 1e-12) > 8:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"training cost of one run ({' or '.join(units)})")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    place_labels(fig, ax, labels)
    caption = f"mIoU against the cost of training one run ({', '.join(units)}); error bars: {what}."
    if len(units) > 1:
        caption += " Hollow markers: CPU-hours (trained without a GPU), not comparable with GPU-hours."
    return Drawn(fig, caption, models)


def fig_differences(study: Study) -> Drawn | str:
    """The discussed mIoU differences a − b with their paired bootstrap intervals, against zero."""
    rows = study.comparisons
    if not rows:
        return "no paired bootstrap comparison (no confusion_per_image.npy for two models of a discussed pair)"
    fig = new_figure(7.0, 1.0 + 0.32 * len(rows))
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
    hollow = "not distinguishable"
    if any(c.tested and not c.testable for c in rows):
        count = max(c.resamples for c in rows)
        hollow = f"not testable at {count:,} resamples, too few for this family (see its table)"
    caption = (
        f"Paired bootstrap mIoU differences (a − b) with {level} intervals over the training seeds and validation "
        f"images; filled blue: significant ({rule}); hollow grey: {hollow}."
    )
    return Drawn(fig, caption, sorted({m for c in rows for m in (c.a, c.b)}))


def _benchmark_size(study: Study, models: list[str]) -> list[int] | None:
    """The [height, width] the latencies were measured at, from the first latency.json that records it."""
    for model in models:
        for run in study.runs(model):
            latency = read_latency(run)
            if latency and latency.get("size"):
                return list(latency["size"])
    return None
