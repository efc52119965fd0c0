"""Segment a user's own images with a trained checkpoint.

For every input ``{stem}.{ext}`` three PNGs are written at the input's own size: ``{stem}_trainid.png``
(the train-id mask, one byte per pixel), ``{stem}_color.png`` (Cityscapes palette) and
``{stem}_overlay.png`` (the colours blended over the input). All inputs are opened before the model is
loaded, so an unreadable file or one with more pixels than ``max_pixels`` is named at once instead of after
hours of work on the others; checking them does not decode large ones fully. A folder stands for the images
directly inside it; 16-bit and float images are scaled to 8 bits by :mod:`segmodels.data.images`, never clipped.

Memory: an image is held as bytes (its pixels, its mask, one output at a time); with ``size`` neither the
full-size float image nor the full-size scores of every class are ever made. The forward pass's input is
resized and its scores upsampled band by band of rows with the bilinear rule of ``F.interpolate``
(``align_corners=False``), and the argmax taken band by band, so the masks are those of resizing it all at
once, up to float rounding. Running out of memory raises one :class:`MemoryError` naming the file and the
options that help.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segmodels.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    TooManyPixelsError,
    check_image,
    list_images,
    read_rgb8,
)

__all__ = ["check_images", "predict_images"]

_BAND_ELEMENTS = 1 << 22  # values in one band of rows: 16 MiB of float32 scores per view
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory")  # torch's CPU allocator; CUDA, MPS


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ValueError(f"no images in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return out


def _checked(paths: Sequence[str | Path], max_pixels: int | None) -> dict[Path, tuple[int, int]]:
    if not paths:
        raise ValueError("no input images given")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    sizes: dict[Path, tuple[int, int]] = {}
    stems: dict[str, Path] = {}
    for path in _expand(paths):
        if path.stem in stems:
            raise ValueError(f"{stems[path.stem]} and {path} would write the same output files ({path.stem}_*.png)")
        stems[path.stem] = path
        try:
            sizes[path] = check_image(path, max_pixels=max_pixels)
        except TooManyPixelsError as exc:
            (w, h), n = exc.size, exc.size[0] * exc.size[1]
            raise ValueError(f"{path} has {w}×{h} = {n} pixels, more than --max-pixels {exc.limit}; raise "
                             "--max-pixels to segment it (with --size H W for the forward pass) or downscale the "
                             "file first") from None  # fmt: skip
    return sizes


def check_images(paths: Sequence[str | Path], *, max_pixels: int | None = MAX_PIXELS) -> list[Path]:
    """The input files, folders expanded to the images directly inside them; raises naming the first bad one.

    No two inputs may write the same output names, none may have more than ``max_pixels`` pixels (None: no
    limit), and each must decode to 8-bit RGB (:func:`segmodels.data.images.check_image`).
    """
    return list(_checked(paths, max_pixels))


def _check_out(out_dir: Path) -> None:
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if folder == out_dir and not folder.is_dir():
                raise ValueError(f"--out {out_dir} exists and is not a folder")
            if not folder.is_dir():
                raise ValueError(f"--out {out_dir}: {folder} exists and is not a folder")
            return


def _label_set(meta: dict[str, Any]) -> Any:
    """The classes the checkpoint was trained on (recorded with it), else Cityscapes' for a 19-class model (a
    checkpoint from before label sets were recorded), else numbered classes with the default colours."""
    from segmodels.data.labelset import checkpoint_label_set, cityscapes_label_set, numbered_label_set

    n = int(meta["num_classes"])
    return checkpoint_label_set(meta) or (cityscapes_label_set() if n == 19 else numbered_label_set(n))


def _source_rows(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` rows resized from ``n_in``: the two source rows and their weights, as ATen's
    bilinear kernel computes them (half-pixel centres, float32, clamped at the borders)."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = (scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5).clamp_(min=0)
    y0 = src.floor().long().clamp_(max=n_in - 1)
    w1 = (src - y0).clamp_(0, 1)
    return y0, torch.where(y0 < n_in - 1, y0 + 1, y0), 1 - w1, w1


def _resized_bands(
    rows: Callable[[torch.Tensor], torch.Tensor], n_in: int, w_in: int, size: Sequence[int], channels: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Bilinear resize from ``n_in`` rows of ``w_in`` columns to ``size`` [H, W], a band of output rows at a time:
    yields (first row, (N, C, rows, W) float). ``rows(index)`` returns the source rows ``index`` (N, C, k, w_in).

    Each band needs only the source rows it reads: those are resized across to W by ``F.interpolate`` and
    blended down with :func:`_source_rows`' weights.
    """
    height, width = size
    step = max(1, _BAND_ELEMENTS // (2 * channels * max(w_in, width)))
    if n_in != height:
        y0, y1, w0, w1 = _source_rows(n_in, height)
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        if n_in == height:
            src = rows(torch.arange(r0, r1))
            yield r0, src if w_in == width else _across(src, width)
            continue
        need, where = torch.unique(torch.cat([y0[r0:r1], y1[r0:r1]]), return_inverse=True)
        src = rows(need)
        if w_in != width:
            src = _across(src, width)
        top, bottom = where[: r1 - r0].to(src.device), where[r1 - r0 :].to(src.device)
        a, b = w0[r0:r1, None].to(src.device), w1[r0:r1, None].to(src.device)
        yield r0, src.index_select(2, top) * a + src.index_select(2, bottom) * b


def _across(src: torch.Tensor, width: int) -> torch.Tensor:
    return F.interpolate(src, size=(src.shape[2], width), mode="bilinear", align_corners=False)


def _network_input(rgb: np.ndarray, size: Sequence[int] | None, device: torch.device) -> torch.Tensor:
    """The normalised (1, 3, h, w) input of the forward pass: ``rgb`` itself, or resized to ``size``."""
    from segmodels.data.loader import normalize

    height, width = rgb.shape[:2]
    if size is None or tuple(size) == (height, width):
        return normalize(torch.from_numpy(rgb).unsqueeze(0).to(device))
    x = torch.empty(1, 3, *size, device=device)

    def rows(index: torch.Tensor) -> torch.Tensor:
        return normalize(torch.from_numpy(rgb[index.numpy()]).unsqueeze(0).to(device))

    for r0, band in _resized_bands(rows, height, width, size, 3):
        x[:, :, r0 : r0 + band.shape[2]] = band
    return x


def _mask(views: list[torch.Tensor], size: Sequence[int]) -> np.ndarray:
    """The (H, W) uint8 argmax at ``size`` of the views' scores (N=1, C, h, w): one view's logits, or the mean of
    several views' softmax, upsampled band by band as :func:`segmodels.engine.inference.predict_scores` would."""
    mask = np.empty(tuple(size), np.uint8)
    _, c, h, w = views[0].shape
    bands = [
        _resized_bands(lambda index, v=v: v.index_select(2, index.to(v.device)), h, w, size, c * len(views))
        for v in views
    ]
    for parts in zip(*bands, strict=True):
        r0 = parts[0][0]
        if len(parts) == 1:
            scores = parts[0][1]
        else:
            scores = parts[0][1].softmax(dim=1)
            for _, more in parts[1:]:
                scores = scores + more.softmax(dim=1)
            scores = scores / len(parts)
        # max's indices are argmax's (the first of equal maxima), found several times faster on the CPU
        mask[r0 : r0 + scores.shape[2]] = scores.max(1).indices[0].to(torch.uint8).cpu().numpy()
    return mask


def _save_png(path: Path, image: Image.Image) -> None:
    from segmodels.atomic import write_atomic

    write_atomic(path, lambda fh: image.save(fh, format="PNG"))


def _colored(mask: np.ndarray, table: np.ndarray) -> Image.Image:
    """The RGB image of ``mask`` through the colour ``table`` (256, 3): a palette image converted by Pillow,
    many times faster than indexing an array with the mask."""
    image = Image.fromarray(mask)
    image.putpalette(table.tobytes())
    return image.convert("RGB")


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in _OUT_OF_MEMORY)
    )


