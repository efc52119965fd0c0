"""Image corruptions of the robustness benchmark: the 15 ImageNet-C corruptions and their 4 extra, severities 1-5.

Kamann & Rother (CVPR 2020) score segmentation models on images corrupted as ImageNet-C does (Hendrycks &
Dietterich, ICLR 2019), with the definitions of the ``imagecorruptions`` package (Michaelis et al. 2019): noise
(gaussian, shot, impulse; speckle extra), blur (defocus, glass, motion, zoom; gaussian extra), weather (snow, frost,
fog, brightness; spatter extra) and digital (contrast, elastic, pixelate, JPEG; saturate extra).

Where the package runs correctly and reproducibly under current numpy and scikit-image, its own function is called
(``imagecorruptions.corruptions.<name>``). Four are ported here, equal to its definition (``ported=True``):

* ``gaussian_blur``, ``glass_blur``: its ``gaussian(..., multichannel=True)`` was removed from scikit-image; here
  ``channel_axis=-1``, the same filter.
* ``fog``: its ``np.float_`` was removed in numpy 2; here float64, the same type.
* ``impulse_noise``: scikit-image's ``random_noise`` now draws from a generator of its own (``default_rng(None)``),
  so the package's impulse noise differs on every call whatever ``np.random.seed`` says. Here it draws from
  ``np.random.default_rng(s)``, where ``s`` is one draw ``np.random.randint(2**32)`` from the legacy global RNG:
  like every other corruption it is then a function of ``np.random.seed``. (Salt and pepper as the package
  defines them; the pixels differ from those of the 2020-era scikit-image, which drew from the global RNG itself.)
* ``glass_blur`` also runs fast: the package's pixel loop takes 40 s at 1024×2048; the port draws the same numbers
  in one call and resolves the loop's copies by pointer jumping (:func:`_glass_sources`), bit for bit the same.

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
import os
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segmodels.data._io import Progress

__all__ = ["CORRUPTIONS", "GROUPS", "INSTALL", "SEVERITIES", "Corruption", "corrupt", "corrupt_images",
           "corruption_names", "image_seed", "register_corruption", "require_corruptions",
           "resolve_corruptions"]  # fmt: skip

SEVERITIES = (1, 2, 3, 4, 5)
INSTALL = "pip install 'segmodels[robustness]'"
MIN_SIZE = 32  # the package's own minimum height and width
_PACKAGE_NEEDS = ("imagecorruptions", "skimage", "cv2", "scipy")  # what imagecorruptions.corruptions imports


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
        ported = not isinstance(fn, _Package)
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


# --- the package's functions ---------------------------------------------------------------------------------


def _resource_filename(package: str, resource: str) -> str:
    return os.path.join(os.path.dirname(sys.modules[package].__file__), *resource.split("/"))


def _original() -> types.ModuleType:
    """``imagecorruptions.corruptions``. It imports ``pkg_resources`` for the path of its frost images, which
    setuptools 81 removed: where it is missing, a stand-in with that one function is offered during the import."""
    module = sys.modules.get("imagecorruptions.corruptions")
    if module is not None:
        return module
    stub = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():  # its scipy.ndimage.interpolation import is deprecated, not wrong
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions.corruptions as module
    finally:
        if stub is not None and sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]
    return module


@dataclass(frozen=True)
class _Package:
    """The package's function ``name``, looked up when called (picklable, so it travels to worker processes)."""

    name: str

    def __call__(self, x: Any, severity: int = 1) -> Any:
        return getattr(_original(), self.name)(x, severity)


def _package(name: str, group: str, label: str) -> None:
    register_corruption(name, group, label, requires=_PACKAGE_NEEDS)(_Package(name))


# --- the ports -----------------------------------------------------------------------------------------------


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """The package's ``gaussian(x, sigma=sigma, multichannel=True)`` under scikit-image's current argument."""
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1)


