"""Inference shared by evaluation, prediction, export and the benchmark: whole-image or sliding-window
forward passes, test-time augmentation, mixed precision, the model a run folder or checkpoint holds, and
the device and library versions written beside every result.

Scores convention: with a single view (one scale, no flip) :func:`predict_scores` returns the model's
logits; with several views it returns the mean of their softmax probabilities (averaging
probabilities keeps one overconfident view from dominating, as in the multi-scale testing of
PSPNet, Zhao et al. 2017, and DeepLabV3, Chen et al. 2017). Either way the argmax over channels is the
prediction, and the scores may be bilinearly upsampled before it.
"""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segmodels.devices import cpu_name

__all__ = [
    "amp_dtype",
    "autocast",
    "environment",
    "forward_logits",
    "load_model",
    "model_name_from_path",
    "predict_scores",
    "recorded_run",
    "slide_windows",
]


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on the CPU and where the GPU supports it (no overflow, no scaler needed), float16 otherwise."""
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def amp_available(device: torch.device) -> bool:
    """Whether ``amp`` inference runs in reduced precision on ``device``: on a GPU, and on a CPU where bfloat16 is
    native (:func:`segmodels.devices.cpu_bf16_support`: AMX or AVX512-BF16); elsewhere it stays fp32, since
    emulated bf16 is slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        from segmodels.devices import cpu_bf16_support

        return cpu_bf16_support()[0]
    return False


def autocast(
    device: torch.device, enabled: bool, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """Mixed precision when ``enabled``: autocast on a CUDA device, bf16 autocast on the CPU (callers enable it
    there only where :func:`amp_available`); a no-op elsewhere."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype(device))
    return contextlib.nullcontext()


def slide_windows(
    height: int, width: int, window: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` covering an image; the last row/column is shifted back to end at the border.

    Window grid as in mmsegmentation's ``slide_inference``; a window larger than the image shrinks to it,
    so one window covering the image is exactly whole-image inference.
    """
    wh, ww = window
    sh, sw = stride
    if min(wh, ww, sh, sw) <= 0:
        raise ValueError(f"window {list(window)} and stride {list(stride)} must be positive [height, width]")
    rows = max(height - wh + sh - 1, 0) // sh + 1
    cols = max(width - ww + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + wh, height), min(c * sw + ww, width)
            boxes.append((max(y1 - wh, 0), y1, max(x1 - ww, 0), x1))
    return boxes


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return (out["out"] if isinstance(out, dict) else out).float()


def forward_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    sliding: bool = False,
    window: Sequence[int] = (512, 1024),
    stride: Sequence[int] = (341, 682),
) -> torch.Tensor:
    """Float32 logits (N, C, H, W) of normalised images (N, 3, H, W), whole-image or window by window.

    Overlapping windows average their logits.
    """
    if not sliding:
        return _out(model, images)
    n, _, h, w = images.shape
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=images.device)
    for y0, y1, x0, x1 in slide_windows(h, w, window, stride):
        logits = _out(model, images[:, :, y0:y1, x0:x1])
        if total is None:
            total = logits.new_zeros(n, logits.shape[1], h, w)
        total[:, :, y0:y1, x0:x1] += logits
        count[:, :, y0:y1, x0:x1] += 1
    assert total is not None
    return total / count


def _views(scales: Sequence[float], flip: bool) -> Iterator[tuple[float, bool]]:
    for scale in scales:
        yield scale, False
        if flip:
            yield scale, True


def predict_scores(
    model: nn.Module,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding: bool = False,
    window: Sequence[int] = (512, 1024),
    stride: Sequence[int] = (341, 682),
    amp: bool = False,
    out_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class scores (N, C, H', W') of normalised images, with optional multi-scale and flip test-time
    augmentation; ``out_size`` [height, width] (default: the input's) is the size they are upsampled to.

    The model must be in eval mode; gradients are off here. See the module docstring for what the
    scores are.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"test-time scales must be positive numbers, got {list(scales)}")
    h, w = images.shape[-2:]
    size = tuple(out_size) if out_size is not None else (h, w)
    views = list(_views(scales, flip))
    total: torch.Tensor | None = None
    with torch.inference_mode(), autocast(images.device, amp):
        for scale, mirrored in views:
            x = images
            if scale != 1.0:
                scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
                x = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
            if mirrored:
                x = x.flip(-1)
            logits = forward_logits(model, x, sliding=sliding, window=window, stride=stride)
            if mirrored:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            if len(views) == 1:
                return logits
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
    assert total is not None
    return total / len(views)


def model_name_from_path(path: str | Path) -> str | None:
    """The run folder a run lives in (``results/{exp}/{run}/seed{seed}``, ``{backbone}-{head}[_tag...]``), if any."""
    from segmodels.models.catalog import name_pattern

    pattern = re.compile(name_pattern())
    for part in reversed(Path(path).resolve().parts):
        if pattern.match(part):
            return part
    return None


def recorded_run(checkpoint: str | Path) -> str | None:
    """The run a final checkpoint was trained as: its ``run`` key, else ``{backbone}-{head}`` (checkpoints
    written before runs had names); None when the file is missing."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        return None
    try:
        meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated or foreign file: name it
        raise ValueError(f"{checkpoint}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or not ({"run"} <= set(meta) or {"backbone", "head"} <= set(meta)):
        raise ValueError(f"{checkpoint}: not a segbench checkpoint (no run name, backbone or head)")
    return str(meta.get("run") or f"{meta['backbone']}-{meta['head']}")


def load_model(
    checkpoint: str | Path,
    *,
    device: torch.device,
    expect_model: str | None = None,
    expect_num_classes: int | None = None,
) -> tuple[nn.Module, dict]:
    """The eval-mode model of a checkpoint and the checkpoint's metadata (everything but the weights).

    ``expect_model`` (a run name: its architecture, and a tagged name also the run the checkpoint records) and
    ``expect_num_classes`` are checked against the checkpoint before its weights are used; a mismatch raises
    ValueError naming the file. The file is read with ``weights_only=True``.
    """
    from segmodels.engine.checkpoint import load_model_from_checkpoint
    from segmodels.models.catalog import arch_of, variant_of

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    backbone, head = arch_of(expect_model) if expect_model else (None, None)
    if expect_model and variant_of(expect_model) and (recorded := recorded_run(checkpoint)) != expect_model:
        raise ValueError(f"{checkpoint}: checkpoint is of run '{recorded}', expected '{expect_model}'")
    model = load_model_from_checkpoint(
        checkpoint,
        device=device,
        expect_backbone=backbone,
        expect_head=head,
        expect_num_classes=expect_num_classes,
    )
    model.eval()
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    meta = {k: v for k, v in meta.items() if k != "model"}
    return model, meta


def environment(device: torch.device) -> dict[str, Any]:
    """The device and library versions written beside every timing and every score."""
    info: dict[str, Any] = {
        "type": device.type,
        "name": cpu_name(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(ImportError):
        import torchvision

        info["torchvision"] = torchvision.__version__
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            index=device.index,
            memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            float32_matmul_precision=torch.get_float32_matmul_precision(),  # "highest": no TF32 in fp32 matmuls
            driver=_driver_version(device.index or 0),
        )
        with warnings.catch_warnings():  # newer torch steers to fp32_precision; the flag still answers
            warnings.simplefilter("ignore")
            info["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def _driver_version(index: int) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
