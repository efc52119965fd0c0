"""Inference latency of one model: batch 1 at 1024×512 by default, one timing per precision mode.

Each mode is timed on its own copy of the model, after a warm-up, with the device synchronised around
every repetition (CUDA events on a GPU, ``perf_counter`` on the CPU), so one number always means one
complete forward pass of one input batch: a latency, not a pipelined throughput. Reported per mode: median,
p90, mean, std, min and max in ms, FPS (images per second: batch size / median) and peak memory; beside
them parameters, GFLOPs (of one image), and the device, driver and library versions.

Modes (``benchmark.modes``): ``fp32`` or ``amp`` (autocast to ``benchmark.amp_dtype`` on a GPU, to bfloat16 on
the CPU), each optionally with ``+channels_last``, ``+compile`` (torch.compile), ``+cudagraphs`` (one captured
graph replayed; with ``+compile`` the ``reduce-overhead`` mode instead) and ``+fold`` (the inference-ready model,
:func:`segmodels.models.fold.inference_model`: BatchNorm folded into the convolutions); ``onnx`` times the
exported (folded) model in onnxruntime, ``onnx-int8`` its INT8 quantization (:mod:`segmodels.engine.quantize`,
calibrated on the timed input: the ranges change no operator, so not the time; 7-bit weights on a CPU without
VNNI, as the deployment's graph). On the CPU, ``amp`` is timed only where bf16 runs natively
(:func:`segmodels.devices.cpu_bf16_support`); else it, like ``cudagraphs`` there, is reported as skipped with the
reason. latency.json says per mode whether the folded model was timed (and for INT8
how it was quantized), and records the CPU's name, instruction sets, native bf16 and VNNI.
"""

from __future__ import annotations

import contextlib
import copy
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmodels.devices import cpu_bf16_support, cpu_flags, cpu_int8_vnni, cpu_name
from segmodels.engine.quantize import int8_settings
from segmodels.engine.run import open_run
from segmodels.models.fold import fold_report, inference_model
from segmodels.study import runs
from segmodels.study.runs import primary_mode

__all__ = [
    "Mode",
    "benchmark_model",
    "benchmark_run",
    "miou_per_speed",
    "parse_mode",
    "primary_mode",
    "time_fn",
]

_PRECISIONS = ("fp32", "amp")
_FLAGS = ("channels_last", "compile", "cudagraphs", "fold")
_ONNX = {"onnx": False, "onnx-int8": True}  # mode name → INT8


@dataclass(frozen=True)
class Mode:
    name: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudagraphs: bool = False
    fold: bool = False
    onnx: bool = False
    int8: bool = False


def parse_mode(name: str) -> Mode:
    """``"amp+channels_last"`` → Mode(precision="amp", channels_last=True); ValueError names a bad token."""
    if name in _ONNX:
        return Mode(name, onnx=True, int8=_ONNX[name])
    precision, flags = "fp32", set()
    for token in name.split("+"):
        if token in _PRECISIONS:
            precision = token
        elif token in _FLAGS:
            flags.add(token)
        else:
            raise ValueError(
                f"benchmark.modes: unknown mode {name!r} (token {token!r}); use fp32 or amp, optionally joined "
                f"with +{' +'.join(_FLAGS)}, or {' or '.join(_ONNX)}"
            )
    return Mode(name, precision, **{f: f in flags for f in _FLAGS})


def _skip_reason(mode: Mode, device: torch.device, amp_dtype: str) -> str | None:
    if device.type != "cuda":
        if mode.precision == "amp":
            native, why = cpu_bf16_support()
            if not native:  # fp16 has no fast CPU kernels either, so there is nothing worth timing
                return f"amp on the CPU is bf16 autocast, and {why}"
        if mode.cudagraphs:
            return "CUDA graphs need a CUDA device"
    elif mode.precision == "amp" and amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support; set benchmark.amp_dtype: float16"
    if mode.onnx:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install segmodels[export])"
        if mode.int8 and device.type == "cuda":  # (a missing onnxruntime.quantization fails the mode, with why)
            return "INT8 through onnxruntime is timed on the CPU: its CUDA provider has no int8 convolutions"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here; its CPU time would not compare with the GPU modes"
    return None


