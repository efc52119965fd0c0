"""`make gpu-check`: the work done in ``gpu_check.py --worker`` child processes (so the parent never holds a CUDA
context): the environment's versions and devices, and the latency of every model and peer."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from gpu_check_base import COMPILE_MODE, COMPILE_NEEDS_S, EAGER_MODES, PEERS, SIZE


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

    run = run_config(cfg, name)
    backbone, head = catalog.arch_of(name)
    return build_model(backbone, head, num_classes=num_classes_of(run), output_stride=run.model.output_stride,
                       aux=catalog.head(head).cascade, pretrained=None, head_options=run.model.head_options)  # fmt: skip


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


def run_worker(args: argparse.Namespace) -> int:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.runs import json_safe

    def save(result: dict[str, Any]) -> None:
        write_text_atomic(args.worker_out, json.dumps(json_safe(result), default=str) + "\n")

    save(worker_latency(args, save) if args.worker == "latency" else worker_environment(args))
    return 0
