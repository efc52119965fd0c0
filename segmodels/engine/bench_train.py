"""``segmodels bench-train``: training throughput with the speed features on and off, in one process.

Both variants run the training step of :mod:`segmodels.engine.step` (same model, same
initial weights, same batches) on random data already on the device, so the numbers measure
the step itself and not the data pipeline. "Off" means float32, contiguous (NCHW) tensors, no
cudnn.benchmark/TF32, a per-tensor SGD and a loss read back after every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from typing import Any

import torch

from segmodels.engine.run import num_classes_of
from segmodels.engine.step import SpeedSettings, Stepper, build_optimizer, speed_settings
from segmodels.study.config import StudyConfig, load_config
from segmodels.study.schema import effective_norm

__all__ = ["bench_train", "build_step", "main", "synchronize", "time_steps"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(cfg: StudyConfig, model_name: str, speed: SpeedSettings, batch: tuple, device: torch.device):
    from segmodels.models import build_model
    from segmodels.models.catalog import arch_of

    backbone, head = arch_of(model_name)
    torch.manual_seed(0)  # both variants start from the same weights
    model = build_model(backbone, head, num_classes=num_classes_of(cfg), output_stride=cfg.model.output_stride,
                        aux=cfg.model.aux, pretrained=None, bn_momentum=cfg.model.bn_momentum,
                        head_options=cfg.model.head_options, head_dropout=cfg.model.head_dropout,
                        norm=effective_norm(cfg)).to(device).train()
    images, labels = batch
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train, fused=speed.fused_optimizer, foreach=speed.foreach)
    scaler = torch.amp.GradScaler(device.type, enabled=speed.amp_dtype == torch.float16)
    net = torch.compile(model) if speed.compile else model
    step = Stepper(net, optimizer, scaler, cfg.train, amp_dtype=speed.amp_dtype, device_type=device.type)
    return step, images, labels


def time_steps(step: Stepper, images: torch.Tensor, labels: torch.Tensor, device: torch.device, steps: int, *,
               sync_every_step: bool = False) -> tuple[float, float]:  # fmt: skip
    """Seconds per optimizer step of ``step`` over ``steps`` steps on one batch, and their mean loss. The losses
    are summed on the device and read once, after the last step; ``sync_every_step`` reads each one back instead
    (what a training loop that logs every step pays)."""
    synchronize(device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    read = 0.0
    for _ in range(steps):
        loss, _ = step(images, labels, 1e-4)
        if sync_every_step:
            read += float(loss.item())
        else:
            total += loss.float()
    mean = (read + float(total.item())) / steps  # waits for the last step
    synchronize(device)
    return (time.perf_counter() - start) / steps, mean


def _timed(speed: SpeedSettings, setup: tuple, device: torch.device, iters: int) -> float:
    """images/s over ``iters`` steps; the "off" variant reads the loss after every step."""
    step, images, labels = setup
    speed.apply_backend_flags()
    seconds, _ = time_steps(step, images, labels, device, iters, sync_every_step=speed.sync_every_step)
    return images.shape[0] / seconds


def bench_train(cfg: StudyConfig, model_name: str, *, device: torch.device, crop: tuple[int, int], batch_size: int,
                iters: int = 20, warmup: int = 5, rounds: int = 3) -> dict[str, Any]:
    """images/s of the training step with the config's speed features (``on``) and without (``off``).

    Both variants are built first, warmed up, then timed in alternating rounds (off, on, off, on, …)
    so that a machine busy with other work slows both alike; the median round is reported.
    """
    if iters < 1 or warmup < 0 or batch_size < 1 or rounds < 1:
        raise ValueError(f"need iters, batch, rounds >= 1 and warmup >= 0; got {iters}, {batch_size}, {rounds}, "
                         f"{warmup}")
    gen = torch.Generator().manual_seed(0)
    h, w = crop
    images = torch.randn(batch_size, 3, h, w, generator=gen).to(device)
    labels = torch.randint(0, num_classes_of(cfg), (batch_size, h, w), generator=gen).to(device)
    settings = {"off": speed_settings(cfg.train, device, off=True), "on": speed_settings(cfg.train, device)}
    setups = {name: build_step(cfg, model_name, s, (images, labels), device) for name, s in settings.items()}
    for name, s in settings.items():
        if warmup:
            _timed(s, setups[name], device, warmup)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, s in settings.items():
            times[name].append(_timed(s, setups[name], device, iters))
    rates = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": model_name, "crop": [h, w], "batch_size": batch_size, "iters": iters, "warmup": warmup,
        "rounds": rounds, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "images_per_s": rates, "rounds_images_per_s": times, "speedup": rates["on"] / rates["off"],
        "settings": {k: {f: str(v) for f, v in asdict(s).items()} for k, s in settings.items()},
    }


def _describe(s: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def main(args: argparse.Namespace) -> int:
    from segmodels.devices import resolve_device
    from segmodels.study.matrix import run_config

    cfg = run_config(load_config(args.config) if args.config else StudyConfig(), args.model)
    if args.compile:
        cfg.train.compile = True
    if args.output_stride:
        cfg.model.output_stride = args.output_stride
    crop = tuple(args.crop) if args.crop else tuple(cfg.train.crop_size)
    device = resolve_device(args.device)
    result = bench_train(cfg, args.model, device=device, crop=crop, batch_size=args.batch or cfg.train.batch_size,
                         iters=args.iters, warmup=args.warmup, rounds=args.rounds)
    rates = result["images_per_s"]
    print(f"bench-train {args.model}, crop {crop[0]}x{crop[1]}, batch {result['batch_size']}, median of {args.rounds} "
          f"rounds of {args.iters} iterations "
          f"on {result['device']} (torch {result['torch']}, {result['threads']} threads)")
    print(f"  speed features on : {rates['on']:9.2f} images/s  [{_describe(result['settings']['on'])}]")
    print(f"  speed features off: {rates['off']:9.2f} images/s  [{_describe(result['settings']['off'])}]")
    print(f"  ratio on/off      : {result['speedup']:9.3f}x")
    if args.json:
        from segmodels.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return 0
