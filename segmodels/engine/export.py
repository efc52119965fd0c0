"""Export a model to ONNX and check the exported graph against PyTorch with onnxruntime.

The exporter is ``torch.onnx.export(..., dynamo=True)``, the torch.export-based path: the default since
torch 2.9, available (with onnxscript) from 2.6, and the one that keeps being developed, while the
TorchScript path (``dynamo=False``) is deprecated. The graph has a fixed input size (the benchmark's
[height, width] by default): adaptive pooling in the pyramid pooling module only lowers to ONNX for a
known feature size, and a deployed segmentation model runs at one resolution anyway. The weights are
stored inside the .onnx file (every model of the study is far below protobuf's 2 GB limit).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LogitsOnly", "export_onnx", "verify_onnx"]


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
    model: nn.Module, path: str | Path, *, size: tuple[int, int], batch_size: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime and PyTorch on one random input; return the largest differences."""
    import onnxruntime as ort

    x = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = LogitsOnly(model.eval().cpu())(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    diff = abs(got - expected)
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "argmax_agreement": agree}