def _out_of_memory_message(path: Path, image: tuple[int, int], size: Sequence[int] | None, device: torch.device) -> str:
    """One line naming ``path`` and the options that help: --size, --device cpu off the CPU, and --max-pixels
    where the image itself (not the forward pass --size asks for) is the larger."""
    (w, h), n = image, image[0] * image[1]
    hints = ["give --size H W (e.g. the training resolution)" if size is None else
             f"give a smaller --size than {size[0]} {size[1]}"]  # fmt: skip
    if device.type != "cpu":
        hints.append("use --device cpu")
    if size is None or n > size[0] * size[1]:
        hints.append(f"refuse such images before any work with a --max-pixels below {n}")
    advice = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
    return f"out of memory segmenting {path} ({w}×{h} = {n} pixels) on {device}: {advice}"


def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: str = "auto",
    size: Sequence[int] | None = None,
    flip: bool = False,
    amp: bool = True,
    alpha: float = 0.5,
    max_pixels: int | None = MAX_PIXELS,
    log: Any = print,
) -> list[dict[str, str]]:
    """Segment ``images`` and write the masks to ``out_dir``; returns the written paths per input.

    ``size`` [height, width] resizes each image for the forward pass (e.g. the resolution the model was
    trained at); the masks are always at the input's own size. An image with more than ``max_pixels`` pixels
    (None: no limit) is refused before the model loads; running out of memory raises :class:`MemoryError`.
    """
    from segmodels.devices import resolve_device
    from segmodels.engine.inference import amp_available, load_model

    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"--size must be HEIGHT WIDTH, positive, got {list(size)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must lie in [0, 1], got {alpha}")
    out_dir = Path(out_dir)
    _check_out(out_dir)
    sizes = _checked(images, max_pixels)
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, device=dev)
    colorize = _label_set(meta).colorize
    amp = amp and amp_available(dev)
    written = []
    for path, (w, h) in sizes.items():
        try:
            files = _segment(model, path, out_dir, dev, size=size, flip=flip, amp=amp, alpha=alpha,
                             colorize=colorize, max_pixels=max_pixels)  # fmt: skip
        except (RuntimeError, MemoryError) as exc:
            if not _out_of_memory(exc):
                raise
            raise MemoryError(_out_of_memory_message(path, (w, h), size, dev)) from exc
        written.append({"input": str(path)} | {k: str(v) for k, v in files.items()})
        if log:
            log(f"{path} -> {files['color']}")
    return written


