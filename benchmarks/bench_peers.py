"""Our inference path against torchvision's DeepLabV3 at equal architecture, on one machine and one input.

Pairs (each built with random weights; latency does not depend on them):

* ``resnet50-aspp`` with DeepLabV3's head (rates 12, 24, 36 and image pooling, output stride 8) against
  ``torchvision.models.segmentation.deeplabv3_resnet50``;
* ``mobilenetv3-aspp`` with the same head at output stride 16 against ``deeplabv3_mobilenet_v3_large``
  (torchvision dilates MobileNetV3 to stride 16 only).

Both run in eval mode under ``torch.inference_mode`` at batch 1. The measurements are interleaved (ours,
theirs, theirs, ours, …) so that drift in a shared, noisy machine falls on both alike; the ratio of medians
ours / theirs should be ≤ 1.0. Usage::

    python benchmarks/bench_peers.py --size 512 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn
from torchvision.models import segmentation

from segmodels.models import build_model, count_flops, count_parameters
from segmodels.models.heads import DEEPLABV3_OPTIONS


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


def _once(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(x)["out"]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = (time.perf_counter() - start) * 1000.0
    assert out.shape[-2:] == x.shape[-2:]
    return elapsed


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


def compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    device = x.device
    ours, theirs = ours.eval().to(device), theirs.eval().to(device)
    for _ in range(warmup):
        _once(ours, x, device)
        _once(theirs, x, device)
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        # ABBA order: a linear drift in machine speed costs both sides the same.
        if i % 2 == 0:
            a.append(_once(ours, x, device))
            b.append(_once(theirs, x, device))
        else:
            b.append(_once(theirs, x, device))
            a.append(_once(ours, x, device))
    return {
        "ours_ms": statistics.median(a),
        "theirs_ms": statistics.median(b),
        # Adjacent passes share the machine's momentary load: their ratios are steadier than the medians'.
        "paired_ratio": statistics.median(ai / bi for ai, bi in zip(a, b, strict=True)),
        # Interference from other processes only ever adds time: the fastest passes are the least disturbed.
        "min_ratio": min(a) / min(b),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"), help="input size")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per model (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per model first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
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
        p_ours, p_theirs = _inference_params(ours), _inference_params(theirs)
        f_ours, f_theirs = count_flops(ours, (h, w)), count_flops(theirs, (h, w))
        diff = same_computation(ours, theirs, x[..., : h // 4, : w // 4].cpu())
        r = compare(ours, theirs, x, args.repeats, args.warmup)
        ratio = r["ours_ms"] / r["theirs_ms"]
        worst = max(worst, r["paired_ratio"])
        same = "weights do not line up" if diff is None else f"max |diff| with torchvision's weights {diff:.2g}"
        print(
            f"{label}: ours {r['ours_ms']:.1f} ms, torchvision {r['theirs_ms']:.1f} ms, ratio of medians {ratio:.3f}, "
            f"median paired ratio {r['paired_ratio']:.3f}, ratio of minima {r['min_ratio']:.3f}\n"
            f"    params {p_ours / 1e6:.2f}M vs {p_theirs / 1e6:.2f}M, GFLOPs {f_ours / 1e9:.1f} vs {f_theirs / 1e9:.1f}; "
            f"{same}"
        )
        del ours, theirs
    print(f"worst median paired ratio ours/torchvision: {worst:.3f} ({'ok' if worst <= 1.0 else 'SLOWER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
