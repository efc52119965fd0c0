"""An exported ONNX graph behind the segmentor's interface, so that ``evaluate`` scores it with the same code.

``segmodels evaluate --backend onnx`` exports the run's checkpoint (the inference-ready, BatchNorm-folded model)
at the packed validation size and scores the graph in ONNX Runtime; ``--backend onnx-int8`` also quantizes it
(:mod:`segmodels.engine.quantize`, calibrated on the study's packed training images) and scores the INT8 graph.
The confusion matrices, metrics and files are those of a PyTorch evaluation, so the mIoU cost of quantization is
measured on the validation set, not assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "OnnxModel", "check_backend", "onnx_model"]

BACKENDS = ("torch", "onnx", "onnx-int8")


def check_backend(backend: str, *, scales: list[float], sliding: bool, calibration: int | None = None) -> None:
    """ValueError for a backend that is not one of :data:`BACKENDS`, ONNX with multi-scale or sliding-window
    inference (the graph has one fixed input size: whole images at the packed size, flipped or not), or a
    calibration count without INT8."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if calibration is not None and backend != "onnx-int8":
        raise ValueError(f"a calibration count is for the onnx-int8 backend only (backend {backend})")
    if backend != "torch" and (list(scales) != [1.0] or sliding):
        raise ValueError(f"backend {backend}: an exported graph has one input size, so it scores whole images at the "
                         f"packed size (flip allowed); drop --scales/--sliding (evaluate.scales, evaluate.sliding)")


class OnnxModel(nn.Module):
    """An ONNX file run in ONNX Runtime (CPU), returning ``{"out": logits}`` like the segmentor in eval mode.

    Batches are cut into the graph's own batch size; the images must have the graph's height and width."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        batch, _, h, w = graph_input.shape
        self.batch = batch if isinstance(batch, int) else 1
        self.size = (int(h), int(w))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"{self.path}: the graph takes {self.size[0]}×{self.size[1]} images, got "
                             f"{x.shape[-2]}×{x.shape[-1]}")  # fmt: skip
        images = x.detach().float().cpu().numpy()
        parts = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            missing = self.batch - len(chunk)
            if missing:  # the last, short batch: padded with copies and cut back
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)])
            (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(chunk)})
            parts.append(logits[: self.batch - missing])
        return {"out": torch.from_numpy(np.concatenate(parts)).to(x.device)}


def onnx_model(model: nn.Module, backend: str, *, size: tuple[int, int], folder: Path, data_dir: Path,
               calibration: int | None = None, log: Any = None) -> tuple[OnnxModel, dict[str, Any]]:  # fmt: skip
    """Export ``model`` to ``folder/model.onnx`` at ``size`` (verified against PyTorch), quantize it for
    ``onnx-int8`` (``calibration`` images of ``data_dir/train``), and open the graph to score; returns it with the
    export record."""
    from segmodels.engine.export import export_model
    from segmodels.engine.quantize import int8_path

    path = folder / "model.onnx"
    record = export_model(model, path, size=size, int8=backend == "onnx-int8", data_dir=data_dir,
                          calibration=calibration, log=log or (lambda _: None))  # fmt: skip
    return OnnxModel(int8_path(path) if backend == "onnx-int8" else path), record
