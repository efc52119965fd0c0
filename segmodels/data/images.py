"""Decode a user's own image to the 8-bit RGB array the models take.

Pillow's ``convert("RGB")`` clips 16-bit and 32-bit grayscale values to 255, so a 16-bit PNG turns
white without any error. Here 16-bit data are scaled by the type's full range (0..65535 -> 0..255),
never by the image's own min/max, so every image of a series keeps the same brightness mapping;
float images must lie in [0, 1]; anything else that has no faithful 8-bit mapping is refused,
naming the file. Every path that decodes user images goes through :func:`read_rgb8`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_rgb8", "to_rgb8"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_EIGHT_BIT = frozenset({"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix, any case; hidden files skipped), sorted."""
    folder = Path(folder)
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )  # fmt: skip


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
    gray = np.rint(values).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def to_rgb8(img: Image.Image, name: str | Path) -> np.ndarray:
    """An (H, W, 3) uint8 array of ``img``; ``name`` is the file named when the image is refused."""
    mode = img.mode
    if mode in _EIGHT_BIT:
        return np.array(img.convert("RGB"))
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"cannot map {name} to 8-bit RGB: empty image (mode {mode})")
        lo, hi = float(values.min()), float(values.max())
        if mode == "F":
            if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
                raise ValueError(f"cannot map {name} to 8-bit RGB: float image (mode F) with values {lo:g} .. "
                                 f"{hi:g}, expected [0, 1]")  # fmt: skip
            return _gray_to_rgb(values * 255.0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"cannot map {name} to 8-bit RGB: 32-bit integer image (mode {mode}) with values "
                             f"{lo:.0f} .. {hi:.0f}, expected 0 .. 65535")  # fmt: skip
        return _gray_to_rgb(values * (255.0 / 65535.0))
    raise ValueError(f"cannot map {name} to 8-bit RGB: unsupported image mode {mode}")


def read_rgb8(path: str | Path) -> np.ndarray:
    """Decode the image file at ``path`` fully to an (H, W, 3) uint8 array; raises ValueError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return to_rgb8(img, path)
