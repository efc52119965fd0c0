"""The report's tables as template data: cell texts with the best value of a column marked in bold.

The result tables (performance, context modules, backbone efficiency, small objects and boundaries, per-class IoU)
and the earlier study's published table beside this run; the uncertainty section's tables, built on the cell helpers
here, are in :mod:`segmodels.report.uncertainty`. A standard deviation over one seed is undefined and shown as –,
never as 0.

Which metric goes where follows its :attr:`segmodels.metrics.Metric.group`: the performance, context-module and
interval tables show the ``summary`` metrics (mIoU, mAcc, allAcc and any registered alongside them), the table of
small objects and boundaries the ``benchmark`` metrics (iIoU, category IoU and iIoU, Boundary IoU). A metric no
shown model defines (iIoU outside Cityscapes, any of them for runs evaluated before their statistics existed) gets
no column; the mIoU always has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from segmodels.metrics import METRICS, Metric
from segmodels.models import catalog
from segmodels.models.catalog import display_name, short_name, variant_of
from segmodels.report import design
from segmodels.report.design import EARLIER_DEVICE, EARLIER_STUDY
from segmodels.report.findings import interval_coverage
from segmodels.report.results import Study, class_iou, class_selection, timed_batch

__all__ = [
    "BENCHMARK_TITLE",
    "CITYSCAPES_BENCHMARK_TITLE",
    "benchmark_tables",
    "earlier_table",
    "protocol_note",
    "result_tables",
]

_METRIC_HEADER = ("Latency (ms)", "mIoU/speed", "Params (M)", "GFLOPs", "Train cost", "Status")  # after the scores


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}{suffix}"


def _column(values: Sequence[float | None], digits: int = 2, best: str | None = "max") -> list[dict[str, Any]]:
    """Cells of one table column; the best finite value (max or min) is marked bold, ties included.

    Nothing is marked when the shown values are all equal: there is no best then."""
    shown = {round(v, digits) for v in values if v is not None and math.isfinite(v)}
    target = (max if best == "max" else min)(shown) if best and len(shown) > 1 else None
    return [
        {"t": _fmt(v, digits), "b": v is not None and target is not None and round(v, digits) == round(target, digits)}
        for v in values
    ]


def _text(values: Sequence[str]) -> list[dict[str, Any]]:
    return [{"t": v, "b": False} for v in values]


def _table(title: str, header: list[str], columns: list[list[dict]], align: str, note: str = "") -> dict[str, Any]:
    return {
        "title": title,
        "header": header,
        "rows": [list(r) for r in zip(*columns, strict=True)],
        "align": align,
        "note": note,
    }


def _score_cells(study: Study, models: list[str], metric: Metric) -> list[dict[str, Any]]:
    """A metric's column: mean, ± std when more than one seed (one has no spread), bold at the best mean."""
    key, digits = metric.key, metric.digits
    cells = _column([study.value(m, key) for m in models], digits, "max" if metric.higher_is_better else "min")
    for cell, m in zip(cells, models, strict=True):
        if (study.value(m, "seeds") or 0) > 1 and study.value(m, f"{key}_std") is not None:
            cell["t"] += f" ± {study.value(m, f'{key}_std'):.{digits}f}"
    return cells


def _level(study: Study) -> str:
    return f"{study.cfg.stats.confidence * 100:g}%"


def _ci_cells(study: Study, models: list[str], metric: Metric) -> list[dict[str, Any]]:
    """``lo–hi`` of a metric's bootstrap interval, – where none was computed."""
    cells = []
    for m in models:
        lo, hi = study.value(m, f"{metric.key}_lo"), study.value(m, f"{metric.key}_hi")
        text = "–" if lo is None or hi is None else f"{lo:.{metric.digits}f}–{hi:.{metric.digits}f}"
        cells.append({"t": text, "b": False})
    return cells


def _shown(study: Study, models: Sequence[str], group: str = "summary") -> list[Metric]:
    """The metrics of ``group`` in order that at least one of ``models`` defines; the mIoU always."""
    return [m for m in METRICS if m.group == group
            and (m.key == "miou" or any(study.value(x, m.key) is not None for x in models))]  # fmt: skip


