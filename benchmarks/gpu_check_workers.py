"""`make gpu-check`: the work done in ``gpu_check.py --worker`` child processes (so the parent never holds a CUDA
context): the environment's versions and devices, the latency of every model and peer, and the training step's
peak memory and time per micro-batch with the ``train.micro_batch: auto`` search."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from gpu_check_base import (
    COMPILE_MODE,
    COMPILE_NEEDS_S,
    EAGER_MODES,
    MICRO_NEEDS_S,
    MICRO_STEPS,
    MICRO_WARMUP,
    PEERS,
    SIZE,
    TRAIN_BATCH,
    TRAIN_MODEL,
)


def _driver_api_version() -> str | None:
    """The CUDA driver API version libcuda reports (e.g. 12.8): the driver fact left when nvidia-smi is absent."""
    import ctypes

    try:
        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    except OSError:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def worker_environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torchvision

    nccl = nvml_driver = None
    with contextlib.suppress(Exception):
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    with contextlib.suppress(Exception):  # pynvml is optional
        import pynvml

        pynvml.nvmlInit()
        nvml_driver = pynvml.nvmlSystemGetDriverVersion()
        nvml_driver = nvml_driver.decode() if isinstance(nvml_driver, bytes) else nvml_driver
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1)})  # fmt: skip
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nccl": nccl, "device_count": torch.cuda.device_count(),
            "driver_nvml": nvml_driver, "driver_api": _driver_api_version(), "devices": devices,
            "python": sys.version.split()[0]}  # fmt: skip


def _build(name: str, cfg: Any) -> Any:
    from segmodels.engine.run import num_classes_of

    if name in PEERS:
        from torchvision.models import segmentation

        return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes_of(cfg))
    from segmodels.models import build_model, catalog
    from segmodels.study.matrix import run_config
    from segmodels.study.schema import effective_norm

    run = run_config(cfg, name)
    backbone, head = catalog.arch_of(name)
    return build_model(backbone, head, num_classes=num_classes_of(run), output_stride=run.model.output_stride,
                       aux=catalog.head(head).cascade, pretrained=None, head_options=run.model.head_options,
                       norm=effective_norm(run))  # fmt: skip


def worker_latency(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """Eager modes of every model and peer first, then the compiled mode of --compile-models while time is left;
    ``save`` is called after each model so a kill at the cap keeps what was timed."""
    import torch

    from segmodels.engine.benchmark import benchmark_model
    from segmodels.study.config import load_config
    from segmodels.study.matrix import run_names

    cfg = load_config(args.config)
    result: dict[str, Any] = {"models": {}, "amp_dtype": cfg.benchmark.amp_dtype}
    work = [(n, EAGER_MODES) for n in [*run_names(cfg), *PEERS]] + [(n, (COMPILE_MODE,)) for n in args.compile_models]
    for name, modes in work:
        entry = result["models"].setdefault(name, {"modes": {}})
        need = COMPILE_NEEDS_S if modes == (COMPILE_MODE,) else 5
        if args.deadline - time.time() < need:
            reason = f"not started: under {need} s of the section's cap left"
            entry["modes"].update({m: {"status": "skipped", "reason": reason} for m in modes})
            continue
        print(f"{name}: {', '.join(modes)}", flush=True)  # the log shows where a kill at the cap fell
        try:
            timed = benchmark_model(_build(name, cfg), size=SIZE, batch_size=1, modes=list(modes), warmup=args.warmup,
                                    repeats=args.repeats, device="cuda", amp_dtype=cfg.benchmark.amp_dtype, log=None)
            entry.update(params_m=timed["params_m"], gflops=timed["gflops"])
            entry["modes"].update(timed["modes"])
            result.setdefault("device", timed["device"])
        except Exception as exc:  # eager inference failing is what this check is for: record it, time the rest
            reason = f"{type(exc).__name__}: {exc}"[:400]
            entry["modes"].update({m: {"status": "error", "reason": reason} for m in modes})
        torch.cuda.empty_cache()
        save(result)
    return result


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def _free(device: Any) -> None:
    """Give the caching allocator's free blocks back, so the next variant's peak is its own."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time_steps(step: Any, images: Any, labels: Any, device: Any, warmup: int, steps: int) -> dict[str, Any]:
    """``warmup`` untimed then ``steps`` timed optimizer steps of ``step`` (its accumulation as set); the peak
    allocated memory of the warm-up (cuDNN's algorithm search included) and of the timed steps (the steady state)."""
    import torch

    from segmodels.engine.bench_train import synchronize, time_steps

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(images, labels, 1e-4)
    synchronize(device)
    warm_peak = torch.cuda.max_memory_allocated(device) if cuda and warmup else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step_s, loss_mean = time_steps(step, images, labels, device, steps)
    return {"step_s": step_s, "images_per_s": images.shape[0] / step_s, "loss": loss_mean,
            "peak_allocated_mib": _mib(torch.cuda.max_memory_allocated(device)) if cuda else None,
            "peak_reserved_mib": _mib(torch.cuda.max_memory_reserved(device)) if cuda else None,
            "peak_warmup_mib": _mib(warm_peak)}  # fmt: skip


