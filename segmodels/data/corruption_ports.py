"""The definitions behind :mod:`segmodels.data.corruptions`: the ``imagecorruptions`` package's functions, and four
ports of those that no longer run as defined under current numpy and scikit-image, each equal to its definition:

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

Light at import: numpy only; the package, scikit-image, OpenCV and SciPy are imported when a corruption runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PACKAGE_NEEDS", "PackageFunction", "fog", "gaussian_blur", "glass_blur", "impulse_noise", "package_module"]

PACKAGE_NEEDS = ("imagecorruptions", "skimage", "cv2", "scipy")  # what imagecorruptions.corruptions imports


# --- the package's functions ---------------------------------------------------------------------------------


def _resource_filename(package: str, resource: str) -> str:
    return os.path.join(os.path.dirname(sys.modules[package].__file__), *resource.split("/"))


def package_module() -> types.ModuleType:
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
class PackageFunction:
    """The package's function ``name``, looked up when called (picklable, so it travels to worker processes)."""

    name: str

    def __call__(self, x: Any, severity: int = 1) -> Any:
        return getattr(package_module(), self.name)(x, severity)


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
