"""The report's findings: sentences computed from the study's numbers, never typed in.

Each finding names the numbers it is computed from; when an input is missing it says which instead.
The comparisons of fixed models (ResNet50-PPM against MobileNetV2-PPM, ...) use the plain runs, or the runs of
the study's reference variant when it has no plain run (:attr:`segmodels.report.results.Study.reference`).
A difference between two models is called significant when its Holm-adjusted paired bootstrap p-value
(:mod:`segmodels.study.stats`) is at most 1 − confidence, and "not distinguishable" otherwise, or "not testable"
where the resample count cannot reach 1 − confidence in the family (:mod:`segmodels.report.verdicts`); without
per-image matrices no interval exists and the finding says the difference was not tested. Words of direction
(faster/slower, gains/drops, more/less) are chosen from the sign of the number they describe, and a number
after such a word is printed without its sign, so no sentence reads "0.8× faster" or "a drop of -0.88".
Model and module names come from the catalog (:mod:`segmodels.models.catalog`), the models compared and the
earlier study's published table (as printed) from the study's design (:mod:`segmodels.report.design`); its
mIoU/speed column is checked against its own formula (mIoU / latency in ms × 10). A distilled run is set beside
its plain counterpart and its teacher (:func:`segmodels.report.design.distillations`): mIoU, latency, training cost.
iIoU and Boundary IoU differences have their own finding (:mod:`segmodels.report.benchmark_findings`).
"""

from __future__ import annotations

from collections.abc import Sequence

from segmodels.metrics import majority_baseline
from segmodels.models import catalog
from segmodels.models.catalog import display_name
from segmodels.report import design
from segmodels.report.benchmark_findings import finding_small_objects
from segmodels.report.design import EARLIER_DEVICE, EARLIER_STUDY, under_backbone_head
from segmodels.report.results import Study, pareto_front, read_confusion, read_metrics
from segmodels.report.verdicts import level as _level
from segmodels.report.verdicts import need as _need
from segmodels.report.verdicts import resamples_used, verdict_rule
from segmodels.report.verdicts import verdict as _verdict

__all__ = ["findings", "interval_coverage", "verdict_rule"]

def _label(backbone: str) -> str:
    return catalog.backbone(backbone).label


def _module(model: str) -> str:
    """The label of a model's head: the context module it stands for."""
    return catalog.head(catalog.arch_of(model)[1]).label


def _compared(study: Study) -> bool:
    """Whether the study's label set is the earlier study's, so that its published numbers are set beside ours."""
    return design.compared_with_earlier(study.labels.name)


def interval_coverage(study: Study, models: Sequence[str]) -> str:
    """What the intervals of ``models`` cover: seeds and images for several seeds, images only for one."""
    one = [m for m in models if (study.value(m, "seeds") or 0) < 2]
    several = ("the training seeds and the validation images are resampled, each on its own as the crossed factors "
               "they are, so an interval holds the seed-to-seed variation")  # fmt: skip
    if not one:
        return f"With several seeds per model, {several}."
    only = "the interval covers image sampling only; the seed-to-seed variation, not measured, adds to it"
    if len(one) == len(models):
        return f"Each model has one training seed, so {only}."
    return (f"Where a model has several seeds, {several}; with one seed ({', '.join(display_name(m) for m in one)}), "
            f"{only}.")  # fmt: skip


def _finding_mobilenet(study: Study) -> str:
    big, small = map(under_backbone_head, design.MOBILE)
    r50, mv2 = study.reference_run(big), study.reference_run(small)
    if missing := _need(study, (r50, mv2), ("miou", "latency_ms")):
        return missing
    m50, m2 = study.value(r50, "miou"), study.value(mv2, "miou")
    l50, l2 = study.value(r50, "latency_ms"), study.value(mv2, "latency_ms")
    verdict = _verdict(study, r50, mv2)
    # The expected trade is faster for less; demo runs and odd devices can invert either half.
    if l2 < l50:
        pace = f" {l50 / l2:.2f}× faster than"
    else:
        pace = f", against expectation, {l2 / l50:.2f}× slower than" if l2 > l50 else " as fast as"
    if m2 <= m50:
        change = "for a drop of" if l2 < l50 else "and drops"
    else:
        change = "and, against expectation, gains" if l2 < l50 else "and gains"
    return (
        f"{display_name(small)} runs{pace} {display_name(big)} ({l2:.1f} vs {l50:.1f} ms) "
        f"{change} {abs(m50 - m2):.2f} mIoU points ({m50:.2f} → {m2:.2f}, {(m2 - m50) / m50 * 100:+.1f} % relative"
        + (f"; {verdict}" if verdict else "")
        + ")."
    )