def time_fn(fn: Callable[[], Any], *, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` calls, the device synchronised each time."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _stats(times: list[float], batch_size: int) -> dict[str, Any]:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * (len(ordered) - 1))))]
    return {
        "median_ms": median,
        "p90_ms": p90,
        "mean_ms": statistics.fmean(ordered),
        "std_ms": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "fps": batch_size * 1000.0 / median if median > 0 else None,
        "repeats": len(ordered),
    }


def _torch_forward(model: nn.Module, x: torch.Tensor, mode: Mode, device: torch.device, amp_dtype: torch.dtype):
    """A no-argument callable running one forward pass of ``mode``."""
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if mode.compile:
        model = torch.compile(model, mode="reduce-overhead" if mode.cudagraphs else "default")
    use_amp = mode.precision == "amp"
    amp_dtype = amp_dtype if device.type == "cuda" else torch.bfloat16

    def forward() -> torch.Tensor:
        # cache_enabled=False: autocast's weight cache must not outlive a CUDA graph capture.
        amp = (torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False) if use_amp
               else contextlib.nullcontext())  # fmt: skip
        with torch.inference_mode(), amp:
            return model(x)["out"]

    if not (mode.cudagraphs and not mode.compile):
        return forward
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # let cuDNN pick its algorithms before the capture
            forward()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _time_mode(model, x, mode, *, device, dtype, onnx_opset, warmup, repeats, entry) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        if mode.onnx:
            from segmodels.engine.export import onnx_runner

            fn, provider = onnx_runner(copy.deepcopy(model), x, Path(tmp), device=device, opset=onnx_opset,
                                       int8=mode.int8)  # fmt: skip
            entry["provider"] = provider
            entry["folded"] = True  # export_onnx exports the inference-ready model
            if mode.int8:  # as quantize_on_inputs chose on this CPU: 7-bit weights without VNNI
                int8 = int8_settings()
                entry["quantization"] = f"QDQ: {int8['weights']}, uint8 activations, calibrated on the input"
                entry["reduce_range"] = int8["reduce_range"]
            if device.type == "cuda":
                entry["note"] = "input and output in host memory: the copies to and from the GPU are timed too"
        else:
            timed = inference_model(model) if mode.fold else copy.deepcopy(model)
            fn = _torch_forward(timed.to(device), x.to(device), mode, device, dtype)
            entry["folded"] = mode.fold
            amp = dtype if device.type == "cuda" else torch.bfloat16
            entry["amp_dtype"] = str(amp).removeprefix("torch.") if mode.precision == "amp" else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        return time_fn(fn, device=device, warmup=max(warmup, 3 if mode.compile else 0), repeats=repeats)


def benchmark_model(
    model: nn.Module,
    *,
    size: tuple[int, int] = (512, 1024),
    batch_size: int = 1,
    modes: list[str] | tuple[str, ...] = ("fp32",),
    warmup: int = 20,
    repeats: int = 100,
    device: torch.device | str = "cpu",
    amp_dtype: str = "float16",
    onnx_opset: int = 18,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Time ``model`` in each mode; returns {"modes": {name: stats or {"status": "skipped", "reason"}}, ...}.

    The model is moved to the CPU; each mode times its own copy on ``device``.
    """
    from segmodels.engine.inference import environment
    from segmodels.models import count_flops, count_parameters

    device = torch.device(device)
    parsed = [parse_mode(m) for m in modes]  # bad names fail before any work
    if amp_dtype not in ("float16", "bfloat16"):
        raise ValueError(f"benchmark.amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"repeats ({repeats}) and batch_size ({batch_size}) must be >= 1, warmup ({warmup}) >= 0")
    dtype = getattr(torch, amp_dtype)
    model = model.eval().cpu()
    aux = getattr(model, "aux_head", None) or nn.Module()
    height, width = size
    result: dict[str, Any] = {
        "size": [height, width],
        "batch_size": batch_size,
        "warmup": warmup,
        "repeats": repeats,
        # Inference parameters: the auxiliary head runs in training only (params_train_m counts it too).
        "params_m": (count_parameters(model) - count_parameters(aux)) / 1e6,
        "params_train_m": count_parameters(model) / 1e6,
        # Shapes alone fix the count: on the meta device it costs no arithmetic (a CPU forward at 1024×512
        # would take a while on a GPU machine's host).
        "gflops": count_flops(copy.deepcopy(model).to("meta"), (height, width)) / 1e9,
        "amp_dtype": amp_dtype,
        "modes": {},
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    result["device"] = environment(device)
    bf16, why = cpu_bf16_support()
    vnni, vnni_why = cpu_int8_vnni()
    # The host CPU: it runs every CPU mode and feeds the GPU; its instruction sets decide the CPU times.
    result["cpu"] = {"name": cpu_name(), "flags": cpu_flags(), "bf16_native": bf16, "bf16_reason": why,
                     "int8_vnni": vnni, "int8_vnni_reason": vnni_why}  # fmt: skip
    result["fold"] = fold_report(inference_model(model))  # the model +fold and the onnx modes time
    x = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    for mode in parsed:
        reason = _skip_reason(mode, device, amp_dtype)
        if reason:
            result["modes"][mode.name] = {"status": "skipped", "reason": reason}
            if log:
                log(f"{mode.name}: skipped ({reason})")
            continue
        entry: dict[str, Any] = {"status": "ok"}
        rss_before = _peak_rss_mb()
        try:
            times = _time_mode(model, x, mode, device=device, dtype=dtype, onnx_opset=onnx_opset, warmup=warmup,
                               repeats=repeats, entry=entry)  # fmt: skip
        except Exception as exc:
            if not (mode.onnx or mode.compile or mode.cudagraphs):
                raise  # plain eager inference failing is a bug, not a missing toolchain
            # Compilers, graph capture and onnxruntime depend on the installation: report, time the other modes.
            result["modes"][mode.name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            if log:
                log(f"{mode.name}: failed ({type(exc).__name__}: {exc})")
            continue
        entry.update(_stats(times, batch_size))
        if device.type == "cuda" and not mode.onnx:
            entry.update(peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20, memory="cuda_max_allocated")
        elif device.type == "cpu":
            entry.update(peak_memory_mb=max(0.0, _peak_rss_mb() - rss_before), memory="cpu_peak_rss_growth")
        else:
            entry.update(peak_memory_mb=None, memory="n/a")
        entry["times_ms"] = [round(t, 4) for t in times]
        result["modes"][mode.name] = entry
        if log:
            log(
                f"{mode.name}: median {entry['median_ms']:.2f} ms, p90 {entry['p90_ms']:.2f} ms, {entry['fps']:.1f} FPS"
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _set_primary(result, primary_mode(result))
    return result


def _set_primary(result: dict[str, Any], mode: str | None) -> None:
    result["primary_mode"] = mode
    result["latency_ms"] = result["modes"][mode]["median_ms"] if mode else None
    result["fps"] = result["modes"][mode]["fps"] if mode else None


def miou_per_speed(miou: float, latency_ms: float) -> float:
    """The earlier study's "mIoU/Speed" column: mIoU in percent / latency in ms × 10 (``miou`` a fraction).

    Its own rows give 62.89 / 34 → 18.5 and 68.97 / 79 → 8.7; always computed, never copied.
    """
    return miou * 100.0 / latency_ms * 10.0


def _metric_key(text: str) -> str:
    return re.sub(r"[^\w\-./ ]", "_", text)


def benchmark_run(
    cfg: Any,
    run_dir: str | Path | None = None,
    *,
    model_name: str | None = None,
    out: str | Path | None = None,
    size: list[int] | None = None,
    modes: list[str] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    device: str | None = None,
    log_mlflow: bool = True,
    log_prefix: str | None = None,
) -> dict[str, Any]:
    """Benchmark a run folder's checkpoint (writes ``{run_dir}/latency.json``), or with ``model_name`` and no run
    folder a freshly built model with random weights (latency does not depend on them), written to ``out``.

    ``cfg`` is a StudyConfig: the ``benchmark`` and ``model`` sections of the run (the one the checkpoint records,
    or ``model_name``; :func:`segmodels.engine.run.open_run`) give the defaults, and latency.json's ``model`` is
    that run's name. Explicit ``repeats``/``warmup`` are used as given; the config's are capped by
    ``cpu_repeats``/``cpu_warmup`` on the CPU.

    ``log_prefix`` (the deployment timings, :mod:`segmodels.engine.deploy`): the file times paths beside the
    study's benchmark, so only the modes' latencies go to MLflow, as ``{log_prefix}latency_ms_{mode}``, and the
    mIoU of the run is not paired with them.
    """
    from segmodels.devices import resolve_device

    written = None if out is None else Path(out).parent if Path(out).suffix == ".json" else Path(out)
    with open_run(cfg, run_dir, job="benchmark", model_name=model_name, log_mlflow=log_mlflow, out=written) as run:
        bc = run.cfg.benchmark
        size = list(size or bc.size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"--size must be HEIGHT WIDTH, positive, got {size}")
        modes = list(modes or bc.modes)
        for m in modes:
            parse_mode(m)
        out_path = Path(out) if out is not None else (run.folder.latency if run.folder else None)
        if out_path is None:
            raise ValueError("--out is needed when benchmarking a model without a run folder")
        if out_path.suffix != ".json":
            out_path = out_path / runs.LATENCY

        dev = resolve_device(device or bc.device)
        if repeats is None:
            repeats = bc.repeats if dev.type == "cuda" else min(bc.repeats, bc.cpu_repeats)
        if warmup is None:
            warmup = bc.warmup if dev.type == "cuda" else min(bc.warmup, bc.cpu_warmup)
        meta: dict[str, Any] = {}
        if run.checkpoint is not None:
            model, meta = run.load_model(torch.device("cpu"))
        else:
            model = run.build_model(pretrained=False)
        print(f"benchmark {run.name}: {size[0]}x{size[1]}, batch {bc.batch_size}, modes {', '.join(modes)}, on {dev}")
        result = {"model": run.name, "checkpoint": str(run.checkpoint) if run.checkpoint else None,
                  "iteration": meta.get("iteration")}  # fmt: skip
        result |= benchmark_model(
            model, size=(size[0], size[1]), batch_size=bc.batch_size, modes=modes, warmup=warmup, repeats=repeats,
            device=dev, amp_dtype=bc.amp_dtype, onnx_opset=bc.onnx_opset,
        )  # fmt: skip
        scored = run.folder.read_metrics() if run.folder is not None and log_prefix is None else None
        if scored is not None and result["latency_ms"]:
            # mIoU/speed pairs numbers of one setup: the latency of the precision the mIoU was measured in.
            _set_primary(result, primary_mode(result, "amp" if scored.get("settings", {}).get("amp") else "fp32"))
            if scored.get("miou") is not None:
                result["miou"] = scored["miou"]
                result["miou_protocol"] = scored.get("protocol", {}).get("label")
                result["miou_per_speed"] = miou_per_speed(scored["miou"], result["latency_ms"])
        result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        runs.write_json(out_path, result)
        print(f"wrote {out_path}")
        if log_prefix is not None:
            run.log(metrics={_metric_key(f"{log_prefix}latency_ms_{name}"): entry["median_ms"]
                             for name, entry in result["modes"].items() if entry.get("status") == "ok"},
                    tags={f"{log_prefix}device": result["device"]["name"]})  # fmt: skip
        else:
            run.log(metrics=_logged_metrics(result), tags={"benchmark_device": result["device"]["name"]},
                    artifacts=[out_path])  # fmt: skip
    return result


def _logged_metrics(result: dict[str, Any]) -> dict[str, float]:
    """latency.json's numbers as the run's MLflow metrics."""
    metrics = {"gflops": result["gflops"], "params_m": result["params_m"]}
    if result["latency_ms"]:
        metrics |= {"latency_ms": result["latency_ms"], "fps": result["fps"]}
    for mode_name, entry in result["modes"].items():
        if entry.get("status") == "ok":
            metrics[_metric_key(f"latency_ms_{mode_name}")] = entry["median_ms"]
    if "miou_per_speed" in result:
        metrics["miou_per_speed"] = result["miou_per_speed"]
    return metrics
