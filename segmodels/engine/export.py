"""Export a model to ONNX and check the exported graph against PyTorch with onnxruntime.

The exporter is ``torch.onnx.export(..., dynamo=True)``, the torch.export-based path: the default since
torch 2.9, available (with onnxscript) from 2.6, and the one that keeps being developed, while the
TorchScript path (``dynamo=False``) is deprecated. The graph has a fixed input size (the benchmark's
[height, width] by default): adaptive pooling in the pyramid pooling module only lowers to ONNX for a
known feature size, and a deployed segmentation model runs at one resolution anyway. The weights are
stored inside the .onnx file (every model of the study is far below protobuf's 2 GB limit).

:func:`verify_onnx` is a check that can fail: it runs the file in onnxruntime (CPU) and the model in PyTorch on
one input and raises :class:`OnnxMismatchError` when the largest absolute difference of the logits exceeds
``atol`` (default :data:`ONNX_ATOL`), or is not finite, or the shapes differ.

What is exported is the inference-ready model (:func:`segmodels.models.fold.inference_model`): BatchNorm folded
into the convolutions, no dropout, no training-only auxiliary head; its logits are the model's own up to float
rounding, which :func:`verify_onnx` checks against the unfolded model. The graph's input is the float32 image batch
the model takes, normalised outside the graph (ImageNet mean and std, :func:`segmodels.data.loader.normalize`).

:func:`export_model` is the whole ``segmodels export``: the fp32 graph, its verification, optionally an INT8 graph
beside it (:mod:`segmodels.engine.quantize`, calibrated on packed training images) with the fraction of pixels
whose class it keeps on validation images, and a record of all of it in ``{stem}.export.json`` beside the file.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "AGREEMENT_IMAGES",
    "ONNX_ATOL",
    "LogitsOnly",
    "OnnxMismatchError",
    "export_model",
    "export_onnx",
    "onnx_runner",
    "record_path",
    "verify_onnx",
]

AGREEMENT_IMAGES = 8  # validation images the INT8 model's predictions are compared on (millions of pixels)
# fp32 logits of the study's models agree to ~1e-6 (tiny models) to ~1e-4 (deep ones at 1024×512): the
# kernels differ in summation order only. A wrong graph (a dropped op, a stale weight) misses by far more.
ONNX_ATOL = 1e-3


class OnnxMismatchError(RuntimeError):
    """The exported graph's outputs differ from PyTorch's by more than the tolerance."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class LogitsOnly(nn.Module):
    """The model with a tensor output: ONNX graphs return tensors, not the ``{"out": …}`` dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int] = (512, 1024),
    batch_size: int = 1,
    opset: int = 18,
    fold: bool = True,
) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with input ``images`` (N, 3, H, W) and output ``logits``;
    ``fold``: export its inference-ready copy (BatchNorm folded, no dropout or training-only auxiliary head)."""
    from segmodels.atomic import write_bytes_atomic
    from segmodels.models.fold import inference_model

    path = Path(path)
    model = model.eval().cpu()
    wrapped = LogitsOnly(inference_model(model) if fold else model)
    example = torch.zeros(batch_size, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    # Serialise in memory so the file appears complete or not at all.
    write_bytes_atomic(path, program.model_proto.SerializeToString())
    return path


def verify_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int],
    batch_size: int = 1,
    seed: int = 0,
    atol: float = ONNX_ATOL,
    name: str | Path | None = None,
) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime (CPU) and ``model`` in PyTorch on one random input.

    Returns {"max_abs_diff", "mean_abs_diff", "argmax_agreement", "atol"}; raises OnnxMismatchError (with that
    report as ``.report``) when the outputs' shapes differ or the largest absolute difference is above ``atol``
    or not finite. The messages name ``name`` (default: ``path``), the file's final path while it is staged.
    """
    import onnxruntime as ort

    shown = path if name is None else name
    if not atol >= 0:
        raise ValueError(f"the tolerance must be >= 0, got {atol}")
    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = LogitsOnly(model.eval().cpu())(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    if got.shape != expected.shape:
        report = {"max_abs_diff": math.inf, "mean_abs_diff": math.inf, "argmax_agreement": 0.0, "atol": atol}
        raise OnnxMismatchError(
            f"{shown}: onnxruntime gives logits of shape {list(got.shape)}, PyTorch {list(expected.shape)}", report
        )
    diff = abs(got.astype("float64") - expected.astype("float64"))
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    report = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "argmax_agreement": agree,
              "atol": atol}  # fmt: skip
    if not report["max_abs_diff"] <= atol:  # NaN fails too
        raise OnnxMismatchError(
            f"{shown}: onnxruntime and PyTorch differ: max |diff| {report['max_abs_diff']:.3e} > tolerance "
            f"{atol:g} (argmax agreement {agree * 100:.3f}%)",
            report,
        )
    return report


def record_path(path: str | Path) -> Path:
    """The export record beside an ONNX file: ``model.onnx`` → ``model.export.json``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + ".export.json")


