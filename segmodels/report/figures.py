"""The study's figures, drawn from the results files alone so they can be redrawn without training.

``make_figures(cfg, results, out)`` writes each figure as PNG and PDF into ``out`` and a ``figures.json``
beside them that lists every figure (files, one-line caption, models shown) and every figure skipped
because none of its inputs exist yet. The figures follow the earlier study's: predictions of each backbone
and of each context module on the same validation images (its figures 1-3), mIoU against latency (its
figure 4); plus mIoU against training cost, the paired bootstrap intervals of the discussed mIoU
differences, per-class IoU, training curves and the best model's confusion matrix. Matplotlib is used
through ``Figure`` objects and the Agg canvas only (no pyplot state), seaborn for the heat maps.

The drawing lives in :mod:`~segmodels.report.figures_grids` (images, heat maps, curves) and
:mod:`~segmodels.report.figures_points` (scatter plots, differences) over the shared colours, markers and
label placement of :mod:`~segmodels.report.figures_common`: every model of the catalog is drawn, a backbone or
head registered at run time included.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segmodels.report.figures_common import Drawn
from segmodels.report.figures_grids import (
    fig_backbones,
    fig_confusion,
    fig_context_modules,
    fig_per_class,
    fig_training,
)
from segmodels.report.figures_points import fig_differences, fig_miou_cost, fig_miou_latency
from segmodels.report.figures_robustness import robustness_figures
from segmodels.report.results import Study, load_study
from segmodels.study.config import StudyConfig

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

# name → drawing function, in the report's order
FIGURES: dict[str, Callable[[Study], Drawn | str]] = {
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

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give the folder for the figures")
    study = load_study(cfg, results)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"experiment": cfg.experiment, "figures": [], "skipped": [], "notes": study.notes}
    for name, draw in (FIGURES | robustness_figures(study)).items():  # the robustness ones: a study with robustness
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