def _finding_depth(study: Study) -> str:
    parts = []
    for a, b in design.DEPTH_STEPS:
        ma, mb = study.reference_run(under_backbone_head(a)), study.reference_run(under_backbone_head(b))
        step = f"{_label(a)} → {_label(b)}"
        if _need(study, (ma, mb), ("miou", "latency_ms")):
            absent = [
                display_name(m)
                for m in (ma, mb)
                if study.value(m, "miou") is None or study.value(m, "latency_ms") is None
            ]
            parts.append(f"{step}: not available (missing {', '.join(absent)})")
            continue
        gain = study.value(mb, "miou") - study.value(ma, "miou")
        cost = study.value(mb, "latency_ms") / study.value(ma, "latency_ms")
        extra = study.value(mb, "latency_ms") - study.value(ma, "latency_ms")
        per_ms = f", {gain / extra:+.3f} points per extra ms" if extra > 0 else ""
        verdict = _verdict(study, mb, ma)
        verdict = f" ({verdict})" if verdict else ""
        parts.append(f"{step}: {gain:+.2f} mIoU{verdict} for {cost:.2f}× the latency{per_ms}")
    return "; ".join(parts) + "."


def _finding_context(study: Study) -> str:
    models = [
        m for m in map(study.reference_run, design.context_models()) if study.value(m, "miou") is not None
    ]
    if len(models) < 2:
        return f"Not available: fewer than two {_label(design.CONTEXT_BACKBONE)} context modules have results."
    ranked = sorted(models, key=lambda m: -study.value(m, "miou"))
    order = " > ".join(f"{_module(m)} {study.value(m, 'miou'):.2f}" for m in ranked)
    margin = study.value(ranked[0], "miou") - study.value(ranked[1], "miou")
    stds = [study.value(m, "miou_std") for m in ranked[:2] if (study.value(m, "seeds") or 0) > 1]
    if len(stds) == 2 and None not in stds:
        spread = max(stds)
        seeds = ("within" if margin <= spread else "beyond") + f" the seed-to-seed standard deviation ({spread:.2f})"
    else:
        seeds = "from a single seed, so not tested against seed-to-seed variation"
    interval = _verdict(study, ranked[0], ranked[1])
    text = f"Best context module on {_label(design.CONTEXT_BACKBONE)}: {_module(ranked[0])} ({order}); "
    if interval is None:
        text += f"its lead over the runner-up is {margin:.2f} points, {seeds}."
    else:
        text += f"its lead over the runner-up is {margin:.2f} points ({interval}), {seeds}."
        pairs = [study.comparison(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1 :]]
        pairs = [c for c in pairs if c is not None]
        apart = [" > ".join(_module(m) for m in ((c.a, c.b) if c.diff > 0 else (c.b, c.a)))
                 for c in pairs if c.significant]  # fmt: skip
        if len(pairs) > 1:
            text += (
                f" Of the {len(pairs)} pairs of modules, {len(apart)} {'differs' if len(apart) == 1 else 'differ'} "
                "significantly"
                + (f" ({', '.join(apart)})" if apart else "")
                + ("; the others are not distinguishable" if len(apart) < len(pairs) else "")
                + "."
            )
    sizes = [(m, study.value(m, "params_m")) for m in ranked]
    if all(size is not None for _, size in sizes):
        text += (" Each head ends in the same 3×3 convolution, dropout and classifier at its configured width (512 "
                 "channels unless its options say otherwise), so the modules differ in their context part; one width "
                 "is not one size: " + ", ".join(f"{_module(m)} {size:.1f} M" for m, size in sizes)
                 + " parameters in all.")  # fmt: skip
    fcn = study.reference_run(design.on_context_backbone(design.BASELINE_HEAD))
    if fcn in models and ranked[0] != fcn:
        gain = study.value(ranked[0], "miou") - study.value(fcn, "miou")  # >= 0: ranked[0] is the best
        text += f" Over the plain {_module(fcn)} head (no context module) it gains {gain:.2f} points."
    if not _compared(study):
        return text
    earlier = [m for m in EARLIER_STUDY if catalog.arch_of(m)[0] == design.CONTEXT_BACKBONE]
    earlier.sort(key=lambda m: -EARLIER_STUDY[m]["miou"])
    text += " The earlier study ranked " + " > ".join(
        f"{_module(m)} {EARLIER_STUDY[m]['miou']:.2f}" for m in earlier
    )
    return text + "."