def impulse_noise(x: Any, severity: int = 1) -> np.ndarray:
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    from skimage.util import random_noise

    rng = np.random.default_rng(np.random.randint(2**32))  # one draw from the global RNG that corrupt() seeds
    x = random_noise(np.array(x) / 255.0, mode="s&p", amount=c, rng=rng)
    return np.clip(x, 0, 1) * 255


def gaussian_blur(x: Any, severity: int = 1) -> np.ndarray:
    c = [1, 2, 3, 4, 6][severity - 1]
    x = _gaussian(np.array(x) / 255.0, c)
    return np.clip(x, 0, 1) * 255


def glass_blur(x: Any, severity: int = 1) -> np.ndarray:
    # sigma, max_delta, iterations
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(_gaussian(np.array(x) / 255.0, c[0]) * 255)
    h, w = x.shape[:2]
    for _ in range(c[2]):
        x = x.reshape(h * w, -1)[_glass_sources(h, w, c[1])].reshape(x.shape)
    return np.clip(_gaussian(x / 255.0, c[0]), 0, 1) * 255


def _glass_sources(h: int, w: int, delta: int) -> np.ndarray:
    """For every pixel, the flat index of the pixel whose value it holds after one pass of the package's loop.

    The loop visits (y, x) from the bottom right, row by row, and does ``img[y, x], img[y', x'] = img[y', x'],
    img[y, x]`` for a drawn (dx, dy) in [-delta, delta). On numpy rows that is no swap but a copy: the right side
    holds views, so ``img[y', x']`` gets back its own value. So pixel t takes the value that its source s holds at
    t's visit: s's original value when s is visited later (or never, or s is t), else what s took at its own
    visit. That recursion is resolved here by pointer jumping (each round halves the chains), bit for bit what the
    sequential loop gives. The draws: N calls of ``randint(-d, d, size=(2,))`` on the legacy RandomState give the
    same numbers as one call of size (N, 2) (checked by tests/test_corruptions.py against the package's loop).
    """
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    n = rows.size * cols.size
    origin = np.arange(h * w)
    if n == 0:
        return origin
    d = np.random.randint(-delta, delta, size=(n, 2))  # (dx, dy) of each visit
    targets = (rows[:, None] * w + cols[None, :]).ravel()  # in visiting order
    sources = targets + d[:, 1] * w + d[:, 0]
    visit = np.full(h * w, n, dtype=np.int64)  # the visit of each pixel; n: never visited
    visit[targets] = np.arange(n)
    before = visit[sources]
    ptr = np.where(before < np.arange(n), before, -1)  # the earlier visit whose result this one copies, or -1
    val = sources  # the answer where ptr is -1
    active = np.flatnonzero(ptr >= 0)
    for _ in range(n.bit_length() + 1):  # chains are shorter than n, and each round halves them
        if not active.size:
            break
        p = ptr[active]
        val_p, ptr_p = val[p], ptr[p]
        val[active], ptr[active] = val_p, ptr_p
        active = active[ptr_p >= 0]
    else:
        raise AssertionError("glass blur: a copy chain did not end")  # a pointer to itself or later visits
    origin[targets] = val
    return origin


def _plasma_fractal(mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """The package's diamond-square height map in [0, 1], float64 for its removed ``np.float_``."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    def fillsquares() -> None:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(squareaccum)

    def filldiamonds() -> None:
        size = maparray.shape[0]
        drgrid = maparray[stepsize // 2 : size : stepsize, stepsize // 2 : size : stepsize]
        ulgrid = maparray[0:size:stepsize, 0:size:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:size:stepsize, stepsize // 2 : size : stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2 : size : stepsize, 0:size:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: Any, severity: int = 1) -> np.ndarray:
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    shape = np.array(x).shape
    max_side = int(np.max(shape))
    map_size = 1 if max_side == 0 else 2 ** (max_side - 1).bit_length()
    x = np.array(x) / 255.0
    max_val = x.max()
    plasma = _plasma_fractal(mapsize=map_size, wibbledecay=c[1])[: shape[0], : shape[1]]
    x += c[0] * (plasma if x.ndim < 3 or x.shape[2] < 3 else plasma[..., np.newaxis])
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


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