def _segment(
    model: torch.nn.Module,
    path: Path,
    out_dir: Path,
    dev: torch.device,
    *,
    size: Sequence[int] | None,
    flip: bool,
    amp: bool,
    alpha: float,
    colorize: Callable[[np.ndarray], np.ndarray],
    max_pixels: int | None,
) -> dict[str, Path]:
    from segmodels.engine.inference import predict_scores

    rgb = read_rgb8(path, max_pixels=max_pixels)
    x = _network_input(rgb, size, dev)
    views = [predict_scores(model, x, amp=amp)]
    if flip:  # the views predict_scores averages, kept apart so that each is upsampled band by band
        views.append(predict_scores(model, x.flip(-1), amp=amp).flip(-1))
    del x
    with torch.inference_mode():
        mask = _mask(views, rgb.shape[:2])
    del views
    files = {key: out_dir / f"{path.stem}_{key}.png" for key in ("trainid", "color", "overlay")}
    table = colorize(np.arange(256, dtype=np.uint8)[None])[0]  # the colour of every byte value
    _save_png(files["trainid"], Image.fromarray(mask))
    _save_png(files["color"], _colored(mask, table))
    step = max(1, _BAND_ELEMENTS // rgb.shape[1])
    for y in range(0, rgb.shape[0], step):  # the overlay replaces the pixels, band by band
        part = rgb[y : y + step]
        color = np.asarray(_colored(mask[y : y + step], table), dtype=np.float32)
        part[...] = (part.astype(np.float32) * (1 - alpha) + color * alpha).round().astype(np.uint8)
    _save_png(files["overlay"], Image.fromarray(rgb))
    return files
