"""Image corruptions of the robustness benchmark: the 15 ImageNet-C corruptions and their 4 extra, severities 1-5.

Kamann & Rother (CVPR 2020) score segmentation models on images corrupted as ImageNet-C does (Hendrycks &
Dietterich, ICLR 2019), with the definitions of the ``imagecorruptions`` package (Michaelis et al. 2019): noise
(gaussian, shot, impulse; speckle extra), blur (defocus, glass, motion, zoom; gaussian extra), weather (snow, frost,
fog, brightness; spatter extra) and digital (contrast, elastic, pixelate, JPEG; saturate extra).

Where the package runs correctly and reproducibly under current numpy and scikit-image, its own function is called
(``imagecorruptions.corruptions.<name>``); four are ported, equal to its definition (``ported=True``;
:mod:`segmodels.data.corruption_ports` says why and how).

:func:`corrupt` seeds numpy's legacy global RNG (which the package's functions draw from) and restores its state
afterwards; :func:`image_seed` gives each (image, corruption, severity) its own seed, so every model sees the same
corrupted pixels. The global RNG makes :func:`corrupt` unsafe to call from several threads at once; processes
(:func:`corrupt_images` with ``workers``) are fine.

A corruption of one's own is a function ``fn(image: PIL.Image, severity: int) -> array-like (H, W, 3)`` in 0-255
that draws its randomness from ``np.random``, and one line: ``@register_corruption("name", "group", "Label")``.

Light at import: numpy only; the package, scikit-image, OpenCV and SciPy are imported when a corruption runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segmodels.data.corruption_ports import (
    PACKAGE_NEEDS,
    PackageFunction,
    fog,
    gaussian_blur,
    glass_blur,
    impulse_noise,
)

if TYPE_CHECKING:
    from segmodels.data._io import Progress

__all__ = ["CORRUPTIONS", "GROUPS", "INSTALL", "SEVERITIES", "Corruption", "corrupt", "corrupt_images",
           "corruption_names", "image_seed", "register_corruption", "require_corruptions",
           "resolve_corruptions"]  # fmt: skip

SEVERITIES = (1, 2, 3, 4, 5)
INSTALL = "pip install 'segmodels[robustness]'"
MIN_SIZE = 32  # the package's own minimum height and width


@dataclass(frozen=True)
class Corruption:
    """One registered corruption: ``fn(PIL image, severity)`` → (H, W, 3) values in 0-255, random draws from
    ``np.random``; ``label`` for reports; ``ported``: the function is this project's code (a port, or one's own),
    not the imagecorruptions package's; ``requires``: the modules it imports."""

    name: str
    group: str
    fn: Callable[[Any, int], Any]
    label: str
    ported: bool = True
    requires: tuple[str, ...] = field(default=())


CORRUPTIONS: dict[str, Corruption] = {}
GROUPS: dict[str, tuple[str, ...]] = {}  # group → its corruptions, in registry order


def register_corruption(name: str, group: str, label: str, *, requires: Sequence[str] = ()) -> Callable:
    """Decorator adding ``fn`` to :data:`CORRUPTIONS` under ``name`` (and to ``GROUPS[group]``), after the others."""

    def add(fn: Callable[[Any, int], Any]) -> Callable[[Any, int], Any]:
        taken = set(CORRUPTIONS) | set(GROUPS) | {"all"}
        if not name.isidentifier() or not name.islower() or name in taken:
            raise ValueError(f"corruption name {name!r} must be lowercase letters, digits and '_', and not a name "
                             f"already taken ({', '.join(sorted(taken))})")  # fmt: skip
        if not group.isidentifier() or not group.islower() or group in CORRUPTIONS or group in ("all", name):
            raise ValueError(f"corruption group {group!r} must be lowercase letters, digits and '_', and not a "
                             "corruption's name or 'all'")  # fmt: skip
        if not label:
            raise ValueError(f"corruption {name!r} needs a label")
        ported = not isinstance(fn, PackageFunction)
        CORRUPTIONS[name] = Corruption(name, group, fn, label, ported, tuple(requires))
        GROUPS[group] = (*GROUPS.get(group, ()), name)
        return fn

    return add


def corruption_names() -> list[str]:
    """Every registered corruption, in registry order (by group, each group's ImageNet-C corruptions first)."""
    return list(CORRUPTIONS)


def resolve_corruptions(names: Sequence[str], *, key: str = "robustness.corruptions") -> list[str]:
    """Corruption names, group names and ``all`` → corruption names, without repeats, in registry order."""
    if isinstance(names, str):
        names = [names]
    chosen: set[str] = set()
    for name in names:
        if name == "all":
            chosen.update(CORRUPTIONS)
        elif name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in CORRUPTIONS:
            chosen.add(name)
        else:
            raise ValueError(f"'{key}' names {name!r}, which is not a corruption or group; allowed: all, the groups "
                             f"{', '.join(GROUPS)}, or the corruptions {', '.join(CORRUPTIONS)}")  # fmt: skip
    return [c for c in CORRUPTIONS if c in chosen]


def _spec(corruption: str) -> Corruption:
    try:
        return CORRUPTIONS[corruption]
    except KeyError:
        raise ValueError(f"unknown corruption {corruption!r}; registered: {', '.join(CORRUPTIONS)}") from None


