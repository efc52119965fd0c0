"""Segment a user's own images with a trained checkpoint.

For every input ``{stem}.{ext}`` three PNGs are written at the input's own size: ``{stem}_trainid.png``
(the train-id mask, one byte per pixel), ``{stem}_color.png`` (Cityscapes palette) and
``{stem}_overlay.png`` (the colours blended over the input). All inputs are opened before the model is
loaded, so an unreadable file is named at once instead of after hours of work on the others. A folder
stands for the images directly inside it; 16-bit and float images are scaled to 8 bits by
:mod:`segmodels.data.images`, never clipped.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmodels.data.images import IMAGE_SUFFIXES, list_images, read_rgb8

__all__ = ["check_images", "predict_images"]


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


def check_images(paths: Sequence[str | Path]) -> list[Path]:
    """The input files, folders expanded to the images directly inside them; raises naming the first bad one.

    No two inputs may write the same output names, and each must decode to 8-bit RGB
    (:func:`segmodels.data.images.read_rgb8`).
    """
    if not paths:
        raise ValueError("no input images given")
    out, stems = _expand(paths), {}
    for path in out:
        if path.stem in stems:
            raise ValueError(f"{stems[path.stem]} and {path} would write the same output files ({path.stem}_*.png)")
        stems[path.stem] = path
        read_rgb8(path)
    return out


def _encode(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _label_set(meta: dict[str, Any]) -> Any:
    """The classes the checkpoint was trained on (recorded with it), else Cityscapes' for a 19-class model (a
    checkpoint from before label sets were recorded), else numbered classes with the default colours."""
    from segmodels.data.labelset import checkpoint_label_set, cityscapes_label_set, numbered_label_set

    n = int(meta["num_classes"])
    return checkpoint_label_set(meta) or (cityscapes_label_set() if n == 19 else numbered_label_set(n))


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
    log: Any = print,
) -> list[dict[str, str]]:
    """Segment ``images`` and write the masks to ``out_dir``; returns the written paths per input.

    ``size`` [height, width] resizes each image for the forward pass (e.g. the resolution the model was
    trained at); the masks are always at the input's own size.
    """
    from segmodels.atomic import write_bytes_atomic
    from segmodels.data.loader import normalize
    from segmodels.devices import resolve_device
    from segmodels.engine.inference import amp_available, load_model, predict_scores

    paths = check_images(images)
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"--size must be HEIGHT WIDTH, positive, got {list(size)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must lie in [0, 1], got {alpha}")
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, device=dev)
    colorize = _label_set(meta).colorize
    out_dir = Path(out_dir)
    written = []
    for path in paths:
        rgb = read_rgb8(path)
        h, w = rgb.shape[:2]
        x = normalize(torch.from_numpy(rgb).unsqueeze(0).to(dev))
        if size is not None:
            x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        scores = predict_scores(model, x, flip=flip, amp=amp and amp_available(dev), out_size=(h, w))
        mask = scores.argmax(1)[0].to(torch.uint8).cpu().numpy()
        color = colorize(mask)
        overlay = (rgb.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).round().astype(np.uint8)
        files = {
            "trainid": out_dir / f"{path.stem}_trainid.png",
            "color": out_dir / f"{path.stem}_color.png",
            "overlay": out_dir / f"{path.stem}_overlay.png",
        }
        for key, array in (("trainid", mask), ("color", color), ("overlay", overlay)):
            write_bytes_atomic(files[key], _encode(array))
        written.append({"input": str(path)} | {k: str(v) for k, v in files.items()})
        if log:
            log(f"{path} -> {files['color']}")
    return written
