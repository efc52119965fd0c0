"""INT8 post-training quantization of an exported ONNX model with ONNX Runtime, and how far it moves predictions.

:func:`quantize_onnx` calibrates on packed training images and writes a QDQ graph (QuantizeLinear / DequantizeLinear
pairs around each quantized operator, which ONNX Runtime's CPU provider fuses into integer kernels): weights int8
per output channel, activations uint8 per tensor, ranges from the minimum and maximum seen in calibration; on a CPU
without VNNI the weights keep 7 bits (``reduce_range``, :func:`int8_settings`), the remedy ONNX Runtime documents
for the saturation of its u8×s8 kernels there. :func:`agreement` is the fraction of pixels whose predicted class is
the same under the INT8 and the fp32 graph, on held-out images: a quick check that quantization kept the model, not
an mIoU.

The exported graph takes what the model takes (:func:`segmodels.engine.export.export_onnx`): float32 images
(N, 3, H, W), normalised outside the graph with the ImageNet mean and std (:func:`segmodels.data.loader.normalize`),
at the graph's fixed size. Calibration and agreement images are prepared the same way, bilinearly resized to that
size when the packed images differ (as ``segmodels predict --size`` does).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segmodels.atomic import FILE_MODE, disk_full_error, fsync_dir

__all__ = [
    "CALIBRATION_IMAGES",
    "INT8_SUFFIX",
    "agreement",
    "calibration_count",
    "int8_path",
    "int8_settings",
    "packed_images",
    "quantize_on_inputs",
    "quantize_onnx",
]

INT8_SUFFIX = ".int8.onnx"  # model.onnx → model.int8.onnx
# Calibration images when none are asked for: min/max ranges need enough scenes to meet each layer's extremes, and
# each image costs one forward pass of the calibration graph; a compromise, not a measured optimum.
CALIBRATION_IMAGES = 100
_WEIGHTS = {False: "int8, per channel", True: "int8 in a 7-bit range (reduce_range), per channel"}  # by reduce_range
_INSTALL = "pip install 'segmodels[export]' (onnx, onnxruntime)"


def int8_path(fp32_path: str | Path) -> Path:
    """Where the INT8 model of ``fp32_path`` goes: ``model.onnx`` → ``model.int8.onnx`` beside it."""
    fp32_path = Path(fp32_path)
    stem = fp32_path.name.removesuffix(".onnx")
    return fp32_path.with_name(stem + INT8_SUFFIX)


def int8_settings(cpuinfo: str | None = None) -> dict[str, Any]:
    """How this CPU's INT8 graph is quantized: uint8 activations × int8 weights (U8S8) everywhere, the weights in
    7 bits (``reduce_range``) where the CPU has no VNNI (:func:`segmodels.devices.cpu_int8_vnni`). Without VNNI,
    ONNX Runtime's x86 kernels add pairs of u8×s8 products into 16 bits (vpmaddubsw), which a 255 × 127 pair can
    saturate; 7-bit weights keep every pair sum within range. ``cpuinfo``: /proc/cpuinfo's text to judge."""
    from segmodels.devices import cpu_int8_vnni

    vnni, why = cpu_int8_vnni(cpuinfo)
    return {
        "activations": "uint8, per tensor",
        "weights": _WEIGHTS[not vnni],
        "reduce_range": not vnni,
        "vnni": vnni,
        "vnni_reason": why,
    }


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"INT8 export needs onnxruntime, which is not installed: {_INSTALL}") from exc
    return onnxruntime


def _quantization() -> Any:
    _ort()
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # onnxruntime.quantization imports onnx
        raise ImportError(f"INT8 export needs onnxruntime.quantization, which failed to import ({exc}): "
                          f"{_INSTALL}") from exc  # fmt: skip
    return quantization


