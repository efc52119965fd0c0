"""The report's findings: sentences computed from the study's numbers, never typed in.

Each finding names the numbers it is computed from; when an input is missing it says which instead.
The earlier study's published table is kept here as printed, to compare against and to check its
mIoU/speed column against its own formula (mIoU / latency in ms × 10).
"""

from __future__ import annotations

from collections.abc import Sequence

from segmodels.results_files import BACKBONE_LABELS, HEAD_LABELS, Study, display_name, pareto_front

__all__ = ["EARLIER_DEVICE", "EARLIER_STUDY", "findings"]

# The earlier study's published table (PSPNet on Cityscapes at 1024×512, NVIDIA 2080Ti), as printed.
# "miou_per_speed" is its own column, kept to show where it departs from its formula mIoU / ms × 10.
EARLIER_DEVICE = "NVIDIA 2080Ti"
EARLIER_STUDY: dict[str, dict[str, float]] = {
    "resnet18-ppm": {"miou": 62.89, "macc": 71.05, "allacc": 93.36, "latency_ms": 34, "miou_per_speed": 18.5},
    "resnet50-ppm": {"miou": 68.97, "macc": 76.67, "allacc": 94.52, "latency_ms": 79, "miou_per_speed": 8.7},
    "resnet101-ppm": {"miou": 71.07, "latency_ms": 183, "miou_per_speed": 5.45},
    "mobilenetv2-ppm": {"miou": 59.25, "latency_ms": 22, "miou_per_speed": 25.17},
    "mobilenetv3-ppm": {"miou": 56.82},
    "resnet18-aspp": {"miou": 62.09, "macc": 71.08, "allacc": 93.34},
    "resnet18-ocr": {"miou": 61.86, "macc": 70.87, "allacc": 93.31},
}


def _need(study: Study, models: Sequence[str], keys: Sequence[str]) -> str | None:
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


def _finding_mobilenet(study: Study) -> str:
    r50, mv2 = "resnet50-ppm", "mobilenetv2-ppm"
    if missing := _need(study, (r50, mv2), ("miou", "latency_ms")):
        return missing
    m50, m2 = study.value(r50, "miou"), study.value(mv2, "miou")
    l50, l2 = study.value(r50, "latency_ms"), study.value(mv2, "latency_ms")
    return (
        f"MobileNetV2-PPM runs {l50 / l2:.2f}× faster than ResNet50-PPM ({l2:.1f} vs {l50:.1f} ms) for a drop of "
        f"{m50 - m2:.2f} mIoU points ({m50:.2f} → {m2:.2f}, {(m50 - m2) / m50 * 100:.1f} % relative)."
    )


def _finding_depth(study: Study) -> str:
    parts = []
    for a, b in (("resnet18", "resnet50"), ("resnet50", "resnet101")):
        ma, mb = f"{a}-ppm", f"{b}-ppm"
        step = f"{BACKBONE_LABELS[a]} → {BACKBONE_LABELS[b]}"
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
        parts.append(f"{step}: {gain:+.2f} mIoU for {cost:.2f}× the latency{per_ms}")
    return "; ".join(parts) + "."


def _finding_context(study: Study) -> str:
    models = [m for m in (f"resnet18-{h}" for h in HEAD_LABELS) if study.value(m, "miou") is not None]
    if len(models) < 2:
        return "Not available: fewer than two ResNet18 context modules have results."
    ranked = sorted(models, key=lambda m: -study.value(m, "miou"))
    order = " > ".join(f"{HEAD_LABELS[m.partition('-')[2]]} {study.value(m, 'miou'):.2f}" for m in ranked)
    margin = study.value(ranked[0], "miou") - study.value(ranked[1], "miou")
    stds = [study.value(m, "miou_std") for m in ranked[:2] if (study.value(m, "seeds") or 0) > 1]
    if len(stds) == 2 and None not in stds:
        spread = max(stds)
        verdict = ("within" if margin <= spread else "beyond") + f" the seed-to-seed standard deviation ({spread:.2f})"
    else:
        verdict = "from a single seed, so not tested against seed-to-seed variation"
    text = f"Best context module on ResNet18: {HEAD_LABELS[ranked[0].partition('-')[2]]} ({order}); "
    text += f"its lead over the runner-up is {margin:.2f} points, {verdict}."
    if "resnet18-fcn" in models and ranked[0] != "resnet18-fcn":
        gain = study.value(ranked[0], "miou") - study.value("resnet18-fcn", "miou")
        text += f" Over the plain FCN head (no context module) it gains {gain:+.2f} points."
    earlier = sorted((m for m in EARLIER_STUDY if m.startswith("resnet18-")), key=lambda m: -EARLIER_STUDY[m]["miou"])
    text += " The earlier study ranked " + " > ".join(
        f"{HEAD_LABELS[m.partition('-')[2]]} {EARLIER_STUDY[m]['miou']:.2f}" for m in earlier
    )
    return text + "."


