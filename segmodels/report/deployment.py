"""The report's CPU deployment table: each deployed model's latency and mIoU on every path of
:mod:`segmodels.study.deploy` (PyTorch fp32 and bf16, ONNX Runtime fp32 and INT8), from ``summary.csv``.

Per model: the median latency of each path's fastest mode (the row's fastest in bold), the fastest path with its
speed-up over eager fp32 PyTorch, the fp32 mIoU (the best in bold) and, per other path, the paired bootstrap
difference from fp32 in mIoU points with its interval. A column no model has a value for is left out (a bf16
latency on a CPU without native bf16); a study without ``deploy.enabled`` has no such table.
"""

from __future__ import annotations

from typing import Any

from segmodels.models.catalog import display_name
from segmodels.report.results import Study, timed_batch
from segmodels.report.tables import _column, _distinct, _fmt, _level, _table, _text
from segmodels.study.deploy import KEYS, PATHS, deploy_columns

__all__ = ["DEPLOY_TITLE", "deployment_table"]

DEPLOY_TITLE = "Deployment on the CPU"
LABELS = {"fp32": "fp32", "bf16": "bf16", "onnx": "ONNX", "onnx-int8": "INT8"}  # path → its name in the table


def _word(study: Study, model: str, column: str) -> str | None:
    """A text cell of the summary, or None (column absent, blank)."""
    if column not in study.summary.columns:
        return None
    value = study.summary.at[model, column]
    return str(value) if isinstance(value, str) and value else None


def _has(study: Study, model: str, column: str) -> bool:
    return study.value(model, column) is not None or _word(study, model, column) is not None


def _latency_rows(study: Study, models: list[str], paths: list[str]) -> list[list[dict[str, Any]]]:
    """Per model the cells of the paths' latencies (– where not timed), the row's fastest in bold (none when one is
    shown)."""
    rows = []
    for m in models:
        values = [study.value(m, f"deploy_{KEYS[p]}_ms") for p in paths]
        shown = {round(v, 1) for v in values if v is not None}
        best = min(shown) if len(shown) > 1 else None
        rows.append([{"t": _fmt(v, 1), "b": v is not None and round(v, 1) == best} for v in values])
    return rows


def _fastest(study: Study, model: str) -> str:
    path, speedup = _word(study, model, "deploy_fastest"), study.value(model, "deploy_speedup")
    if path is None:
        return "–"
    return LABELS.get(path, path) + (f", {speedup:.1f}×" if speedup is not None else "")


def _difference(study: Study, model: str, key: str) -> str:
    """``-0.05 (-0.20 to +0.10)``: the path's mIoU minus fp32's in points with its interval (the difference alone
    where the scores were not bootstrapped); – where the path was not scored."""
    diff, lo, hi = (study.value(model, f"deploy_{key}_{end}") for end in ("diff", "lo", "hi"))
    miou, fp32 = study.value(model, f"deploy_miou_{key}"), study.value(model, "deploy_miou_fp32")
    if diff is None and miou is not None and fp32 is not None:  # scored, not bootstrapped: no interval
        diff = miou - fp32
    if diff is None:
        return "–"
    # No break inside the interval: a narrow column wraps it whole under the difference.
    return f"{diff:+.2f}" + (f" ({lo:+.2f}\u00a0to\u00a0{hi:+.2f})" if lo is not None and hi is not None else "")


def _note(study: Study, models: list[str]) -> str:
    cpus = _distinct(study, "deploy_cpu")  # only deployed models have one
    threads = sorted({int(t) for m in models if (t := study.value(m, "deploy_threads")) is not None})
    where = " and ".join(cpus) or "a CPU not recorded"
    if threads:
        where += f", {' or '.join(map(str, threads))} thread{'s' if threads != [1] else ''}"
    modes = {m: w for m in models if (w := _word(study, m, "deploy_fp32_mode")) is not None}
    if len(set(modes.values())) > 1:
        mode = "; ".join(f"{display_name(m)}: {w}" for m, w in modes.items())
    else:
        mode = next(iter(modes.values()), "not recorded")
    h, w = study.cfg.deploy.size or study.cfg.benchmark.size
    note = (
        f"On {where}. Latency: median at {timed_batch(study, models, deploy=True)} and {h}×{w} of each path's "
        f"fastest mode, in ms (fp32's: {mode}); the row's fastest in bold. Fastest: the fastest path and its speed-up against eager fp32 PyTorch (as trained, nothing folded). mIoU in % "
        "on the validation split. Δ: the path's mIoU minus fp32's in points, paired bootstrap over the images, with "
        f"its {_level(study)} interval."
    )
    unscored = [m for m in models if study.value(m, "deploy_bf16_ms") is None
                and (_has(study, m, "deploy_miou_bf16") or _has(study, m, "deploy_bf16_diff"))]  # fmt: skip
    if unscored:
        note += (" No bf16 latency: the CPU has no native bf16 (AVX512-BF16 or AMX), where PyTorch emulates it; its "
                 "scores hold, its speed would not.")  # fmt: skip
    return note


def deployment_table(study: Study) -> dict[str, Any] | None:
    """The deployed models' latency and mIoU per path, or None when the summary has no deployment columns or no
    model was deployed. Latencies and mIoU go under a group header each; a column blank for every model is left
    out."""
    columns = [c for c in deploy_columns() if c in study.summary.columns]
    models = [m for m in study.summary.index if any(_has(study, m, c) for c in columns)]
    if not models:
        return None
    latency = _latency_rows(study, models, list(PATHS))
    specs = [  # (group, header, align, cells)
        ("", "Model", "l", _text([display_name(m) for m in models])),
        *(("Latency (ms)", LABELS[p], "r", [row[i] for row in latency]) for i, p in enumerate(PATHS)),
        ("", "Fastest", "l", _text([_fastest(study, m) for m in models])),
        ("mIoU (%)", "fp32", "r", _column([study.value(m, "deploy_miou_fp32") for m in models], 2, "max")),
        *(("mIoU (%)", f"Δ {LABELS[p]}", "r", _text([_difference(study, m, KEYS[p]) for m in models]))
          for p in PATHS[1:]),
    ]  # fmt: skip
    specs = [s for s in specs if s[1] == "Model" or any(c["t"] != "–" for c in s[3])]
    table = _table(DEPLOY_TITLE, [s[1] for s in specs], [s[3] for s in specs], "".join(s[2] for s in specs),
                   _note(study, models))  # fmt: skip
    groups: list[list[Any]] = []
    for group, *_ in specs:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    table["groups"] = groups
    return table
