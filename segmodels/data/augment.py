"""Training augmentation on whole batches, on the training device, each sample with its own parameters.

The recipe is the usual Cityscapes one (PSPNet, Zhao et al. 2017; mmsegmentation's configs): random rescale by
0.5-2.0, random crop (padding with ignore where the rescaled image is smaller than the crop; optionally redrawn
while one class dominates it, :func:`redraw_crops`), horizontal flip, photometric distortion (brightness,
contrast, saturation, hue; each with probability 1/2, as mmsegmentation's PhotoMetricDistortion), ImageNet
normalisation.

Rescale, crop and flip form one axis-aligned affine map per sample. Images are resampled through it with
``grid_sample`` (bilinear); labels are gathered at the nearest source pixel of the same map, so the two stay
aligned. Brightness, contrast, saturation and hue are all affine in RGB, so they fold with the normalisation into
one 3×3 matrix and offset per sample (the clamp to the 0-255 range becomes per-channel bounds). Parameters are
drawn on the CPU from a ``torch.Generator`` and everything that does not depend on pixel values is computed there
in two small arrays, so a batch does not depend on the device it is made on and costs two small copies to a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CONTRAST_CENTERS", "CROP_TRIES", "AugmentParams", "augment_batch", "crop_is_varied", "redraw_crops",
           "sample_params", "source_windows"]  # fmt: skip

BRIGHTNESS = 32.0  # ± on the 0-255 scale
CONTRAST = (0.5, 1.5)
SATURATION = (0.5, 1.5)
HUE_DEG = 36.0  # mmsegmentation's hue_delta of 18 is on OpenCV's 0-180 hue scale
# Contrast c around the image's mean grey, or around black (x·c, mmsegmentation's PhotoMetricDistortion)
CONTRAST_CENTERS = ("mean", "zero")
CROP_TRIES = 10  # mmsegmentation's RandomCrop with cat_max_ratio: 10 crops checked, then one more kept unchecked
# YIQ: luma plus two chroma axes; rotating (I, Q) shifts the hue, scaling it changes the saturation, and grey
# (I = Q = 0) is left alone.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass
class AugmentParams:
    """Per-sample parameters (CPU arrays of length N); see :func:`sample_params`."""

    scale: np.ndarray  # rescale factor
    origin: np.ndarray  # (N, 2) crop corner (y, x) in rescaled pixels; negative: the crop is padded there
    flip: np.ndarray  # bool
    brightness: np.ndarray  # added on the 0-255 scale
    contrast: np.ndarray  # factor around the sample's mean grey
    saturation: np.ndarray
    hue: np.ndarray  # radians

    @staticmethod
    def concat(parts: list[AugmentParams]) -> AugmentParams:
        """The parameters of several batches, one after the other."""
        return AugmentParams(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in vars(parts[0])})


def sample_params(
    gen: torch.Generator,
    n: int,
    in_size: tuple[int, int],
    crop_size: tuple[int, int],
    *,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    photometric: bool = True,
) -> AugmentParams:
    """Draw the parameters of ``n`` samples from ``gen``.

    The same numbers are drawn whatever the switches, so turning photometric distortion off leaves the geometry
    of every sample unchanged.
    """
    r = torch.rand((n, 12), generator=gen, dtype=torch.float64).numpy()
    lo, hi = scale_range
    scale = lo + (hi - lo) * r[:, 0]
    origin = _origins(scale, in_size, crop_size, r[:, 1:3])

    def sometimes(column: int, values: np.ndarray, identity: float) -> np.ndarray:
        return np.where(photometric & (r[:, column] < 0.5), values, identity)

    return AugmentParams(
        scale=scale,
        origin=origin,
        flip=flip & (r[:, 3] < 0.5),
        brightness=sometimes(4, BRIGHTNESS * (2 * r[:, 5] - 1), 0.0),
        contrast=sometimes(6, CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * r[:, 7], 1.0),
        saturation=sometimes(8, SATURATION[0] + (SATURATION[1] - SATURATION[0]) * r[:, 9], 1.0),
        hue=sometimes(10, np.deg2rad(HUE_DEG * (2 * r[:, 11] - 1)), 0.0),
    )


def _origins(scale: np.ndarray, in_size: Sequence[int], crop_size: Sequence[int], u: np.ndarray) -> np.ndarray:
    """(N, 2) crop corners from uniform numbers ``u`` (N, 2): anywhere the crop fits in the rescaled image, or
    anywhere the rescaled image fits in the crop when it is smaller (the rest padded)."""
    origin = np.empty((len(scale), 2))
    for axis in (0, 1):
        room = scale * in_size[axis] - crop_size[axis]  # negative: the rescaled image is smaller than the crop
        origin[:, axis] = np.round(np.minimum(room, 0) + np.abs(room) * u[:, axis])
    return origin


def crop_is_varied(labels: np.ndarray, cat_max_ratio: float, ignore_index: int = 255) -> bool:
    """Whether a crop's labels hold at least two classes, the most frequent on less than ``cat_max_ratio`` of the
    labelled pixels (mmsegmentation's RandomCrop test)."""
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    counts[ignore_index] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def redraw_crops(
    gen: torch.Generator,
    params: AugmentParams,
    labels: Sequence[np.ndarray],
    crop_size: tuple[int, int],
    *,
    cat_max_ratio: float,
    ignore_index: int = 255,
    tries: int = CROP_TRIES,
) -> AugmentParams:
    """``params`` with the crop of each sample redrawn while it is not varied (:func:`crop_is_varied`), at the
    same scale: up to ``tries`` crops are checked, and after as many failures one more is drawn and kept
    (mmsegmentation's RandomCrop with ``cat_max_ratio``). ``labels`` are the samples' whole label maps (rows of
    the memory map: only the pixels a crop reads are read). ``cat_max_ratio`` 1 changes nothing.

    The labels checked are those the crop gets (nearest source pixel, padding ignored), so the test sees what
    the loss sees. The redraws come from ``gen`` alone, so the first draw, and every batch without the option,
    stays as :func:`sample_params` made it.
    """
    if cat_max_ratio >= 1:
        return params
    n = len(params.scale)
    (h, w), (ch, cw) = labels[0].shape, crop_size
    u = torch.rand((n, tries, 2), generator=gen, dtype=torch.float64).numpy()
    scale, origin = np.asarray(params.scale, np.float64), np.array(params.origin, np.float64)
    pending = np.ones(n, dtype=bool)
    for t in range(tries + 1):
        if t:
            origin[pending] = _origins(scale[pending], (h, w), crop_size, u[pending, t - 1])
        if t == tries:
            break
        trial = replace(params, origin=origin, flip=np.zeros(n, dtype=bool))  # a flip reorders, adds nothing
        gy, gx = _axis(trial, 0, h, ch), _axis(trial, 1, w, cw)
        iy, ix = _nearest(gy, h), _nearest(gx, w)
        for k in np.flatnonzero(pending):
            rows, cols = iy[k][np.abs(gy[k]) <= 1], ix[k][np.abs(gx[k]) <= 1]
            if crop_is_varied(labels[k][np.ix_(rows, cols)], cat_max_ratio, ignore_index):
                pending[k] = False
        if not pending.any():
            break
    return replace(params, origin=origin)


def _nearest(g: np.ndarray, size: int) -> np.ndarray:
    """The source pixel nearest each grid coordinate ``g``: the one containing (g + 1) / 2 · size (the lower one on
    a tie); clamped outside the image, where the label is ignore anyway."""
    return np.clip(np.ceil((g + 1) * (size / 2)) - 1, 0, size - 1).astype(np.int64)


def _axis(p: AugmentParams, axis: int, size: int, crop: int) -> np.ndarray:
    """Normalised source coordinate (align_corners=False) of each output pixel along one axis: (N, crop)."""
    # output pixel u (centre u + 0.5) sits at x0 + u + 0.5 in the rescaled image, i.e. (x0 + u + 0.5) / s in the
    # input; in [-1, 1] coordinates that is 2 (x0 + u + 0.5) / (s · size) - 1
    u = np.arange(crop, dtype=np.float64)[None, :] + 0.5
    if axis == 1:
        u = np.where(np.asarray(p.flip)[:, None], crop - u, u)
    scale, origin = np.asarray(p.scale, np.float64)[:, None], np.asarray(p.origin, np.float64)[:, axis, None]
    return 2 * (origin + u) / (scale * size) - 1


def source_windows(p: AugmentParams, in_size: tuple[int, int], crop_size: tuple[int, int]) -> np.ndarray:
    """The part of each source image that its crop reads: (N, 4) int64 rows ``[y0, y1)`` and columns ``[x0, x1)``.

    It holds both pixels of every bilinear tap (after the clamp of 'border' padding) and every nearest label
    pixel, with one pixel to spare on each side against rounding, so reading only the window gives the batch
    that reading the whole image gives. A crop at scale s reads about (crop / s) pixels per axis: at the
    Cityscapes recipe (scale 0.5-2.0, 512×1024 crops of 1024×2048 images) a quarter of the image on average.
    """
    out = np.empty((len(p.scale), 4), dtype=np.int64)
    for axis, (size, crop) in enumerate(zip(in_size, crop_size, strict=True)):
        g = _axis(p, axis, size, crop)
        pos = np.clip((g + 1) * (size / 2) - 0.5, 0, size - 1)  # pixel coordinate of each tap, clamped as 'border'
        out[:, 2 * axis] = np.clip(np.floor(pos.min(axis=1)) - 1, 0, size - 1)
        out[:, 2 * axis + 1] = np.clip(np.floor(pos.max(axis=1)) + 3, 1, size)
    return out


def _to_window(g: np.ndarray, size: int, start: np.ndarray, held: int) -> np.ndarray:
    """Grid coordinates over a whole image of ``size`` pixels → over a buffer of ``held`` pixels whose first one
    is the image's pixel ``start`` (per sample); the 'border' clamp to the image is applied here."""
    pos = np.clip((g + 1) * (size / 2) - 0.5, 0, size - 1) - start[:, None]
    return 2 * (pos + 0.5) / held - 1


def _plan(
    p: AugmentParams, in_size: tuple[int, int], crop_size: tuple[int, int], mean, std,
    windows: np.ndarray | None = None, held: tuple[int, int] | None = None, contrast_center: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Everything per sample that does not depend on pixel values, in two small arrays (two host→device copies).

    float32 columns: grid x (cw), grid y (ch), nearest source column (cw), row × width (ch), inside x (cw),
    inside y (ch), colour matrix (9), offset terms (3 + 3); the colour map includes the normalisation. uint8
    columns: 255 on the columns (cw) and rows (ch) outside the rescaled image, 0 inside. With ``windows``, the
    batch holds each sample's window (see :func:`source_windows`) at its top-left in a buffer of ``held`` pixels.
    """
    (h, w), (ch, cw) = in_size, crop_size
    gy, gx = _axis(p, 0, h, ch), _axis(p, 1, w, cw)
    iy, ix = _nearest(gy, h).astype(np.float64), _nearest(gx, w).astype(np.float64)  # labels: the same map
    inside = np.abs(gx) <= 1, np.abs(gy) <= 1
    if windows is not None:
        hh, hw = held if held is not None else (h, w)
        y0, x0 = windows[:, 0].astype(np.float64), windows[:, 2].astype(np.float64)
        iy, ix = iy - y0[:, None], ix - x0[:, None]
        gy, gx = _to_window(gy, h, y0, hh), _to_window(gx, w, x0, hw)
        w = hw
    hue, sat, contrast = (np.asarray(a, np.float64) for a in (p.hue, p.saturation, p.contrast))
    n = hue.shape[0]
    chroma = np.zeros((n, 3, 3))
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1] = chroma[:, 2, 2] = sat * np.cos(hue)
    chroma[:, 2, 1] = sat * np.sin(hue)
    chroma[:, 1, 2] = -chroma[:, 2, 1]
    # 0-255 distortion: A x + b with A = c · chroma map and b = β + (1 − c) · grey mean of x (contrast c around
    # the grey mean of x + β; the chroma map leaves grey unchanged), or b = c · β (contrast "zero": c · (x + β),
    # which commutes with the chroma map, so its place among the colour steps does not matter). Normalisation
    # (v / 255 − μ) / σ is folded in.
    if contrast_center not in CONTRAST_CENTERS:
        raise ValueError(f"contrast_center must be one of {', '.join(CONTRAST_CENTERS)}, got {contrast_center!r}")
    around_mean = contrast_center == "mean"
    inv = 1.0 / (255.0 * np.asarray(std, np.float64))
    colour = inv[None, :, None] * contrast[:, None, None] * (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)
    shift = np.asarray(p.brightness, np.float64) * (1.0 if around_mean else contrast)
    base = shift[:, None] * inv[None] - (np.asarray(mean) / np.asarray(std))[None]
    per_grey = (1 - contrast)[:, None] * inv[None] * around_mean
    plan = np.concatenate([gx, gy, ix, iy * w, *inside, colour.reshape(n, 9), base, per_grey], axis=1, dtype=np.float32)
    padding = np.concatenate([~inside[0], ~inside[1]], axis=1).astype(np.uint8) * np.uint8(255)
    return plan, padding


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    params: AugmentParams,
    crop_size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    *,
    ignore_index: int = 255,
    in_size: tuple[int, int] | None = None,
    windows: np.ndarray | None = None,
    contrast_center: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, H, W, 3) and labels (N, H, W) on one device → float32 (N, 3, ch, cw) normalised, int64 labels.

    Pixels outside the rescaled image get label ``ignore_index`` and the mean colour (0 after normalisation).
    With ``windows`` (:func:`source_windows` of images of ``in_size``), the tensors hold only each sample's window,
    at the top-left; the pixel just past a window's bottom row and right column must repeat its edge.
    ``contrast_center``: :data:`CONTRAST_CENTERS`.
    """
    n, h, w = labels.shape
    ch, cw = crop_size
    dev = images.device
    if windows is None:
        planned = _plan(params, (h, w), crop_size, mean, std, contrast_center=contrast_center)
        plan, padding = (torch.from_numpy(a) for a in planned)
    else:
        if in_size is None:
            raise ValueError("augment_batch: windows need in_size, the size of the whole source images")
        planned = _plan(params, in_size, crop_size, mean, std, windows, (h, w), contrast_center=contrast_center)
        plan, padding = (torch.from_numpy(a) for a in planned)
    if dev.type == "cuda":  # page-locked, so the copies run asynchronously
        plan, padding = (t.pin_memory().to(dev, non_blocking=True) for t in (plan, padding))
    elif dev.type != "cpu":
        plan, padding = plan.to(dev), padding.to(dev)
    gx, gy, ix, iyw, in_x, in_y, colour, base, per_grey = plan.split([cw, ch, cw, ch, cw, ch, 9, 3, 3], dim=1)
    grid = torch.stack(torch.broadcast_tensors(gx.view(n, 1, cw), gy.view(n, ch, 1)), dim=-1)
    # 'border' keeps edge pixels from blending with black; the outside is set to the mean colour below
    x = F.grid_sample(
        images.permute(0, 3, 1, 2).float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    flat = (iyw.view(n, ch, 1) + ix.view(n, 1, cw)).long().view(n, -1)
    y = labels.reshape(n, h * w).gather(1, flat).view(n, ch, cw)
    pad_x, pad_y = padding.split([cw, ch], dim=1)
    y = y.bitwise_or_(torch.maximum(pad_y.view(n, ch, 1), pad_x.view(n, 1, cw)))  # 255 = ignore in the padding
    luma, lo, hi = _constants(tuple(mean), tuple(std), dev)
    offset = torch.addcmul(base, per_grey, (x.mean((2, 3)) @ luma).view(n, 1)).view(n, 3, 1)
    x = torch.baddbmm(offset, colour.view(n, 3, 3), x.reshape(n, 3, ch * cw)).view(n, 3, ch, cw)
    for c in range(3):  # the 0-255 clamp of the distorted colours, after normalisation (per-channel bounds)
        x[:, c].clamp_(lo[c], hi[c])
    x = x.mul_(in_y.view(n, 1, ch, 1) * in_x.view(n, 1, 1, cw))  # the mean colour (0) in the padding
    y = y.long()
    return x, y if ignore_index == 255 else y.masked_fill_(y == 255, ignore_index)


@functools.lru_cache(maxsize=8)
def _constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, list[float], list[float]]:
    m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    luma = torch.as_tensor(_RGB_TO_YIQ[0], dtype=torch.float32, device=device)
    return luma, (-m / s).tolist(), ((1 - m) / s).tolist()