def _session(path: Path, threads: int | None = None) -> Any:
    ort = _ort()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _graph_input(session: Any, size: tuple[int, int] | None, path: Path) -> tuple[str, int, tuple[int, int]]:
    """The graph's input name, batch size and (height, width); ``size`` is required where the graph leaves them open."""
    first = session.get_inputs()[0]
    shape = list(first.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"{path}: expected an image input (N, 3, H, W), got {first.name} {shape}")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    fixed = tuple(shape[2:]) if all(isinstance(d, int) and d > 0 for d in shape[2:]) else None
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if fixed is not None and size != fixed:
            raise ValueError(f"{path}: the graph's input is {fixed[0]}x{fixed[1]}, not {size[0]}x{size[1]}")
    elif fixed is None:
        raise ValueError(f"{path}: the graph's input size is not fixed ({shape}); give the size")
    return first.name, batch, size or fixed


def _prepared(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) → float32 (N, 3, h, w) as the graph reads them: normalised, resized to ``size``."""
    import torch
    import torch.nn.functional as F

    from segmodels.data.loader import normalize

    x = normalize(torch.from_numpy(np.ascontiguousarray(images)))
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.numpy()


def _batches(images: np.ndarray, batch: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Batches of ``batch`` images; the last one is filled up from the first images (a graph of fixed batch)."""
    n = len(images)
    for start in range(0, n, batch):
        idx = [(start + i) % n for i in range(batch)]
        yield _prepared(images[idx], size)


def packed_images(split_dir: str | Path) -> np.ndarray:
    """The uint8 (N, H, W, 3) images of a packed split folder, memory-mapped."""
    split_dir = Path(split_dir)
    if not (split_dir / "images.npy").is_file():
        raise FileNotFoundError(f"{split_dir / 'images.npy'} not found: run `segmodels prepare` to pack the dataset")
    images = np.load(split_dir / "images.npy", mmap_mode="r")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{split_dir / 'images.npy'}: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def calibration_count(calibration_dir: str | Path, count: int | None, *, split: str = "train") -> int:
    """The number of calibration images to use: ``count``, checked against ``calibration_dir/{split}``, or for
    None :data:`CALIBRATION_IMAGES` (at most the split's size). Raises before any export work is done."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"the calibration count must be a positive number of images, got {count!r}")
    split_dir = Path(calibration_dir) / split
    available = len(packed_images(split_dir))
    if count is None:
        return min(CALIBRATION_IMAGES, available)
    if count > available:
        raise ValueError(f"calibration count {count} is larger than the {available} images in {split_dir}")
    return count


def _check_paths(fp32_path: Path, out_path: Path) -> None:
    if not fp32_path.is_file():
        raise FileNotFoundError(f"fp32 ONNX model not found: {fp32_path}")
    if out_path.resolve() == fp32_path.resolve():
        raise ValueError(f"the INT8 model would overwrite the fp32 model {fp32_path}: choose another output")


# Operators left in float32: GroupNorm (model.norm: group) exports as a reshape, an InstanceNormalization whose
# scale and bias of ones and zeros are one initializer shared by all of them (ONNX Runtime refuses to quantize a
# shared weight), then the affine Mul and Add; a normalisation's statistics also need more than 8 bits.
_FLOAT_OPS = {"InstanceNormalization", "GroupNormalization"}


def _float_nodes(path: Path) -> list[str]:
    """Names of the nodes of the graph at ``path`` that stay in float32 (:data:`_FLOAT_OPS`)."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node
            if node.op_type in _FLOAT_OPS]  # fmt: skip