def measure_micro_batches(cfg: Any, model_name: str, device: Any, *, crop: tuple[int, int], batch: int,
                          micros: tuple[int, ...] | list[int], warmup: int, steps: int, deadline: float,
                          save: Any = None, probe: Any = None,
                          total_memory: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The training step of ``model_name`` (bench-train's: ``cfg``'s speed features on, one model, random data on
    ``device``) with its batch of ``batch`` images run as each micro-batch of ``micros`` (``train.accumulate`` =
    batch / micro-batch): seconds per optimizer step and peak allocated memory; then ``train.micro_batch: auto``
    (:func:`segmodels.engine.micro_batch.find_micro_batch`, ``probe`` and ``total_memory`` passed on): the micro-batch
    it keeps and what it probed. An out-of-memory at one micro-batch is recorded and the next one tried; ``save`` is
    called after each, so a kill at the cap keeps what was measured."""
    import torch

    from segmodels.engine.bench_train import build_step
    from segmodels.engine.micro_batch import HEADROOM, OutOfMemory, accumulation, find_micro_batch, is_out_of_memory
    from segmodels.engine.run import num_classes_of
    from segmodels.engine.step import speed_settings

    save = save or (lambda result: None)
    cuda = device.type == "cuda"
    if total_memory is None and cuda:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    speed = speed_settings(cfg.train, device)
    speed.apply_backend_flags()
    result: dict[str, Any] = {
        "model": model_name, "crop": list(crop), "batch": batch, "warmup": warmup, "steps": steps,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "memory_gib": round(total_memory / 2**30, 2) if total_memory else None, "headroom": HEADROOM,
        "amp_dtype": str(speed.amp_dtype).removeprefix("torch.") if speed.amp_dtype else None,
        "channels_last": speed.channels_last, "rows": [],
        "auto": {"status": "skipped", "reason": "not reached"}}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *crop, generator=gen).to(device)
    labels = torch.randint(0, num_classes_of(cfg), (batch, *crop), generator=gen).to(device)
    step, images, labels = build_step(cfg, model_name, speed, (images, labels), device)
    for micro in micros:
        acc = accumulation(micro, 1, batch)
        assert acc is not None
        row: dict[str, Any] = {"micro_batch": acc.micro_batch, "accumulate": acc.accumulate}
        result["rows"].append(row)
        if deadline - time.time() < MICRO_NEEDS_S:
            row.update(status="skipped", reason=f"not started: under {MICRO_NEEDS_S} s of the part's cap left")
            continue
        print(f"micro-batch {acc.micro_batch} x {acc.accumulate}", flush=True)  # where a kill at the cap fell
        step.accumulate = acc.accumulate
        _free(device)
        try:
            row.update(_time_steps(step, images, labels, device, warmup, steps), status="ok")
        except Exception as exc:  # out of memory is an answer here: record it, try the next micro-batch
            oom = is_out_of_memory(exc)
            row.update(status="out of memory" if oom else "error", reason=f"{type(exc).__name__}: {exc}"[:400])
        step.optimizer.zero_grad(set_to_none=True)  # a step that failed midway leaves its micro-batches' gradients
        _free(device)
        save(result)
    if deadline - time.time() < MICRO_NEEDS_S:
        result["auto"] = {"status": "skipped", "reason": f"not started: under {MICRO_NEEDS_S} s of the part's cap left"}
        return result
    from segmodels.engine import micro_batch

    tried: list[dict[str, Any]] = []

    def recording(model: Any, micro: int, *rest: Any) -> None:  # find_micro_batch's probe, noting each try
        entry: dict[str, Any] = {"micro_batch": micro, "outcome": "ran"}
        tried.append(entry)
        try:
            (probe or micro_batch._probe)(model, micro, *rest)
        except BaseException as exc:
            entry["outcome"] = "out of memory" if is_out_of_memory(exc) else type(exc).__name__
            raise
        if cuda:
            entry["peak_allocated_mib"] = _mib(torch.cuda.max_memory_allocated(device))

    print("train.micro_batch auto", flush=True)
    step.accumulate = 1
    start = time.perf_counter()
    try:
        found = find_micro_batch(step.model, batch, crop, device, amp_dtype=speed.amp_dtype,
                                 channels_last=speed.channels_last, probe=recording,
                                 total_memory=total_memory)  # fmt: skip
        auto: dict[str, Any] = {"status": "ok", "micro_batch": found.micro_batch, "accumulate": found.accumulate}
    except OutOfMemory as exc:
        auto = {"status": "out of memory", "reason": str(exc)[:400]}
    except Exception as exc:
        auto = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:400]}
    auto.update(tried=tried, seconds=round(time.perf_counter() - start, 2))
    result["auto"] = auto
    _free(device)
    return result


def worker_micro_batch(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """bench-train's model, batch, crop and built-in config on the GPU, per micro-batch of --micro-batches."""
    import torch

    from segmodels.study.config import StudyConfig
    from segmodels.study.matrix import run_config

    cfg = run_config(StudyConfig(), TRAIN_MODEL)  # what `segmodels bench-train` without --config trains
    return measure_micro_batches(cfg, TRAIN_MODEL, torch.device("cuda"), crop=SIZE, batch=TRAIN_BATCH,
                                 micros=args.micro_batches, warmup=MICRO_WARMUP, steps=MICRO_STEPS,
                                 deadline=args.deadline, save=save)  # fmt: skip


def run_worker(args: argparse.Namespace) -> int:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.runs import json_safe

    def save(result: dict[str, Any]) -> None:
        write_text_atomic(args.worker_out, json.dumps(json_safe(result), default=str) + "\n")

    if args.worker == "latency":
        save(worker_latency(args, save))
    elif args.worker == "micro_batch":
        save(worker_micro_batch(args, save))
    else:
        save(worker_environment(args))
    return 0