def _cost_clause(study: Study, v3: str, v2: str, rl: float) -> str:
    """Where MobileNetV3's latency comes from, as far as GFLOPs and parameters tell: ratios to MobileNetV2's."""
    v = study.value
    if not (v(v3, "gflops") and v(v2, "gflops")):
        return ""
    rg = v(v3, "gflops") / v(v2, "gflops")
    ms3, ms2 = v(v3, "latency_ms") / v(v3, "gflops"), v(v2, "latency_ms") / v(v2, "gflops")
    text = f" It computes {v(v3, 'gflops'):.1f} GFLOPs per image, {rg:.2f}× {_label(design.NEWER_MOBILE[1])}'s"
    if v(v3, "params_m") and v(v2, "params_m"):
        text += f", with {v(v3, 'params_m') / v(v2, 'params_m'):.2f}× its parameters"
    if rg < 1 <= rl:
        return text + f": its lower arithmetic does not show as lower latency ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."
    if rg >= 1 and rl >= 1:
        share = "all of" if rg >= rl else "only part of"
        return text + f": the extra arithmetic covers {share} the extra time ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."
    return text + f" ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."


def _finding_mobilenetv3(study: Study) -> str:
    newer, older = map(under_backbone_head, design.NEWER_MOBILE)
    v3, v2 = study.reference_run(newer), study.reference_run(older)
    if missing := _need(study, (v3, v2), ("miou", "latency_ms")):
        return missing
    v = study.value
    dm, rl = v(v3, "miou") - v(v2, "miou"), v(v3, "latency_ms") / v(v2, "latency_ms")
    text = (
        f"{display_name(newer)} reaches {v(v3, 'miou'):.2f} mIoU ({dm:+.2f} against "
        f"{display_name(older)}) at {v(v3, 'latency_ms'):.1f} ms ({rl:.2f}× "
        f"{_label(design.NEWER_MOBILE[1])}'s)"
    )
    if rl < 1 and dm < 0:
        text += f", trading {-dm:.2f} points for speed"
    elif rl > 1 and dm > 0:
        text += f", buying {dm:.2f} points with time"
    else:
        speed = "faster" if rl < 1 else "slower" if rl > 1 else "as fast"
        text += f"; it is {speed} and {'more' if dm > 0 else 'less' if dm < 0 else 'as'} accurate"
    text += "." + _cost_clause(study, v3, v2, rl)
    if verdict := _verdict(study, v3, v2):
        text += f" The mIoU difference has the {verdict}."
    points = {m: (v(m, "latency_ms"), v(m, "miou")) for m in study.summary.index if v(m, "latency_ms") and v(m, "miou")}
    text += f" It {'lies on' if v3 in pareto_front(points) else 'is off'} the study's mIoU-latency Pareto front"
    if not _compared(study):
        return text + "."
    published, earlier_v2 = EARLIER_STUDY[newer]["miou"], EARLIER_STUDY[older]["miou"]
    v3_label, v2_label = map(_label, design.NEWER_MOBILE)
    earlier = f"the earlier study's {v3_label} gave {published:.2f} mIoU against its {v2_label}'s {earlier_v2:.2f}"
    return f"{text}; {earlier}."


def _distilled(study: Study, d: design.Distillation) -> str:
    """One distilled run against its plain counterpart (mIoU, latency, training cost) and against its teacher."""
    v, student = study.value, display_name(d.student)
    source = display_name(d.teacher) if d.teacher else "a checkpoint from outside the study"
    if d.plain is None:
        return f"{student} distils from {source}; no run of its architecture trains without a teacher to set beside it."
    if missing := _need(study, (d.student, d.plain), ("miou",)):
        return f"{student}: {missing}"
    plain = display_name(d.plain)
    verdict = _verdict(study, d.student, d.plain)
    text = (f"{student}, distilled from {source}, scores {v(d.student, 'miou'):.2f} mIoU, "
            f"{v(d.student, 'miou') - v(d.plain, 'miou'):+.2f} against {plain} trained without it"
            + (f" ({verdict})" if verdict else ""))  # fmt: skip
    if d.teacher and v(d.teacher, "miou") is not None:
        verdict = _verdict(study, d.student, d.teacher)
        text += (f", {v(d.student, 'miou') - v(d.teacher, 'miou'):+.2f} against its teacher "
                 f"({v(d.teacher, 'miou'):.2f}" + (f"; {verdict})" if verdict else ")"))  # fmt: skip
    times = [v(m, "latency_ms") for m in (d.student, d.plain)]
    timed = f"timed here at {times[0]:.1f} against {times[1]:.1f} ms" if None not in times else "latency not measured"
    text += (f". Inference latency is unchanged: the distilled network is the plain one ({timed}; a gap is the "
             "timing's own variation)")  # fmt: skip
    costs = [study.train_cost(m) for m in (d.student, d.plain)]
    if None in costs or costs[0][1] != costs[1][1]:
        return text + "; its training cost is not comparable (cost.json missing, or other devices)."
    (hours, unit), (alone, _) = costs
    text += (f". Training took {hours:.3g} {unit} against {alone:.3g} ({(hours / alone - 1) * 100:+.0f} %); what "
             "distillation adds is the teacher's forward pass on every batch")  # fmt: skip
    teacher = study.train_cost(d.teacher) if d.teacher else None
    if teacher is not None and teacher[1] == unit:
        text += f", besides the {teacher[0]:.3g} {unit} of training the teacher once"
    return text + "."