def _cost_clause(study: Study, v3: str, v2: str, rl: float) -> str:
    """Where MobileNetV3's latency comes from, as far as GFLOPs and parameters tell: ratios to MobileNetV2's."""
    v = study.value
    if not (v(v3, "gflops") and v(v2, "gflops")):
        return ""
    rg = v(v3, "gflops") / v(v2, "gflops")
    ms3, ms2 = v(v3, "latency_ms") / v(v3, "gflops"), v(v2, "latency_ms") / v(v2, "gflops")
    text = f" It computes {v(v3, 'gflops'):.1f} GFLOPs per image, {rg:.2f}× MobileNetV2's"
    if v(v3, "params_m") and v(v2, "params_m"):
        text += f", with {v(v3, 'params_m') / v(v2, 'params_m'):.2f}× its parameters"
    if rg < 1 <= rl:
        return text + f": its lower arithmetic does not show as lower latency ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."
    if rg >= 1 and rl >= 1:
        share = "all of" if rg >= rl else "only part of"
        return text + f": the extra arithmetic covers {share} the extra time ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."
    return text + f" ({ms3:.2f} vs {ms2:.2f} ms per GFLOP)."


def _finding_mobilenetv3(study: Study) -> str:
    v3, v2 = "mobilenetv3-ppm", "mobilenetv2-ppm"
    if missing := _need(study, (v3, v2), ("miou", "latency_ms")):
        return missing
    v = study.value
    dm, rl = v(v3, "miou") - v(v2, "miou"), v(v3, "latency_ms") / v(v2, "latency_ms")
    text = (
        f"MobileNetV3-PPM reaches {v(v3, 'miou'):.2f} mIoU ({dm:+.2f} against MobileNetV2-PPM) at "
        f"{v(v3, 'latency_ms'):.1f} ms ({rl:.2f}× MobileNetV2's)"
    )
    if rl < 1:
        text += "; it is faster and more accurate" if dm >= 0 else f", trading {-dm:.2f} points for speed"
    elif dm >= 0:
        text += f", buying {dm:.2f} points with time"
    else:
        text += ", slower and less accurate"
    text += "." + _cost_clause(study, v3, v2, rl)
    points = {m: (v(m, "latency_ms"), v(m, "miou")) for m in study.summary.index if v(m, "latency_ms") and v(m, "miou")}
    text += f" It {'lies on' if v3 in pareto_front(points) else 'is off'} the study's mIoU-latency Pareto front"
    published, earlier_v2 = EARLIER_STUDY[v3]["miou"], EARLIER_STUDY[v2]["miou"]
    return (
        text
        + f"; the earlier study's MobileNetV3 gave {published:.2f} mIoU against its MobileNetV2's {earlier_v2:.2f}."
    )


def _finding_earlier(study: Study) -> str:
    shared = [m for m in EARLIER_STUDY if study.value(m, "miou") is not None]
    if not shared:
        return "Not available: no model of the earlier study's table has results here."
    diffs = ", ".join(f"{display_name(m)} {study.value(m, 'miou') - EARLIER_STUDY[m]['miou']:+.2f}" for m in shared)
    devices = study.devices(shared) or ["an unrecorded device"]
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


def findings(study: Study) -> list[dict[str, str]]:
    """The findings, each a title and one sentence or two computed from the numbers."""
    return [
        {"title": "MobileNetV2 against ResNet50", "text": _finding_mobilenet(study)},
        {"title": "Depth (PPM head)", "text": _finding_depth(study)},
        {"title": "Context modules", "text": _finding_context(study)},
        {"title": "MobileNetV3", "text": _finding_mobilenetv3(study)},
        {"title": "The earlier study", "text": _finding_earlier(study)},
        {"title": "mIoU/speed column", "text": _finding_formula()},
    ]
