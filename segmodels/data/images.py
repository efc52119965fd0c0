"""Decode a user's own image to the 8-bit RGB array the models take.

Pillow's ``convert("RGB")`` clips 16-bit and 32-bit grayscale values to 255, so a 16-bit PNG turns
white without any error. Here 16-bit data are scaled by the type's full range (0..65535 -> 0..255),
never by the image's own min/max, so every image of a series keeps the same brightness mapping;
float images must lie in [0, 1]; anything else that has no faithful 8-bit mapping is refused,
naming the file. Every path that decodes user images goes through :func:`read_rgb8`.

Size: the pixel count is read from the header, before anything is decoded, and checked against the caller's
``max_pixels`` (default :data:`MAX_PIXELS`); :class:`TooManyPixelsError` refuses a larger image. That limit
replaces Pillow's own decompression-bomb check (a warning above the same count, an error above twice it) while
these functions run, so a caller that raises the limit gets the image, and one that does not gets one message.
Pillow keeps that check in a module global, so it is off for every thread of the process meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "TooManyPixelsError",
    "check_image",
    "list_images",
    "read_rgb8",
    "to_rgb8",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Pillow's decompression-bomb threshold (1 GiB of float32 RGB), about 89 megapixels.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

_EIGHT_BIT = frozenset({"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_BAND_PIXELS = 1 << 22  # pixels copied at a time out of a decoded image
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError)  # SyntaxError: PNG's verify()


class TooManyPixelsError(ValueError):
    """An image with more pixels than the caller's limit, refused from its header before it is decoded."""

    def __init__(self, path: str | Path, size: tuple[int, int], limit: int) -> None:
        self.path, self.size, self.limit = Path(path), size, limit
        w, h = size
        super().__init__(f"{path} has {w}×{h} = {w * h} pixels, more than the limit of {limit}")


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


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's errors inside the block raised as one ValueError naming ``path``."""
    try:
        yield
    except _UNREADABLE as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


@contextlib.contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """The image at ``path`` opened lazily (its header read, nothing decoded), its pixel count checked."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # max_pixels stands in for Pillow's own check
    try:
        with _reading(path):
            img = Image.open(path)
        with img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise TooManyPixelsError(path, (w, h), max_pixels)
            yield img
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def check_image(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) of the image at ``path`` once it is known to decode to 8-bit RGB; raises ValueError
    naming it (:class:`TooManyPixelsError` above ``max_pixels``, None for no limit).

    A large image is not decoded fully to check it: a JPEG's data are decoded at 1/8 scale, a PNG's chunks are
    checked against their CRCs; other formats, and 32-bit integer and float images (whose values decide whether
    they map to 8 bits), are decoded.
    """
    path = Path(path)
    with _opened(path, max_pixels) as img:
        size, mode = img.size, img.mode
        if mode not in _EIGHT_BIT | _SIXTEEN_BIT | {"I", "F"}:
            raise ValueError(f"cannot map {path} to 8-bit RGB: unsupported image mode {mode}")
        with _reading(path):
            if mode in ("I", "F"):
                img.load()
            elif img.format in ("JPEG", "MPO"):
                img.draft(None, (1, 1))  # the smallest scale libjpeg decodes to; every byte is still read
                img.load()
            elif img.format == "PNG":
                img.verify()
            else:
                img.load()
        if mode in ("I", "F"):
            to_rgb8(img, path)
    return size


def _decode(path: Path, max_pixels: int | None) -> Image.Image:
    """The image at ``path`` decoded to an 8-bit RGB Pillow image."""
    with _opened(path, max_pixels) as img:
        with _reading(path):
            img.load()
        if img.mode == "RGB":
            return img
        if img.mode in _EIGHT_BIT:
            return img.convert("RGB")
        return Image.fromarray(to_rgb8(img, path))


def read_rgb8(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode the image file at ``path`` fully to an (H, W, 3) uint8 array; raises ValueError naming it
    (:class:`TooManyPixelsError` above ``max_pixels`` pixels, None for no limit, before anything is decoded).

    The array is filled band by band from the decoded image, so the two copies of the pixels are all that is
    held at once.
    """
    path = Path(path)
    img = _decode(path, max_pixels)
    w, h = img.size
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, _BAND_PIXELS // max(w, 1))
    for y in range(0, h, step):
        out[y : y + step] = np.asarray(img.crop((0, y, w, min(h, y + step))))
    return out