def _finding_distillation(study: Study) -> str:
    return " ".join(_distilled(study, d) for d in design.distillations(study.cfg))


def _finding_earlier(study: Study) -> str:
    shared = [m for m in EARLIER_STUDY if study.value(study.reference_run(m), "miou") is not None]
    if not shared:
        return "Not available: no model of the earlier study's table has results here."
    diffs = ", ".join(
        f"{display_name(m)} {study.value(study.reference_run(m), 'miou') - EARLIER_STUDY[m]['miou']:+.2f}"
        for m in shared
    )
    devices = study.devices([study.reference_run(m) for m in shared]) or ["an unrecorded device"]
    text = (
        f"Against the earlier study (a different run on {EARLIER_DEVICE}; this run: {', '.join(devices)}, "
        f"data '{study.cfg.data.dataset}'), mIoU differs by: {diffs} points."
    )
    if study.cfg.data.source != "cityscapes":
        text += " This run's data is not Cityscapes, so the values are not comparable, only the procedure."
    return text


def _finding_formula() -> str:
    off = []
    for m, p in EARLIER_STUDY.items():
        if "latency_ms" in p and "miou_per_speed" in p:
            recomputed = p["miou"] / p["latency_ms"] * 10
            if abs(recomputed - p["miou_per_speed"]) > 0.05:
                off.append(
                    f"{display_name(m)} prints {p['miou_per_speed']:.2f} where {p['miou']:.2f} / "
                    f"{p['latency_ms']:g} × 10 = {recomputed:.2f}"
                )
    if not off:
        return "The earlier study's mIoU/speed column agrees with its formula mIoU / ms × 10."
    rows = "one row" if len(off) == 1 else f"{len(off)} rows"
    return (
        f"The earlier study's mIoU/speed column breaks its own formula mIoU / ms × 10 in {rows}: "
        + "; ".join(off)
        + ". This report recomputes the column from mIoU and latency."
    )


def _num_images(study: Study) -> int | None:
    for model in study.finished():
        for run in study.runs(model):
            metrics = read_metrics(run)
            if metrics and isinstance(metrics.get("num_images"), int):
                return metrics["num_images"]
    return None


def _finding_uncertainty(study: Study) -> str:
    v = study.value
    bounded = [m for m in study.finished() if v(m, "miou_lo") is not None and v(m, "miou_hi") is not None]
    if not bounded:
        return ("Not available: no run has per-image confusion matrices (confusion_per_image.npy, written by "
                "'segmodels evaluate'), so no score carries an interval and no difference was tested.")  # fmt: skip
    st = study.cfg.stats
    n = _num_images(study)
    widths = {m: (v(m, "miou_hi") - v(m, "miou_lo")) / 2 for m in bounded}
    widest = max(widths, key=widths.get)
    count = resamples_used(study)
    text = (
        f"Intervals are {_level(study)} percentile bootstrap intervals over the "
        + (f"{n} " if n else "")
        + f"validation images ({f'{count:,} resamples, ' if count else ''}seed {st.seed}, the same resampled image "
        f"sets for every model, so differences are paired); mIoU half-widths reach ±{widths[widest]:.2f} points "
        f"({display_name(widest)}). {interval_coverage(study, bounded)}"
    )
    if rule := verdict_rule(study):
        text += f" {rule}"
    seeded = [m for m in bounded if (v(m, "seeds") or 0) > 1 and v(m, "miou_std") is not None]
    seeded = [m for m in seeded if v(m, "miou_boot_std") is not None]
    if not seeded:
        return text
    by_seed = [m for m in seeded if v(m, "miou_std") > v(m, "miou_boot_std")]
    by_images = [m for m in seeded if m not in by_seed]

    def listed(models: list[str]) -> str:
        return ", ".join(f"{display_name(m)} ({v(m, 'miou_std'):.2f} vs {v(m, 'miou_boot_std'):.2f})" for m in models)

    text += " Seed-to-seed standard deviation against the image-sampling standard deviation of the mIoU: "
    parts = []
    if by_seed:
        parts.append(f"the training seed dominates for {listed(by_seed)}")
    if by_images:
        parts.append(f"the choice of images dominates for {listed(by_images)}")
    return text + "; ".join(parts) + "."