def quantize_on_inputs(fp32_path: str | Path, out_path: str | Path, inputs: Iterable[np.ndarray], *,
                       reduce_range: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Quantize ``fp32_path`` to INT8 (QDQ) at ``out_path``, calibrated on ``inputs``: float32 batches exactly as the
    graph reads them. :func:`quantize_onnx` feeds it packed images; the benchmark its timed input (a latency does
    not depend on the calibrated ranges). ``reduce_range`` None: 7-bit weights where this CPU has no VNNI
    (:func:`int8_settings`); the record says which was used. Written to a temporary name beside ``out_path`` and
    renamed, with the mode of every other output; a full disk raises :class:`~segmodels.atomic.DiskFullError`
    naming ``out_path``."""
    settings = int8_settings()
    if reduce_range is not None:
        settings |= {"reduce_range": reduce_range, "weights": _WEIGHTS[reduce_range]}
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    _check_paths(fp32_path, out_path)
    quantization = _quantization()
    name = _session(fp32_path).get_inputs()[0].name

    class _Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = ({name: np.asarray(x, np.float32)} for x in inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory() as work:
            # Shape inference and graph optimisation first (ONNX Runtime's advice for quantization): constant
            # folding and fusions leave fewer, larger operators, so fewer quantize/dequantize pairs.
            prepared = Path(work) / "prepared.onnx"
            quantization.shape_inference.quant_pre_process(str(fp32_path), str(prepared))
            quantization.quantize_static(
                str(prepared),
                tmp,
                _Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=settings["reduce_range"],
                # uint8 activations × int8 weights (U8S8): x86's VNNI dot product (vpdpbusd) and AVX2's vpmaddubsw
                # multiply unsigned by signed bytes, so ONNX Runtime's CPU kernels take U8S8 directly, while int8
                # activations (S8S8) are first shifted to uint8. On this project's AVX512-VNNI CPU, resnet18-ppm at
                # 128×256 ran in 16 ms as U8S8 against 36 ms as S8S8 (fp32: 45 ms).
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                nodes_to_exclude=_float_nodes(prepared),
            )
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would outlive the rename: the mode of every other output
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, Exception) and (full := disk_full_error(exc, out_path)) is not None:
            raise full from exc
        raise
    fsync_dir(out_path.parent)
    return {
        "path": str(out_path),
        "fp32_path": str(fp32_path),
        "format": "QDQ",
        **settings,
        "calibrate_method": "MinMax",
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": out_path.stat().st_size,
    }


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    calibration_dir: str | Path,
    count: int,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    split: str = "train",
    reduce_range: bool | None = None,
) -> dict[str, Any]:
    """Quantize the fp32 ONNX model ``fp32_path`` to INT8 (QDQ) at ``out_path``, calibrated on ``count`` images of
    ``calibration_dir/{split}`` (a packed dataset folder; the images drawn at random with ``seed``).

    ``size`` (height, width) is needed only when the graph's input size is not fixed; ``reduce_range`` as in
    :func:`quantize_on_inputs`. The file is written to a
    temporary name beside ``out_path`` and renamed, so ``out_path`` is complete or absent. Returns what was done:
    the settings, the calibration images and the file sizes.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if count is None or isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the calibration count must be a positive number of images, got {count!r}")
    _check_paths(fp32_path, out_path)
    _quantization()  # an installation problem is named before the data is read
    split_dir = Path(calibration_dir) / split
    calibration_count(calibration_dir, count, split=split)
    images = packed_images(split_dir)
    name, batch, size = _graph_input(_session(fp32_path), size, fp32_path)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))
    info = quantize_on_inputs(fp32_path, out_path, _batches(images[chosen], batch, size), reduce_range=reduce_range)
    calibration = {"split": str(split_dir), "count": count, "seed": seed, "indices": chosen.tolist()}
    return info | {"calibration": calibration, "input": {"name": name, "shape": [batch, 3, *size]}}


def agreement(
    fp32_path: str | Path,
    int8_path: str | Path,
    images: np.ndarray | str | Path,
    *,
    limit: int | None = None,
    threads: int | None = None,
) -> float:
    """The fraction of pixels whose argmax class is the same under both graphs, over ``images``: uint8
    (N, H, W, 3) or a packed split folder (e.g. ``data/packed/{dataset}/val``), its first ``limit`` images."""
    paths = [Path(fp32_path), Path(int8_path)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
    if not isinstance(images, np.ndarray):
        images = packed_images(Path(images))
    if limit is not None:
        images = images[:limit]
    if len(images) == 0:
        raise ValueError("no images to compare the INT8 and fp32 models on")
    sessions = [_session(path, threads) for path in paths]
    name, batch, size = _graph_input(sessions[0], None, paths[0])
    same = total = 0
    for start in range(0, len(images), batch):
        x = next(_batches(images[start : start + batch], batch, size))
        keep = min(batch, len(images) - start)  # a filled-up batch: only its own images count
        fp32, int8 = (s.run(None, {name: x})[0][:keep].argmax(1) for s in sessions)
        same += int((fp32 == int8).sum())
        total += fp32.size
    return same / total
