"""Size, cost and forward latency of every model of the zoo, next to torchvision's DeepLabV3-ResNet50.

For each {backbone}-{head} (inference model: no auxiliary head, random weights): parameters (M),
GFLOPs of one forward at --flops-size, and the latency of one forward at --size (batch 1) after
warm-up, as median and p90 over --repeats runs, with the ratio to
``torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None)`` timed in the
same run on the same device, in turns with each model (so the ratio survives a shared, drifting machine).
Sizes are H W.

    python benchmarks/bench_models.py --repeats 3 --warmup 1
    python benchmarks/bench_models.py --device cuda --repeats 100 --warmup 20 --output results/zoo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from torch import nn

from segmodels.atomic import write_text_atomic
from segmodels.models import (
    build_model,
    catalog,
    count_flops,
    count_parameters,
    list_models,
    parse_model_name,
)

BASELINE = "deeplabv3_resnet50"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=[512, 1024],
        metavar=("H", "W"),
        help="input size of the timed forward (default: 512 1024)",
    )
    parser.add_argument(
        "--flops-size",
        nargs=2,
        type=int,
        default=[512, 1024],
        metavar=("H", "W"),
        help="input size for the FLOP count (default: 512 1024, the study's 1024×512)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing (default: 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="run models and inputs in channels_last")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these {backbone}-{head} models (default: all 20)",
    )
    parser.add_argument("--output", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or min(args.size + args.flops_size) < 1:
        parser.error("--repeats must be >= 1, --warmup >= 0 and sizes positive")
    for name in args.models or []:
        try:
            parse_model_name(name)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_forwards(
    models: list[nn.Module], x: torch.Tensor, *, warmup: int, repeats: int, warm: tuple[nn.Module, ...] = ()
) -> list[list[float]]:
    """Milliseconds of ``repeats`` forwards of each model, after ``warmup`` untimed ones, device synchronised.

    Models in ``warm`` have run on this input before and skip the warm-up.
    The models take turns within each repeat, so a slower or faster stretch of a shared machine
    affects them alike and their ratio holds even when the absolute times drift.
    """
    sync = _synchronizer(x.device)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            for _ in range(0 if any(model is m for m in warm) else warmup):
                model(x)
        sync()
        for _ in range(repeats):
            for model, series in zip(models, times, strict=True):
                start = time.perf_counter()
                model(x)
                sync()
                series.append((time.perf_counter() - start) * 1e3)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def measure(
    name: str,
    make: Callable[[], nn.Module],
    args: argparse.Namespace,
    *,
    model: nn.Module | None = None,
    baseline: nn.Module | None = None,
) -> tuple[dict, list[float]]:
    """Size and cost of ``make()``, and the latency of ``model`` (default ``make()`` on the device) timed in
    turns with ``baseline``; returns the row and the last model's times (the baseline's when given)."""
    with torch.device("meta"):  # FLOPs and parameters depend on shapes only
        meta_model = make()
    row: dict = {
        "model": name,
        "params_m": count_parameters(meta_model) / 1e6,
        "gflops": count_flops(meta_model, tuple(args.flops_size)) / 1e9,
    }
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if model is None:
        model = make().eval().to(device, memory_format=memory_format)
    x = torch.randn(1, 3, *args.size, device=device).contiguous(memory_format=memory_format)
    models = [model] if baseline is None else [model, baseline]
    warm = () if baseline is None else (baseline,)
    times = time_forwards(models, x, warmup=args.warmup, repeats=args.repeats, warm=warm)
    row.update(_stats(times[0]))
    if baseline is not None:
        row["ratio"] = row["median_ms"] / statistics.median(times[1])
    return row, times[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or list_models()
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "size": args.size,
        "flops_size": args.flops_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "channels_last": args.channels_last,
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()), file=sys.stderr, flush=True)

    def baseline() -> nn.Module:
        return torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19)

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    reference = baseline().eval().to(device, memory_format=memory_format)
    first, baseline_times = measure(BASELINE, baseline, args, model=reference)
    print(f"[1/{len(names) + 1}] {BASELINE}: {first['median_ms']:.1f} ms", file=sys.stderr, flush=True)
    rows = []
    for i, name in enumerate(names, start=2):
        backbone, head = parse_model_name(name)
        strides = catalog.backbone(backbone).output_strides  # 8 as the study's CNNs, else the backbone's own
        stride = 8 if 8 in strides else strides[-1]
        build = lambda b=backbone, h=head, s=stride: build_model(b, h, output_stride=s,  # noqa: E731
                                                                 aux=catalog.head(h).cascade)
        row, paired = measure(name, build, args, baseline=reference)
        rows.append(row)
        baseline_times += paired
        print(
            f"[{i}/{len(names) + 1}] {name}: {row['median_ms']:.1f} ms, x{row['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    # The baseline's row pools every run it made, alone at first and then in turns with each model.
    rows.insert(0, {**first, **_stats(baseline_times), "ratio": 1.0})

    h, w = args.size
    fh, fw = args.flops_size
    print(
        f"\n{env['device']}, {env['threads']} threads, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"latency at {h}x{w} (HxW) batch 1, {args.warmup} warm-up + {args.repeats} timed runs; "
        f"ratio: median over median of {BASELINE} timed in turns with the model"
    )
    print(f"\n| model | params (M) | GFLOPs @{fh}x{fw} | median (ms) | p90 (ms) | × {BASELINE} |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['params_m']:.2f} | {row['gflops']:.1f} | {row['median_ms']:.0f} | "
            f"{row['p90_ms']:.0f} | {row['ratio']:.2f} |"
        )
    if args.output:
        write_text_atomic(args.output, json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
