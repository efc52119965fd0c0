"""The report's uncertainty section: every score with its paired bootstrap interval over the training seeds and
validation images, every discussed mIoU difference with its Holm-adjusted p-value and verdict
(:mod:`segmodels.study.stats`), and every model's training and evaluation cost (:mod:`segmodels.engine.cost`)."""

from __future__ import annotations

from typing import Any

from segmodels.models.catalog import display_name
from segmodels.report.findings import interval_coverage
from segmodels.report.results import Study
from segmodels.report.tables import _ci_cells, _column, _hours, _level, _shown, _table, _text
from segmodels.report.verdicts import p_text, resamples_used, verdict_rule, verdict_word
from segmodels.study.plan import read_plan

__all__ = ["uncertainty_section"]


def _interval_table(study: Study) -> dict[str, Any]:
    v = study.value
    models = [m for m in study.finished() if v(m, "miou_lo") is not None]
    level = _level(study)
    shown = _shown(study, models)

    def dominant(m: str) -> str:
        seed, image = v(m, "miou_std"), v(m, "miou_boot_std")
        if (v(m, "seeds") or 0) < 2 or seed is None or image is None:
            return "–"
        return "seed" if seed > image else "images"

    columns = [
        _text([display_name(m) for m in models]),
        _text([str(int(v(m, "seeds") or 0)) for m in models]),
        _column([v(m, "miou") for m in models], 2, None),
        *(_ci_cells(study, models, metric) for metric in shown),
        _column([v(m, "miou_std") if (v(m, "seeds") or 0) > 1 else None for m in models], 2, None),
        _column([v(m, "miou_boot_std") for m in models], 2, None),
        _text([dominant(m) for m in models]),
    ]
    header = ["Model", "Seeds", "mIoU", *(f"{m.label} {level} CI" for m in shown), "Seed std", "Image std",
              "Dominant"]  # fmt: skip
    st = study.cfg.stats
    count = resamples_used(study)
    note = (
        f"Percentile bootstrap of the seed mean, {f'{count:,} resamples, ' if count else ''}seed {st.seed}, the same "
        f"image sets for every model. {interval_coverage(study, models)} Seed std: standard deviation of the mIoU "
        "over training seeds (– for one seed); image std: standard deviation of the mIoU over resampled images alone; dominant: "
        "the larger."
    )
    return _table(f"Scores with {level} intervals", header, columns, "ll" + "r" * (len(header) - 3) + "l", note)


def _differences_table(study: Study) -> dict[str, Any]:
    level = _level(study)
    rows = study.comparisons
    models = sorted({m for c in rows for m in (c.a, c.b)})
    columns = [
        _text([c.group for c in rows]),
        _text([f"{display_name(c.a)} − {display_name(c.b)}" for c in rows]),
        _text([f"{c.diff:+.2f}" for c in rows]),
        _text([f"{c.lo:+.2f} to {c.hi:+.2f}" for c in rows]),
        _text([p_text(c) if c.tested else "–" for c in rows]),
        [{"t": verdict_word(c), "b": c.significant} for c in rows],
    ]
    header = ["Comparison", "Pair (a − b)", "mIoU diff.", f"{level} CI", "Holm p", "Verdict"]
    note = (
        f"Paired bootstrap of the mIoU difference in points; the {level} interval is shown unadjusted. "
        f"{verdict_rule(study)} {interval_coverage(study, models)}"
    )
    return _table("Pairwise mIoU differences", header, columns, "llrrrl", note)


def _cost_table(study: Study) -> dict[str, Any]:
    v = study.value
    models = [m for m in study.finished() if v(m, "train_hours") is not None or v(m, "eval_hours") is not None]
    devices = [study.summary.at[m, "train_device"] if "train_device" in study.summary else None for m in models]
    columns = [
        _text([display_name(m) for m in models]),
        _text([d if isinstance(d, str) else "–" for d in devices]),
        _text([_hours(v(m, "train_hours")) for m in models]),
        _text([_hours(v(m, "train_gpu_hours")) for m in models]),
        _text([_hours(v(m, "train_cpu_hours")) for m in models]),
        _text([f"{v(m, 'train_images'):,.0f}" if v(m, "train_images") is not None else "–" for m in models]),
        _text([_hours(v(m, "energy_wh")) for m in models]),
        _text([_hours(v(m, "eval_hours")) for m in models]),
    ]
    header = ["Model", "Trained on", "Train (h)", "GPU-h", "CPU-h", "Images", "Energy (Wh)", "Eval (h)"]
    note = (
        "One run, mean over seeds. Train (h): wall clock, resumed segments summed; GPU-h: wall hours × GPUs; CPU-h: "
        "process CPU time; images: images the final weights were trained on; energy: GPU energy from NVML, – where "
        "not measurable; eval: wall clock of the evaluation."
    )
    plan = read_plan(study.root / "plan.csv")
    if plan:  # segmodels plan's estimate beside what the run cost
        planned = [(plan.get(m) or {}).get("train_hours") or "" for m in models]
        columns.insert(3, _text([_hours(float(p)) if p else "–" for p in planned]))
        header.insert(3, "Planned (h)")
        sources = {(plan.get(m) or {}).get("train_source") for m in models} - {None, ""}
        note += (" Planned: the training time 'segmodels plan' estimated before the run "
                 f"({', '.join(sorted(sources))}; plan.csv).")  # fmt: skip
    return _table("Cost", header, columns, "ll" + "r" * (len(header) - 2), note)


def uncertainty_section(study: Study) -> dict[str, Any]:
    """Interval, difference and cost tables where their inputs exist, and a reason for each one left out."""
    tables = []
    if any(study.value(m, "miou_lo") is not None for m in study.finished()):
        tables.append(_interval_table(study))
    if study.comparisons:
        tables.append(_differences_table(study))
    if any(study.value(m, "train_hours") is not None or study.value(m, "eval_hours") is not None
           for m in study.finished()):  # fmt: skip
        tables.append(_cost_table(study))
    titles = [t["title"] for t in tables]
    missing = []
    if not any(t.startswith("Scores with") for t in titles):
        missing.append("no intervals: the runs have no confusion_per_image.npy (re-run 'segmodels evaluate')")
    elif "Pairwise mIoU differences" not in titles:
        missing.append("no pairwise differences: no pair the report discusses has intervals for both models")
    if "Cost" not in titles:
        missing.append("no cost: the runs have no cost.json or evaluation cost")
    return {"tables": tables, "missing": missing}
