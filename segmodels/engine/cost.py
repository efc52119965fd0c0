"""What a job cost: wall time, CPU time, GPU-hours and, where NVML can tell, the GPU's energy.

``CostMeter`` is a context manager around a training or evaluation job::

    with CostMeter("train", device=device, gpus=world_size, path=folder.cost, resume=start > 0) as meter:
        ...
        meter.images = iterations * batch_size
    record = meter.result()  # also written to cost.json, atomically

(``folder`` is a :class:`segmodels.study.runs.RunFolder`; jobs get their meter from
:meth:`segmodels.engine.run.OpenRun.meter`.)

Wall time is ``time.monotonic``; CPU time is the process's user + system time (all its threads, and child
processes it waited for) from ``os.times``, so CPU-hours on a many-core machine can exceed wall hours.
GPU-hours are wall hours × the GPUs the job holds. Energy needs NVIDIA's management library through the
optional ``nvidia-ml-py`` package (``import pynvml``): a background thread samples the board power
(``nvmlDeviceGetPowerUsage``) every ``sample_seconds`` and integrates it with the trapezoid rule; where the
GPU also has a cumulative energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and later) that
counter's difference is recorded instead, since it does not miss what happens between samples. Without
NVML, or on the CPU, the energy is ``None``: nothing is estimated. Under DDP only the process's own GPU
is read; its energy is multiplied by the GPU count and the record says so.

Resumable jobs: with ``path`` the background thread also rewrites the file every ``snapshot_seconds``, and
``checkpoint()`` rewrites it at once (a training job calls it each time it saves ``last.pt``), so a job
killed mid-way leaves what it had spent; a later run with ``resume=True`` appends its own segment to
the file's earlier ones and the totals cover them all (the compute that a kill wasted was still spent).
With ``resume=False`` earlier segments are discarded. The module needs neither torch nor NVML to import.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segmodels.devices import cpu_name

__all__ = ["COST_FORMAT", "CostMeter", "cost_metrics", "integrate_power", "read_cost"]

COST_FORMAT = 1
_HOUR = 3600.0


def integrate_power(samples: list[tuple[float, float]]) -> float:
    """Energy in Wh of ``(time s, power W)`` samples, trapezoid rule; 0 for fewer than two samples."""
    joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(samples, samples[1:], strict=False))
    return joules / _HOUR


def _parse_device(device: Any) -> tuple[str, int]:
    """``torch.device`` or a string like ``cuda:1`` → (type, index); index 0 when not given."""
    kind = getattr(device, "type", None)
    if kind is not None:
        return kind, int(getattr(device, "index", None) or 0)
    kind, _, index = str(device).partition(":")
    return kind, int(index) if index.isdigit() else 0


def _gpu_name(index: int) -> str:
    torch = sys.modules.get("torch")  # a GPU job has imported torch; this module never does it itself
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(index))
    return f"cuda:{index}"


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """The NVML handle of CUDA device ``index``: CUDA numbers the visible devices, NVML all of them."""
    torch = sys.modules.get("torch")
    uuid = None
    with contextlib.suppress(Exception):  # the uuid property is missing from older torch builds
        uuid = str(torch.cuda.get_device_properties(index).uuid) if torch is not None else None
    if uuid:
        with contextlib.suppress(pynvml.NVMLError):
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _nvml_readers(index: int) -> tuple[Callable[[], float], Callable[[], float] | None, Callable[[], None]] | None:
    """(power W, cumulative energy Wh or None, shutdown) for CUDA device ``index``, or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = _nvml_handle(pynvml, index)
        pynvml.nvmlDeviceGetPowerUsage(handle)  # milliwatts; raises where the board does not report power
    except pynvml.NVMLError:
        pynvml.nvmlShutdown()
        return None

    def power() -> float:
        return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0

    def energy() -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0 / _HOUR  # millijoules → Wh

    try:
        energy()
    except pynvml.NVMLError:
        energy = None  # pre-Volta boards: power samples only
    return power, energy, pynvml.nvmlShutdown


