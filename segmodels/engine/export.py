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
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ONNX_ATOL", "LogitsOnly", "OnnxMismatchError", "export_onnx", "verify_onnx"]

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
) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with input ``images`` (N, 3, H, W) and output ``logits``."""
    from segmodels.atomic import write_bytes_atomic

    path = Path(path)
    wrapped = LogitsOnly(model.eval().cpu())
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
) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime (CPU) and ``model`` in PyTorch on one random input.

    Returns {"max_abs_diff", "mean_abs_diff", "argmax_agreement", "atol"}; raises OnnxMismatchError (with that
    report as ``.report``) when the outputs' shapes differ or the largest absolute difference is above ``atol``
    or not finite.
    """
    import onnxruntime as ort

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
            f"{path}: onnxruntime gives logits of shape {list(got.shape)}, PyTorch {list(expected.shape)}", report
        )
    diff = abs(got.astype("float64") - expected.astype("float64"))
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    report = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "argmax_agreement": agree,
              "atol": atol}  # fmt: skip
    if not report["max_abs_diff"] <= atol:  # NaN fails too
        raise OnnxMismatchError(
            f"{path}: onnxruntime and PyTorch differ: max |diff| {report['max_abs_diff']:.3e} > tolerance "
            f"{atol:g} (argmax agreement {agree * 100:.3f}%)",
            report,
        )
    return report