def _finding_chance(study: Study) -> str:
    matrices = (read_confusion(run) for model in study.finished() for run in study.runs(model))
    matrix = next((m for m in matrices if m is not None), None)
    if matrix is None:
        return "Not available: no run folder holds a confusion.npy (written by 'segmodels evaluate')."
    base = majority_baseline(matrix)
    miou, allacc = base["miou"] * 100, base["allacc"] * 100
    text = (f"Predicting {base['class']}, the most frequent class of the validation labels, everywhere scores "
            f"{miou:.2f} mIoU and {allacc:.2f} allAcc")  # fmt: skip
    scored = {m: v for m in study.finished() if (v := study.value(m, "miou")) is not None}
    if scored and miou > 0:
        low, high = min(scored, key=scored.get), max(scored, key=scored.get)
        text += (f"; the models score from {scored[low]:.2f} ({display_name(low)}, {scored[low] / miou:.1f}× that) "
                 f"to {scored[high]:.2f} ({display_name(high)}, {scored[high] / miou:.1f}×)")  # fmt: skip
    return text + "."


def _finding_cost(study: Study) -> str:
    costs = {m: c for m in study.finished() if (c := study.train_cost(m)) is not None}
    if not costs:
        return "Not available: no run folder holds a cost.json (written by training)."
    units = sorted({unit for _, unit in costs.values()})
    cheap, dear = min(costs, key=lambda m: costs[m][0]), max(costs, key=lambda m: costs[m][0])
    total = sum(h * (study.value(m, "seeds") or 1) for m, (h, _) in costs.items())
    text = (
        f"Training one run took from {costs[cheap][0]:.3g} {costs[cheap][1]} ({display_name(cheap)}) to "
        f"{costs[dear][0]:.3g} {costs[dear][1]} ({display_name(dear)})"
    )
    text += f"; {total:.3g} {units[0]} for all {len(costs)} models' runs" if len(units) == 1 else ""
    energies = {m: e for m in costs if (e := study.value(m, "energy_wh")) is not None}
    if energies:
        spent = sum(e * (study.value(m, "seeds") or 1) for m, e in energies.items())
        text += f", {spent / 1000:.3g} kWh of GPU energy measured for {len(energies)} of them"
    else:
        text += "; GPU energy was not measured (no NVML)"
    if len(units) > 1:
        text += ". Units differ (GPU-hours where a GPU trained, CPU-hours elsewhere), so they do not compare"
    devices = sorted({str(study.summary.at[m, "train_device"]) for m in costs if "train_device" in study.summary
                      and isinstance(study.summary.at[m, "train_device"], str)})  # fmt: skip
    return text + (f" (trained on {', '.join(devices)})." if devices else ".")


def findings(study: Study) -> list[dict[str, str]]:
    """The findings, each a title and one sentence or two computed from the numbers."""
    mobile, reference = _label(design.MOBILE[1]), _label(design.MOBILE[0])
    distilled = _finding_distillation(study)  # "" in a study without distillation: no finding
    distillation = [{"title": "Distillation", "text": distilled}] if distilled else []
    if _compared(study):
        earlier = [{"title": "The earlier study", "text": _finding_earlier(study)},
                   {"title": "mIoU/speed column", "text": _finding_formula()}]  # fmt: skip
    else:
        label = design.dataset_label(study.labels.name, study.labels.num_classes, study.cfg.data.dataset)
        earlier = [{"title": "Published results", "text": design.not_compared(label)}]
    return [
        {"title": "Chance level", "text": _finding_chance(study)},
        {"title": f"{mobile} against {reference}", "text": _finding_mobilenet(study)},
        {"title": f"Depth ({catalog.head(design.BACKBONE_HEAD).label} head)", "text": _finding_depth(study)},
        {"title": "Context modules", "text": _finding_context(study)},
        {"title": "Small objects and boundaries", "text": finding_small_objects(study)},
        {"title": _label(design.NEWER_MOBILE[0]), "text": _finding_mobilenetv3(study)},
        *distillation,
        {"title": "How sure", "text": _finding_uncertainty(study)},
        {"title": "Training cost", "text": _finding_cost(study)},
        *earlier,
    ]