def _score_columns(study: Study, models: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Header and cells of every shown summary metric (:func:`_shown`) in order, the mIoU followed by its interval."""
    columns = []
    for metric in _shown(study, models):
        columns.append((metric.label, _score_cells(study, models, metric)))
        if metric.key == "miou":
            columns.append((f"{_level(study)} CI", _ci_cells(study, models, metric)))
    return columns


def _hours(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:.3g}{' ' + unit if unit else ''}"


def _cost_column(study: Study, models: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Header and cells of the training cost; the unit goes to the header when all rows share it."""
    costs = [study.train_cost(m) for m in models]
    units = {c[1] for c in costs if c}
    if len(units) == 1:
        return f"Train ({units.pop()})", _text([_hours(c[0]) if c else "–" for c in costs])
    return "Train cost", _text([_hours(*c) if c else "–" for c in costs])


def _metric_table(study: Study, models: list[str], title: str, first: list[tuple[str, list[str]]], note: str) -> dict:
    v = study.value
    cost = _cost_column(study, models)
    scores = _score_columns(study, models)
    columns = [_text(values) for _, values in first] + [cells for _, cells in scores] + [
        _column([v(m, "latency_ms") for m in models], 1, "min"),
        _column([v(m, "miou_per_speed") for m in models], 2, "max"),
        _column([v(m, "params_m") for m in models], 1, "min"),
        _column([v(m, "gflops") for m in models], 1, "min"),
        cost[1],
        _text([str(study.summary.at[m, "status"]) for m in models]),
    ]
    rest = [cost[0] if h == "Train cost" else h for h in _METRIC_HEADER]
    header = [h for h, _ in first] + [h for h, _ in scores] + rest
    if any(study.value(m, "miou_packed") is not None for m in models):  # full-resolution scoring: both numbers
        at = len(first) + 2
        columns.insert(at, _column([study.value(m, "miou_packed") for m in models]))
        header.insert(at, "mIoU packed")
    return _table(title, header, columns, "l" * len(first) + "r" * (len(header) - len(first) - 1) + "l", note)


def _distinct(study: Study, column: str) -> list[str]:
    if column not in study.summary:
        return []
    return list(dict.fromkeys(str(v) for v in study.summary[column] if isinstance(v, str) and v))


def protocol_note(study: Study) -> str:
    """What the study's mIoU and latency numbers are: scored how, timed in which mode (from summary.csv)."""
    scored = _distinct(study, "miou_protocol")
    modes = _distinct(study, "latency_mode")
    text = f"mIoU scored on {'; '.join(scored)}" if scored else "mIoU at the packed resolution"
    if "miou_packed" in study.summary and study.summary["miou_packed"].notna().any():
        text += "; mIoU packed: the same predictions scored against the packed labels (the earlier study's protocol)"
    return text + (f"; latency timed in {', '.join(modes)} (the mIoU's precision)" if modes else "")


def _first_columns(models: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Backbone and module of each row, and the variant where a model has one."""
    names = [(catalog.backbone(b).label, catalog.head(h).label) for b, h in map(catalog.arch_of, models)]
    first = [("Backbone", [n[0] for n in names]), ("Module", [n[1] for n in names])]
    if any(variant_of(m) for m in models):
        first.append(("Variant", [variant_of(m).replace("_", " ") for m in models]))
    return first


def _speed_note(study: Study, models: list[str]) -> str:
    return (
        f"{', '.join(m.label for m in _shown(study, models))} in %, mean over seeds, ± std where there are several; "
        "CI: bootstrap interval of the mIoU over training seeds and validation images (images only for one seed); "
        f"latency: median, {timed_batch(study, models)}; mIoU/speed = mIoU / ms × 10; "
        "train cost: one run, GPU-hours (GPU-h) or process CPU-hours (CPU-h). "
        f"{protocol_note(study)}."
    )


def result_tables(study: Study) -> list[dict[str, Any]]:
    """Performance summary, context modules and backbone efficiency where their runs exist, small objects and
    boundaries where a benchmark metric is defined (:func:`benchmark_tables`), per-class IoU."""
    models = list(study.summary.index)
    tables = [_metric_table(study, models, "Performance summary", _first_columns(models), _speed_note(study, models))]
    context = [m for m in map(study.reference_run, design.context_models()) if m in models]
    if context:
        heads = [catalog.head(catalog.arch_of(m)[1]).label for m in context]
        title = f"Context modules on {catalog.backbone(design.CONTEXT_BACKBONE).label}"
        tables.append(_metric_table(study, context, title, [("Module", heads)], _speed_note(study, context)))
    backbones = [m for m in map(study.reference_run, design.backbone_models()) if m in models]
    if backbones:
        speed_ref = design.under_backbone_head(design.SPEED_REFERENCE)
        speed_vs = f"Speed vs {catalog.backbone(design.SPEED_REFERENCE).short}"
        ref = study.value(study.reference_run(speed_ref), "latency_ms")
        v = study.value
        columns = [
            _text([catalog.backbone(catalog.arch_of(m)[0]).label for m in backbones]),
            _column([v(m, "latency_ms") for m in backbones], 1, "min"),
            _column([v(m, "latency_p90_ms") for m in backbones], 1, "min"),
            _column([v(m, "fps") for m in backbones], 1, "max"),
            _column([ref / v(m, "latency_ms") if ref and v(m, "latency_ms") else None for m in backbones], 2, "max"),
            _column([v(m, "params_m") for m in backbones], 1, "min"),
            _column([v(m, "gflops") for m in backbones], 1, "min"),
            _column([v(m, "miou") for m in backbones], 2, "max"),
            _column([v(m, "miou_per_speed") for m in backbones], 2, "max"),
        ]
        header = [
            "Backbone",
            "Median (ms)",
            "p90 (ms)",
            "FPS",
            speed_vs,
            "Params (M)",
            "GFLOPs",
            "mIoU",
            "mIoU/speed",
        ]
        tables.append(
            _table(
                f"Efficiency of the backbones ({catalog.head(design.BACKBONE_HEAD).label} head)",
                header,
                columns,
                "l" + "r" * 8,
                f"{speed_vs}: {display_name(speed_ref)}'s latency divided by the row's.",
            )
        )
    tables += benchmark_tables(study)
    tables.append(_per_class_table(study))
    return tables


# --- small objects and boundaries ---------------------------------------------------------------------------------

BENCHMARK_TITLE = "Small objects and boundaries"
CITYSCAPES_BENCHMARK_TITLE = "Cityscapes benchmark scores and boundary quality"  # when iIoU is defined
_INSTANCE_LEVEL = ("iiou", "iiou_category")
# one sentence per benchmark metric: what its number means (the formulas: segmodels.metrics, segmodels.scoring)
_MEANS = {
    "iiou": "iIoU: the IoU of the 8 classes with instances (person to bicycle), each ground-truth instance's true "
            "positives and false negatives weighted by its class's mean instance size over the instance's size, so "
            "that a small object counts as much as a large one; mean over the classes",
    "miou_category": "IoU cat: the IoU over the benchmark's 7 categories (flat, construction, object, nature, sky, "
                     "human, vehicle), classes of a category merged",
    "iiou_category": "iIoU cat: the iIoU of the 2 categories whose classes all have instances (human, vehicle)",
    "biou": "BIoU: Boundary IoU (Cheng et al., CVPR 2021), per class over the dataset the IoU of the ground-truth and "
            "predicted boundary regions, the pixels within 2 % of the image diagonal of the class's contour; mean "
            "over the classes",
}  # fmt: skip


def _benchmark_note(study: Study, shown: list[Metric], split: bool) -> str:
    level = _level(study)
    parts = [f"{', '.join(m.label for m in (METRICS['miou'], *shown))} in %, mean over seeds, ± std where there are "
             "several"]
    where = "The second table gives the benchmark scores' intervals" if split else "CI: the interval of the score before it"
    parts.append(f"{where}, {level} bootstrap over the training seeds and validation images (images only for one "
                 "seed)")  # fmt: skip
    parts += [_MEANS[m.key] for m in shown if m.key in _MEANS]
    parts.append("The instance-level scores (iIoU, iIoU cat) exist only for Cityscapes-format data with instance ids, "
                 "the category scores only for Cityscapes' 19 classes")  # fmt: skip
    if absent := [m.label for m in METRICS if m.group == "benchmark" and m not in shown]:
        parts.append(f"No model here defines {', '.join(absent)}")
    return ". ".join(parts) + "."


def benchmark_tables(study: Study) -> list[dict[str, Any]]:
    """Small objects and boundaries: per finished model the mIoU and every benchmark metric a model defines (``value
    ± std``, best bold) with its bootstrap interval; with more than two such metrics (Cityscapes' four) the intervals
    go to a second table so that each fits an A4 page. [] when no model defines any."""
    models = study.finished()
    shown = _shown(study, models, "benchmark")
    if not shown:
        return []
    title = CITYSCAPES_BENCHMARK_TITLE if any(m.key in _INSTANCE_LEVEL for m in shown) else BENCHMARK_TITLE
    split = len(shown) > 2
    first = _first_columns(models)
    header, columns = [h for h, _ in first], [_text(values) for _, values in first]
    for metric in [METRICS["miou"], *shown]:
        header.append(metric.label)
        columns.append(_score_cells(study, models, metric))
        if metric in shown and not split:
            header.append(f"{metric.label} {_level(study)} CI")
            columns.append(_ci_cells(study, models, metric))
    align = "l" * len(first) + "r" * (len(header) - len(first))
    tables = [_table(title, header, columns, align, _benchmark_note(study, shown, split))]
    if split:
        header = ["Model", *(f"{m.label} {_level(study)} CI" for m in shown)]
        columns = [_text([display_name(m) for m in models]), *(_ci_cells(study, models, m) for m in shown)]
        tables.append(_table(f"{title}: {_level(study)} intervals", header, columns, "l" + "r" * len(shown),
                             "Percentile bootstrap of the seed mean, the same image sets for every model. "
                             f"{interval_coverage(study, models)}"))  # fmt: skip
    return tables


def _per_class_table(study: Study) -> dict[str, Any]:
    import warnings

    from segmodels.data.labelset import names_or_indices

    ious = {m: class_iou(study, m) for m in study.summary.index}
    ious = {m: v for m, v in ious.items() if v is not None}
    n = max((len(v) for v in ious.values()), default=0)
    names = names_or_indices(study.labels.classes, n)
    grid = np.full((len(ious), n), np.nan)
    for r, v in enumerate(ious.values()):
        grid[r, : len(v)] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent everywhere
        shown, selection = class_selection(np.nanmean(grid, axis=0) if len(ious) else np.zeros(n))
    rows = []
    for c in shown:
        values = [float(v) if math.isfinite(v) else None for v in grid[:, c]]
        rows.append(_text([names[c]]) + _column(values, 1))
    means = [study.value(m, "miou") for m in ious]
    rows.append(_text(["mean (mIoU)"]) + _column(means, 1))
    header = ["Class"] + [short_name(m) for m in ious]
    note = "IoU in %, mean over seeds; – : class absent from both truth and prediction. " + "; ".join(
        f"{short_name(m)} = {display_name(m)}" for m in ious
    )
    if selection:
        note = f"{selection}. {note}"
    return {"title": "Per-class IoU", "header": header, "rows": rows, "align": "l" + "r" * len(ious), "note": note}


def _earlier_protocol_miou(study: Study, model: str) -> float | None:
    """The mIoU as the earlier study scored it (against the packed labels): the packed-size score where the run
    was scored at full resolution, else its mIoU."""
    packed = study.value(model, "miou_packed")
    return packed if packed is not None else study.value(model, "miou")


def earlier_table(study: Study) -> dict[str, Any]:
    """The earlier study's published numbers beside this run's, grouped under their devices."""
    models = [m for m in EARLIER_STUDY if study.reference_run(m) in study.summary.index] or list(EARLIER_STUDY)
    ours = [study.reference_run(m) for m in models]
    pub = [EARLIER_STUDY[m] for m in models]
    recomputed = [p["miou"] / p["latency_ms"] * 10 if "latency_ms" in p else None for p in pub]
    miou = [_earlier_protocol_miou(study, m) for m in ours]
    ms = [study.value(m, "latency_ms") for m in ours]
    columns = [
        _text([display_name(m) for m in models]),
        _column([p["miou"] for p in pub], 2, None),
        _column([p.get("latency_ms") for p in pub], 0, None),
        _column([p.get("miou_per_speed") for p in pub], 2, None),
        _column(recomputed, 2, None),
        _column(miou, 2, None),
        _column(ms, 1, None),
        _column([a / b * 10 if a is not None and b else None for a, b in zip(miou, ms, strict=True)], 2, None),
    ]
    header = ["Model", "mIoU", "ms", "mIoU/speed printed", "mIoU/speed recomputed", "mIoU", "ms", "mIoU/speed"]
    note = (
        f"Earlier study: a different run on a different device ({EARLIER_DEVICE}, 1024×512); its numbers are "
        "quoted as published and are not comparable one to one with this run's. Recomputed: mIoU / ms × 10. "
        "This run's mIoU here follows the earlier study's protocol: scored at the packed resolution."
    )
    table = _table("The earlier study's published table beside this run", header, columns, "l" + "r" * 7, note)
    devices = study.devices()
    table["groups"] = [
        ["", 1],
        [f"Earlier study ({EARLIER_DEVICE}, published)", 4],
        [f"This run ({', '.join(devices) or 'no device recorded'})", 3],
    ]
    return table
