"""A short timed calibration of one run on this device, for ``segmodels plan`` (:mod:`segmodels.study.plan`).

Training: the run's optimisation step (:class:`segmodels.engine.step.Stepper`, with the config's speed features,
precision, per-GPU batch, crop and micro-batches, ``train.micro_batch: auto`` searched as training would) on random
data already on the device, a few warm-up steps, then ``steps`` timed ones; the seconds per step and, on a GPU,
the peak memory. Evaluation: the forward pass of one validation image at the packed size, with the upsampling to the
raw labels' size when the protocol scores at full resolution, timed the same way. Random weights: the time of a
step does not depend on them.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from segmodels.engine.bench_train import build_step, synchronize, time_steps
from segmodels.engine.micro_batch import accumulation, check_micro_batch, find_micro_batch
from segmodels.engine.run import num_classes_of
from segmodels.engine.step import speed_settings
from segmodels.study.config import StudyConfig

__all__ = ["calibrate_run"]


def calibrate_run(cfg: StudyConfig, model_name: str, device: torch.device, *, steps: int = 20, warmup: int = 3,
                  raw_size: tuple[int, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Seconds per training step and per evaluated image of run ``model_name`` (its effective ``cfg``) on
    ``device``; ``raw_size``: the raw labels' [height, width] the evaluation upsamples to (full resolution)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"calibration needs at least one timed step, got {steps} (warm-up {warmup})")
    t = cfg.train
    speed = speed_settings(t, device)
    speed.apply_backend_flags()
    gen = torch.Generator().manual_seed(0)
    h, w = t.crop_size
    classes = num_classes_of(cfg)
    images = torch.randn(t.batch_size, 3, h, w, generator=gen).to(device)
    labels = torch.randint(0, classes, (t.batch_size, h, w), generator=gen).to(device)
    step, images, labels = build_step(cfg, model_name, speed, (images, labels), device)
    acc = accumulation(t.micro_batch, t.accumulate, t.batch_size)
    if acc is None:  # train.micro_batch: auto, as training would find it
        acc = find_micro_batch(step.model, t.batch_size, (h, w), device, amp_dtype=speed.amp_dtype,
                               channels_last=speed.channels_last)  # fmt: skip
    else:
        check_micro_batch(step.model, acc, model_name)  # what its training would refuse
    step.accumulate = acc.accumulate
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(images, labels, 1e-4)
    step_s, _ = time_steps(step, images, labels, device, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    eval_s = _eval_image_seconds(step.model, cfg, device, raw_size, speed.channels_last)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"model": model_name, "step_s": step_s, "steps": steps, "peak_gb": peak, "eval_image_s": eval_s,
            "micro_batch": acc.micro_batch, "accumulate": acc.accumulate, "device": name}  # fmt: skip


def _eval_image_seconds(model: torch.nn.Module, cfg: StudyConfig, device: torch.device,
                        raw_size: tuple[int, int] | None, channels_last: bool, repeats: int = 3) -> float:  # fmt: skip
    """Seconds to score one validation image: the forward pass at the packed size (and the upsampling to
    ``raw_size``), median of ``repeats`` after one warm-up."""
    from segmodels.engine.inference import predict_scores

    model.eval()
    x = torch.randn(1, 3, *cfg.data.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        scores = predict_scores(model, x, scales=cfg.evaluate.scales, flip=cfg.evaluate.flip,
                                sliding=cfg.evaluate.sliding, window=cfg.evaluate.window, stride=cfg.evaluate.stride)
        if raw_size is not None and cfg.evaluate.full_resolution:
            scores = F.interpolate(scores, size=raw_size, mode="bilinear", align_corners=False)
        scores.argmax(1)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    model.train()
    return sorted(times)[len(times) // 2]