def require_corruptions(names: Sequence[str]) -> None:
    """Raise ImportError naming the missing modules and the install line when the modules that ``names``
    (corruptions or groups) need are not installed; cheap: nothing is imported."""
    missing: dict[str, list[str]] = {}
    for name in resolve_corruptions(names, key="corruptions"):
        for module in CORRUPTIONS[name].requires:
            if importlib.util.find_spec(module) is None:
                missing.setdefault(module, []).append(name)
    if missing:
        needs = "; ".join(f"{m} (for {', '.join(c)})" for m, c in missing.items())
        raise ImportError(f"the corruptions need modules that are not installed: {needs}. Install them with: {INSTALL}")


def _package(name: str, group: str, label: str) -> None:
    register_corruption(name, group, label, requires=PACKAGE_NEEDS)(PackageFunction(name))


# --- the registry, in the benchmark's order ------------------------------------------------------------------

_package("gaussian_noise", "noise", "Gaussian noise")
_package("shot_noise", "noise", "Shot noise")
register_corruption("impulse_noise", "noise", "Impulse noise", requires=("skimage",))(impulse_noise)
_package("speckle_noise", "noise", "Speckle noise")
_package("defocus_blur", "blur", "Defocus blur")
register_corruption("glass_blur", "blur", "Glass blur", requires=("skimage", "scipy"))(glass_blur)
_package("motion_blur", "blur", "Motion blur")
_package("zoom_blur", "blur", "Zoom blur")
register_corruption("gaussian_blur", "blur", "Gaussian blur", requires=("skimage", "scipy"))(gaussian_blur)
_package("snow", "weather", "Snow")
_package("frost", "weather", "Frost")
register_corruption("fog", "weather", "Fog")(fog)
_package("brightness", "weather", "Brightness")
_package("spatter", "weather", "Spatter")
_package("contrast", "digital", "Contrast")
_package("elastic_transform", "digital", "Elastic transform")
_package("pixelate", "digital", "Pixelate")
_package("jpeg_compression", "digital", "JPEG compression")
_package("saturate", "digital", "Saturate")


# --- applying them -------------------------------------------------------------------------------------------


def image_seed(image_id: str, corruption: str, severity: int) -> int:
    """A seed in [0, 2**32) from sha256 of (image id, corruption, severity): the same in every process and run."""
    digest = hashlib.sha256(f"{image_id}\0{corruption}\0{int(severity)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _check(corruption: str, severity: int) -> Corruption:
    spec = _spec(corruption)
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer 1-5, got {severity!r} (corruption {corruption!r})")
    return spec


def _check_size(shape: tuple[int, ...], what: str) -> None:
    if min(shape[-3:-1]) < MIN_SIZE:
        raise ValueError(f"{what}: height and width must be at least {MIN_SIZE} pixels, got {shape}")


def corrupt(image: np.ndarray, corruption: str, severity: int, *, seed: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 corrupted by ``corruption`` at ``severity`` (1-5), as the package's ``corrupt()``
    converts it (``np.uint8`` of the function's output); a function of ``seed`` (in [0, 2**32)) alone."""
    spec = _check(corruption, severity)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image to corrupt: expected a uint8 array (H, W, 3), got {got}")
    _check_size(image.shape, "image to corrupt")
    return _apply(spec.fn, image, int(severity), seed, corruption)


def _apply(fn: Callable[[Any, int], Any], image: np.ndarray, severity: int, seed: int, name: str) -> np.ndarray:
    from PIL import Image

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    state = np.random.get_state()
    try:
        np.random.seed(int(seed))
        result = fn(Image.fromarray(np.ascontiguousarray(image)), severity)
    finally:
        np.random.set_state(state)
    out = np.uint8(result)
    if out.shape != image.shape:
        raise ValueError(f"corruption {name!r} returned shape {out.shape} for an image of shape {image.shape}")
    return out


def _apply_task(task: tuple) -> np.ndarray:
    return _apply(*task)


def corrupt_images(
    images: np.ndarray,
    image_ids: Sequence[str],
    corruption: str,
    severity: int,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Every image of ``images`` (N, H, W, 3) uint8 corrupted with its own seed ``image_seed(id, corruption,
    severity)``, over ``workers`` processes; into ``out`` (N, H, W, 3) uint8 where given (an open memory map, say)."""
    from segmodels.data._io import parallel_map

    spec = _check(corruption, severity)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images to corrupt: expected a uint8 array (N, H, W, 3), got {got}")
    _check_size(images.shape, "images to corrupt")
    if len(image_ids) != len(images):
        raise ValueError(f"{len(image_ids)} image ids for {len(images)} images to corrupt")
    if out is None:
        out = np.empty(images.shape, np.uint8)
    elif out.shape != images.shape or out.dtype != np.uint8:
        raise ValueError(f"out: expected uint8 {images.shape}, got {out.dtype} {out.shape}")
    source = np.asarray(images)  # a memory map's rows travel to workers as plain arrays
    tasks = [(spec.fn, source[i], int(severity), image_seed(image_ids[i], corruption, severity), corruption)
             for i in range(len(images))]  # fmt: skip
    for i, result in parallel_map(_apply_task, tasks, workers=workers, progress=progress):
        out[i] = result
    return out
