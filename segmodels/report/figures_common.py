"""What the study's figures share: the figure object, the class legend, each model's colour and marker, and
the placement of point labels.

A model's colour is its head's and its marker its backbone's, in catalog order (:mod:`segmodels.models.catalog`):
the built-in heads take tab10's first colours, the built-in backbones the markers ``o s D ^ v``, and a backbone
or head registered at run time the next ones; past tab10's ten colours a head's colour is derived from its
name, so every model of the catalog is drawn, each time alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from segmodels.models import catalog

__all__ = ["Drawn", "backbone_marker", "head_colour", "model_style", "new_figure", "palette_legend",
           "place_labels", "style_handles"]  # fmt: skip

_MARKERS = "osD^vPX*hp<>d8H"  # backbones, in catalog order; repeated past the last


@dataclass
class Drawn:
    """A drawn figure, its one-line caption and the runs it shows."""

    fig: Any  # matplotlib Figure
    caption: str
    models: list[str]


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas is used for saving

    return Figure(figsize=(width, height), layout="constrained")


def palette_legend(fig: Any, label_set: Any, present: Iterable[int] | None = None) -> None:
    """The colours of ``label_set`` (a :class:`~segmodels.data.labelset.LabelSet`) under the figure; only the
    classes in ``present`` when given (a 150-class legend would not fit)."""
    from matplotlib.patches import Patch

    shown = sorted(set(present)) if present is not None else range(label_set.num_classes)
    handles = [Patch(facecolor=label_set.palette[i] / 255, edgecolor="0.3", lw=0.3, label=label_set.classes[i])
               for i in shown if 0 <= i < label_set.num_classes]  # fmt: skip
    ncol = max(2, min(10, int(fig.get_figwidth() / 1.1)))  # as many columns as the figure's width holds
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False, handlelength=1.2)


def head_colour(head: str) -> tuple[float, ...]:
    """The colour of ``head`` in every figure: tab10 in catalog order, then one derived from the name."""
    import matplotlib as mpl

    palette = mpl.colormaps["tab10"].colors
    index = catalog.heads().index(catalog.head(head).name)
    if index < len(palette):
        return tuple(palette[index])
    hue = int(hashlib.md5(head.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF  # the same name, the same colour
    return tuple(mpl.colors.hsv_to_rgb((hue, 0.75, 0.8)))


def backbone_marker(backbone: str) -> str:
    """The marker of ``backbone`` in every figure, in catalog order."""
    return _MARKERS[catalog.backbones().index(catalog.backbone(backbone).name) % len(_MARKERS)]


def model_style(model: str) -> tuple[str, tuple[float, ...]]:
    """(marker, colour) of a run: its backbone's marker and its head's colour."""
    backbone, head = catalog.arch_of(model)
    return backbone_marker(backbone), head_colour(head)


def style_handles(models: Iterable[str]) -> list[Any]:
    """Legend entries for the heads (colour), then the backbones (marker) of ``models``, in catalog order."""
    from matplotlib.lines import Line2D

    archs = [catalog.arch_of(m) for m in models]
    heads = [h for h in catalog.heads() if h in {h for _, h in archs}]
    backbones = [b for b in catalog.backbones() if b in {b for b, _ in archs}]
    handles = [Line2D([], [], ls="", marker="o", color=head_colour(h), label=catalog.head(h).label) for h in heads]
    return handles + [Line2D([], [], ls="", marker=backbone_marker(b), color="0.35", mfc="none",
                             label=catalog.backbone(b).label) for b in backbones]  # fmt: skip


# Offsets (points) and alignments tried in turn for a point's label: right, left, above, below.
_LABEL_SPOTS = (
    (8, 4, "left", "bottom"),
    (8, -4, "left", "top"),
    (-8, 4, "right", "bottom"),
    (-8, -4, "right", "top"),
    (0, 9, "center", "bottom"),
    (0, -9, "center", "top"),
)


def place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]]) -> None:
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
