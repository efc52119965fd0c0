"""Our inference path against torchvision's DeepLabV3 at equal architecture, on one machine and one input.

Pairs (each built with random weights; latency does not depend on them):

* ``resnet50-aspp`` with DeepLabV3's head (rates 12, 24, 36 and image pooling, output stride 8) against
  ``torchvision.models.segmentation.deeplabv3_resnet50``: the same layers, parameters and FLOPs, but not the same
  function, since ours dilates every block of layer3/layer4 by 2/4 (PSPNet's and mmsegmentation's convention)
  where torchvision leaves the first block of each at the previous rate (1, then 2), hence the printed
  "max |diff|" with torchvision's weights;
* ``mobilenetv3-aspp`` with the same head at output stride 16 against ``deeplabv3_mobilenet_v3_large``
  (torchvision dilates MobileNetV3 to stride 16 only).

Both run in eval mode under ``torch.inference_mode`` at batch 1. Ours runs four ways (eager as trained; the
inference-ready model with BatchNorm folded and no auxiliary head; that in channels_last; its exported graph in
ONNX Runtime); the measurements are interleaved in a rotating order so that drift in a shared, noisy machine falls
on all alike. Printed: each median, ours eager / torchvision (parity is 1.0), and our fastest fp32 path /
torchvision, whose goal is ≤ 0.8. Usage::

    python benchmarks/bench_peers.py --size 512 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import segmentation

from segmodels.models import build_model, count_flops, count_parameters
from segmodels.models.heads import DEEPLABV3_OPTIONS

GOAL = 0.8  # our fastest fp32 path against torchvision's eager model, at equal architecture


def _pairs() -> dict[str, tuple[nn.Module, nn.Module]]:
    common = {"weights": None, "weights_backbone": None, "aux_loss": False, "num_classes": 19}
    return {
        "resnet50 DeepLabV3 (OS 8)": (
            build_model("resnet50", "aspp", output_stride=8, head_options=DEEPLABV3_OPTIONS),
            segmentation.deeplabv3_resnet50(**common),
        ),
        "mobilenetv3-large DeepLabV3 (OS 16)": (
            build_model("mobilenetv3", "aspp", output_stride=16, head_options=DEEPLABV3_OPTIONS),
            segmentation.deeplabv3_mobilenet_v3_large(**common),
        ),
    }


def _inference_params(model: nn.Module) -> int:
    aux = getattr(model, "aux_head", None) or getattr(model, "aux_classifier", None)
    return count_parameters(model) - (count_parameters(aux) if aux is not None else 0)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def our_paths(ours: nn.Module, x: torch.Tensor, workdir: str, onnx: bool = True) -> dict[str, Callable[[], Any]]:
    """Our ways to run the same network: eager as trained, the inference-ready model (BatchNorm folded, no
    auxiliary head; also channels_last), and the exported graph in ONNX Runtime (its CPU or CUDA provider)."""
    from segmodels.models.fold import inference_model

    ready = inference_model(ours).to(x.device)
    last = copy.deepcopy(ready).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    paths: dict[str, Callable[[], Any]] = {
        "eager": lambda: ours(x)["out"],
        "folded": lambda: ready(x)["out"],
        "folded+channels_last": lambda: last(x_last)["out"],
    }
    if onnx:
        from segmodels.engine.export import onnx_runner

        run, provider = onnx_runner(ready, x, workdir, device=x.device)
        paths[f"onnxruntime ({provider.removesuffix('ExecutionProvider')})"] = run
    return paths


def same_computation(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float | None:
    """Max |difference| of the two outputs once ours takes torchvision's weights (matched in order by shape).

    0 means the two networks compute the same function; None means the weights do not line up.
    """
    mine = [k for k in ours.state_dict() if not k.startswith("aux_head.")]
    src = list(theirs.state_dict().values())
    own = ours.state_dict()
    if len(mine) != len(src) or any(own[k].shape != v.shape for k, v in zip(mine, src, strict=True)):
        return None
    twin = copy.deepcopy(ours)
    twin.load_state_dict(dict(zip(mine, src, strict=True)), strict=False)
    with torch.inference_mode():
        return float((twin.eval()(x)["out"] - theirs.eval()(x)["out"]).abs().max())


def compare(paths: dict[str, Callable[[], Any]], theirs: nn.Module, x: torch.Tensor, repeats: int,
            warmup: int) -> dict[str, Any]:  # fmt: skip
    """Median ms of each of our paths and of torchvision's eager model, interleaved: every repeat runs all of
    them, in an order that rotates, so that drift in a shared machine falls on all alike."""
    device = x.device
    theirs = theirs.eval().to(device)
    runs = {**paths, "torchvision": lambda: theirs(x)["out"]}
    for _ in range(warmup):
        for run in runs.values():
            _timed(run, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(_timed(runs[name], device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    fastest = min(paths, key=lambda name: medians[name])
    return {"medians": medians, "fastest": fastest, "ratio": medians[fastest] / medians["torchvision"],
            "eager_ratio": medians["eager"] / medians["torchvision"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"), help="input size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per model first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    h, w = args.size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"input 1x3x{h}x{w}, {args.repeats} interleaved repeats after {args.warmup} warm-up, {name}, "
          f"torch {torch.__version__}")  # fmt: skip
    worst = 0.0
    for label, (ours, theirs) in _pairs().items():
        ours.eval().to(device)
        p_ours, p_theirs = _inference_params(ours), _inference_params(theirs)
        f_ours, f_theirs = count_flops(ours, (h, w)), count_flops(theirs, (h, w))
        diff = same_computation(ours, theirs, x[..., : h // 4, : w // 4].cpu())
        with tempfile.TemporaryDirectory() as workdir:
            r = compare(our_paths(ours, x, workdir, onnx=not args.no_onnx), theirs, x, args.repeats, args.warmup)
        worst = max(worst, r["ratio"])
        same = "weights do not line up" if diff is None else f"max |diff| with torchvision's weights {diff:.2g}"
        times = ", ".join(f"{name} {ms:.1f}" for name, ms in r["medians"].items())
        print(
            f"{label} (median ms): {times}\n"
            f"    ours eager / torchvision {r['eager_ratio']:.3f}; our fastest fp32 path ({r['fastest']}) / "
            f"torchvision {r['ratio']:.3f} (goal <= {GOAL})\n"
            f"    params {p_ours / 1e6:.2f}M vs {p_theirs / 1e6:.2f}M, GFLOPs {f_ours / 1e9:.1f} vs {f_theirs / 1e9:.1f}; "
            f"{same}"
        )
        del ours, theirs
    print(f"worst ratio of our fastest fp32 path to torchvision's eager model: {worst:.3f} "
          f"({'meets' if worst <= GOAL else 'misses'} the goal of {GOAL})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