class _Staged:
    """The files of one export under temporary names beside their final ones, renamed into place together by
    :meth:`commit` once all are complete: a failure (a full disk, a failed quantization) leaves the previous
    export's fp32 model, INT8 model and record as they were."""

    def __init__(self, path: Path) -> None:
        from segmodels.engine.quantize import int8_path

        token = secrets.token_hex(4)
        self.final = {"fp32": path, "int8": int8_path(path), "record": record_path(path)}
        self.temp = {key: p.with_name(f".{p.name}.{token}.tmp") for key, p in self.final.items()}

    def discard(self) -> None:
        for temp in self.temp.values():
            temp.unlink(missing_ok=True)

    def commit(self, *keys: str) -> None:
        """Rename the staged ``keys`` into place, the record last, and remove the earlier files not replaced (an
        earlier record first: it must never describe files that are not there). Renames need no space."""
        from segmodels.atomic import fsync_dir

        self.final["record"].unlink(missing_ok=True)
        for key in ("fp32", "int8", "record"):
            if key in keys:
                os.replace(self.temp[key], self.final[key])
            else:
                self.final[key].unlink(missing_ok=True)
        fsync_dir(self.final["fp32"].parent)


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int] = (512, 1024),
    batch_size: int = 1,
    opset: int = 18,
    verify: bool = True,
    atol: float = ONNX_ATOL,
    int8: bool = False,
    data_dir: str | Path | None = None,
    calibration: int | None = None,
    seed: int = 0,
    log: Any = print,
    inputs: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Export the inference-ready ``model`` to ``path`` (fp32 ONNX), verify it against PyTorch (``verify``), and
    with ``int8`` quantize it to :func:`segmodels.engine.quantize.int8_path` beside it, calibrated on
    ``calibration`` images (default :data:`~segmodels.engine.quantize.CALIBRATION_IMAGES`) of
    ``data_dir/train`` and compared on up to :data:`AGREEMENT_IMAGES` of ``data_dir/val``.

    Writes and returns the record (:func:`record_path`). The output paths and the INT8 settings are checked before
    any work (no output may be a folder or one of ``inputs``, e.g. ``{"checkpoint": ckpt}``). Every file is written
    under a temporary name and all are renamed into place at the end, so a failure leaves an earlier export at
    ``path`` whole; an earlier INT8 model is removed when this export has none. A failed verification raises
    :class:`OnnxMismatchError` with the fp32 file installed for inspection, and no record or INT8 model.
    """
    from segmodels.atomic import disk_full_error
    from segmodels.data.loader import MEAN, STD
    from segmodels.folders import check_apart, check_file_output
    from segmodels.models.fold import fold_report, inference_model
    from segmodels.study.runs import write_json

    path = Path(path)
    stage = _Staged(path)
    for key, out in stage.final.items():
        check_file_output(out, option="--out" if key == "fp32" else f"--out's {key} file")
        check_apart(out, inputs or {})
    count = n_val = None
    if int8:
        from segmodels.engine.quantize import calibration_count, packed_images

        if data_dir is None:
            raise ValueError("INT8 export calibrates on packed training images: give the packed dataset folder")
        count = calibration_count(data_dir, calibration)
        n_val = min(AGREEMENT_IMAGES, len(packed_images(Path(data_dir) / "val")))
    elif calibration is not None:
        raise ValueError("a calibration count is for INT8 export only")
    log = log or (lambda _: None)
    model = model.eval().cpu()
    ready = inference_model(model)
    folded = fold_report(ready)
    record: dict[str, Any] = {
        "model": getattr(model, "name", None),
        "path": str(path),
        # The graph reads images normalised outside it: (uint8 / 255 - mean) / std per channel.
        "input": {"name": "images", "shape": [batch_size, 3, *size], "dtype": "float32", "mean": MEAN, "std": STD},
        "output": {"name": "logits"},
        "opset": opset,
        "folded": True,
        "fold": folded,
        "verify": None,
        "int8": None,
    }
    writing = stage.final["fp32"]
    try:
        export_onnx(ready, stage.temp["fp32"], size=size, batch_size=batch_size, opset=opset, fold=False)
        if verify:
            try:
                record["verify"] = verify_onnx(model, stage.temp["fp32"], size=size, batch_size=batch_size,
                                               atol=atol, name=path)  # fmt: skip
            except OnnxMismatchError:
                stage.commit("fp32")  # kept for inspection; an earlier record or INT8 model would not describe it
                raise
        if int8:
            from segmodels.engine.quantize import agreement, quantize_onnx

            writing = stage.final["int8"]
            quantized = quantize_onnx(stage.temp["fp32"], stage.temp["int8"], calibration_dir=data_dir, count=count,
                                      seed=seed)  # fmt: skip
            val = Path(data_dir) / "val"
            quantized["agreement"] = agreement(stage.temp["fp32"], stage.temp["int8"], val, limit=n_val)
            quantized["agreement_images"] = {"split": str(val), "count": n_val}
            quantized.update(path=str(stage.final["int8"]), fp32_path=str(path))
            record["int8"] = quantized
        writing = stage.final["record"]
        write_json(stage.temp["record"], record)
        stage.commit("fp32", "record", *(("int8",) if int8 else ()))
    except Exception as exc:
        if (full := disk_full_error(exc, writing)) is not None:
            raise full from exc
        raise
    finally:
        stage.discard()
    aux = "auxiliary head dropped" if fold_report(model)["training_aux_head"] else "no training-only auxiliary head"
    log(f"wrote {path} (input images {batch_size}x3x{size[0]}x{size[1]}, output logits; folded model: "
        f"{folded['folded']} BatchNorms folded, {folded['batchnorm_left']} left, {aux})")  # fmt: skip
    if verify:
        check = record["verify"]
        log(f"onnxruntime vs PyTorch: max |diff| {check['max_abs_diff']:.2e} <= tolerance {atol:g}, "
            f"argmax agreement {check['argmax_agreement'] * 100:.3f}%")  # fmt: skip
    if int8:
        log(
            f"wrote {quantized['path']} (INT8, calibrated on {count} images of {quantized['calibration']['split']}; "
            f"{quantized['int8_bytes'] / 2**20:.1f} MiB against {quantized['fp32_bytes'] / 2**20:.1f} MiB)"
        )
        log(f"INT8 vs fp32 argmax agreement: {quantized['agreement'] * 100:.2f}% of the pixels of {n_val} "
            f"image(s) of {quantized['agreement_images']['split']}")  # fmt: skip
    return record


def onnx_runner(
    model: nn.Module, x: torch.Tensor, workdir: str | Path, *, device: torch.device, opset: int = 18, int8: bool = False
) -> tuple[Any, str]:
    """Export ``model`` for input ``x`` into ``workdir`` (INT8 with ``int8``, calibrated on ``x`` itself: the ranges
    change no operator, so not the time) and return a no-argument callable running it in onnxruntime on ``x``, with
    the execution provider that runs it (CUDA's on a CUDA ``device``)."""
    import onnxruntime as ort

    workdir = Path(workdir)
    size, batch = (int(x.shape[-2]), int(x.shape[-1])), int(x.shape[0])
    path = export_onnx(model.cpu(), workdir / "model.onnx", size=size, batch_size=batch, opset=opset)
    if int8:
        from segmodels.engine.quantize import quantize_on_inputs

        path = Path(quantize_on_inputs(path, workdir / "model.int8.onnx", [x.cpu().numpy()])["path"])
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    session = ort.InferenceSession(str(path), providers=providers)
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}
    return lambda: session.run(None, feed), session.get_providers()[0]
