"""Procedural street scenes with Cityscapes label ids, drawn with vectorised numpy.

A pinhole camera 1.5 m above a straight street (as on the Cityscapes car) looks towards a vanishing point: the
road, sidewalks and terrain strips are bands of lateral position on the ground plane, the facades are vertical
planes beside them split into buildings along the depth, and objects (vehicles, people, poles, trees) stand on
the ground at a depth that sets their size, drawn far to near so that occlusion is consistent. Appearance
overlaps on purpose (grey road, walls, sidewalks, cars and buildings; green trees and terrain; random hue,
lighting, shadows and noise per image), so a model has to use shape and layout, not colour alone.
"""

from __future__ import annotations

import numpy as np

from segmodels.data.canvas import Canvas
from segmodels.data.street_objects import draw_objects

__all__ = ["FEATURED", "Canvas", "render_scene"]

# Rare classes forced into every len(FEATURED)-th image so that a few dozen images contain all 19 classes.
FEATURED = ("train", "motorcycle", "bicycle", "truck", "bus", "traffic light")


def render_scene(
    rng: np.random.Generator, height: int, width: int, *, featured: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene → (RGB H×W×3 uint8, Cityscapes label ids H×W uint8, Cityscapes instance ids H×W int32:
    label id × 1000 + k on each visible object of a class with instances, the label id elsewhere).

    ``featured`` (one of :data:`FEATURED`) guarantees that rare class in this image.
    """
    canvas = Canvas(rng, height, width)
    canvas.sky()
    layout = canvas.street()
    canvas.facades(layout)
    draw_objects(canvas, layout, featured)
    return canvas.finish(), canvas.lab, canvas.instance_ids()