def _os_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def read_cost(path: str | Path) -> dict[str, Any] | None:
    """A ``cost.json`` written by :class:`CostMeter`, or None when absent or unreadable (warned)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.warn(f"{path}: not readable as JSON ({exc}); its cost is ignored", RuntimeWarning, stacklevel=2)
        return None
    return data if isinstance(data, dict) else None


class CostMeter:
    """Measures one job (see the module docstring); ``images`` is set by the caller, ``result()`` read after."""

    def __init__(
        self,
        job: str,
        *,
        device: Any = "cpu",
        gpus: int | None = None,
        path: str | Path | None = None,
        resume: bool = False,
        sample_seconds: float = 1.0,
        snapshot_seconds: float = 60.0,
        power: Callable[[], float] | None = None,
        energy_counter: Callable[[], float] | None = None,
    ) -> None:
        """``power`` (W) and ``energy_counter`` (cumulative Wh) replace NVML as the readings, for other
        power sources; by default NVML is used on a CUDA device when it can be loaded."""
        if sample_seconds <= 0 or snapshot_seconds <= 0:
            raise ValueError(f"sample_seconds and snapshot_seconds must be positive, got {sample_seconds}, "
                             f"{snapshot_seconds}")  # fmt: skip
        self.job = job
        self.device_type, self.index = _parse_device(device)
        self.gpus = (1 if self.device_type == "cuda" else 0) if gpus is None else int(gpus)
        self.path = Path(path) if path is not None else None
        self.sample_seconds, self.snapshot_seconds = sample_seconds, snapshot_seconds
        self.images: int | None = None
        self._power, self._energy_counter = power, energy_counter
        self._shutdown: Callable[[], None] | None = None
        self._source = "given" if power or energy_counter else None
        self._earlier = self._read_earlier() if resume else []
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # the thread's snapshots and checkpoint() write in turn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._cpu0 = 0.0
        self._e0: float | None = None
        self._segment: dict[str, Any] | None = None

    def _read_earlier(self) -> list[dict[str, Any]]:
        previous = read_cost(self.path) if self.path is not None else None
        segments = (previous or {}).get("segments", [])
        return [s for s in segments if isinstance(s, dict)] if isinstance(segments, list) else []

    # --- measuring ---------------------------------------------------------------------------------------

    def __enter__(self) -> CostMeter:
        if self.device_type == "cuda" and self._power is None and self._energy_counter is None:
            readers = _nvml_readers(self.index)
            if readers is not None:
                self._power, self._energy_counter, self._shutdown = readers
                self._source = "nvml"
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._t0, self._cpu0 = time.monotonic(), _os_cpu_seconds()
        self._e0 = self._read_energy()
        self._sample()
        if self._power is not None or self.path is not None:
            self._thread = threading.Thread(target=self._run, name=f"cost-{self.job}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._segment = self._measure(complete=exc_type is None)
        if self._shutdown is not None:
            with contextlib.suppress(Exception):
                self._shutdown()
        with self._write_lock:
            self._write()

    def _read_energy(self) -> float | None:
        if self._energy_counter is None:
            return None
        try:
            return float(self._energy_counter())
        except Exception as exc:  # a reading that fails once is not trusted again
            warnings.warn(f"energy counter failed ({exc}); energy from power samples only", RuntimeWarning,
                          stacklevel=2)  # fmt: skip
            self._energy_counter = None
            return None

    def _sample(self) -> None:
        if self._power is None:
            return
        try:
            watts = float(self._power())
        except Exception as exc:
            warnings.warn(f"power reading failed ({exc}); no energy recorded", RuntimeWarning, stacklevel=2)
            self._power = None
            return
        with self._lock:
            self._samples.append((time.monotonic(), watts))

    def _run(self) -> None:
        last_snapshot = time.monotonic()
        while not self._stop.wait(self.sample_seconds if self._power is not None else self.snapshot_seconds):
            self._sample()
            if self.path is not None and time.monotonic() - last_snapshot >= self.snapshot_seconds:
                last_snapshot = time.monotonic()
                self.checkpoint()

    def checkpoint(self) -> None:
        """Write the record so far (``complete: False``) now. Called when a job saves its resume state, it
        keeps on record at least the work that state holds, however long before the next snapshot the job
        is killed. A failed write (a full disk) is warned, never raised: the job goes on."""
        with self._write_lock:
            if self.path is None or self._thread is None or self._stop.is_set():
                return  # no file, or outside the with-block (__exit__ writes the final record)
            try:
                self._write(self._measure(complete=False))
            except OSError as exc:  # a full disk must not stop the job being measured
                warnings.warn(f"cost snapshot not written: {exc}", RuntimeWarning, stacklevel=2)

    def _measure(self, *, complete: bool) -> dict[str, Any]:
        """This segment so far."""
        wall = time.monotonic() - self._t0
        with self._lock:
            samples = list(self._samples)
        energy, source = None, None
        e1 = self._read_energy() if self._e0 is not None else None
        if self._e0 is not None and e1 is not None and e1 >= self._e0:  # a counter reset (driver reload) is no reading
            energy, source = e1 - self._e0, f"{self._source} energy counter"
        elif self._power is not None and len(samples) >= 2:
            energy, source = integrate_power(samples), f"{self._source} power samples"
        if energy is not None and self.gpus > 1:
            energy, source = energy * self.gpus, f"{source}, one GPU × {self.gpus}"
        span = samples[-1][0] - samples[0][0] if len(samples) >= 2 else 0.0
        return {
            "started": self._started,
            "device_type": self.device_type,
            "device": _gpu_name(self.index) if self.device_type == "cuda" else cpu_name(),
            "gpus": self.gpus,
            "wall_s": wall,
            "cpu_s": _os_cpu_seconds() - self._cpu0,
            "energy_wh": energy,
            "energy_source": source,
            "mean_power_w": integrate_power(samples) * _HOUR / span if span > 0 else None,
            "power_samples": len(samples),
            "complete": complete,
        }

    # --- the record --------------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """Totals over this run's segment and, when resuming, the file's earlier ones."""
        if self._segment is None:
            raise RuntimeError("CostMeter.result() is available once the with-block has ended")
        return self._record(self._segment)

    def _record(self, segment: dict[str, Any]) -> dict[str, Any]:
        segments = [*self._earlier, segment]
        wall = sum(float(s.get("wall_s") or 0) for s in segments)
        energies = [s.get("energy_wh") for s in segments]
        devices = list(dict.fromkeys(str(s.get("device")) for s in segments))
        gpu_seconds = sum(float(s.get("wall_s") or 0) * int(s.get("gpus") or 0) for s in segments)
        return {
            "format": COST_FORMAT,
            "job": self.job,
            "device_type": segment["device_type"],
            "device": " / ".join(devices),
            "gpus": segment["gpus"],
            "wall_s": wall,
            "wall_hours": wall / _HOUR,
            "cpu_hours": sum(float(s.get("cpu_s") or 0) for s in segments) / _HOUR,
            "gpu_hours": gpu_seconds / _HOUR if gpu_seconds > 0 else None,
            # Energy only when every segment measured it: a partial sum would understate the cost.
            "energy_wh": sum(energies) if all(e is not None for e in energies) else None,
            "energy_source": segment["energy_source"],
            "images": self.images,
            "complete": bool(segment["complete"]),
            "segments": segments,
        }

    def _write(self, segment: dict[str, Any] | None = None) -> None:
        if self.path is None:
            return
        from segmodels.atomic import write_text_atomic

        record = self._record(segment or self._segment)
        text = json.dumps(record, indent=1, allow_nan=False, default=str)
        write_text_atomic(self.path, text + "\n")


def cost_metrics(record: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """The finite numbers of a cost record as MLflow metrics ``{prefix}hours``, ``{prefix}gpu_hours``, …"""
    if not record:
        return {}
    keys = {"hours": "wall_hours", "cpu_hours": "cpu_hours", "gpu_hours": "gpu_hours", "energy_wh": "energy_wh",
            "images": "images"}  # fmt: skip
    out = {}
    for name, key in keys.items():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{name}"] = float(value)
    return out
