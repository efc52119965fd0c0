"""`make gpu-check`: commands run in child processes killed at the section's cap, nvidia-smi, the GPU sampler."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_check_base import ROOT, SCRIPT, Section


@dataclass
class Ran:
    rc: int | None  # None: killed at the cap
    wall_s: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return text[-chars:]


class Context:
    """One run: its temp folder, the visible GPUs, and the deadline of the section being run."""

    def __init__(self, args: argparse.Namespace, gpus: int, tmp: Path) -> None:
        self.args, self.gpus, self.tmp = args, gpus, tmp
        self.logs = args.out / "logs"
        self.deadline = time.time()
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        SEGMODELS_GPU_LOCK_DIR=str(tmp / "gpu-locks"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                        PYTHONUNBUFFERED="1")  # fmt: skip
        # Our own lock folder: a stranger's stale claim in /tmp must not make our jobs wait out the cap.

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, cmd: list[str], name: str, *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Ran:
        """Run ``cmd`` until it ends or the section's deadline, output to logs/{name}.log; at the deadline its
        whole process group (torchrun's ranks, Snakemake's jobs, compile workers) gets SIGTERM, then SIGKILL."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        start = time.time()
        with log.open("w") as fh:
            fh.write("$ " + " ".join(map(str, cmd)) + "\n")
            fh.flush()
            proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env or self.env, start_new_session=True)  # fmt: skip
            try:
                rc: int | None = proc.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                rc = None
                _stop(proc)
            except BaseException:  # Ctrl-C reaches this process only: the child has its own session
                _stop(proc)
                raise
        return Ran(rc, time.time() - start, log)

    def segmodels(self, args: list[str], name: str) -> Ran:
        return self.run([sys.executable, "-m", "segmodels", *args], name)

    def worker(self, name: str, sec: Section, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """This script's ``--worker name`` in a child process (so this one never holds a CUDA context); its
        JSON, partial when it was killed at the cap."""
        out = self.tmp / f"worker-{name}.json"
        cmd = [sys.executable, SCRIPT, "--worker", name, "--worker-out", out, "--config", self.args.config,
               "--deadline", f"{self.deadline - 5:.1f}", *extra]  # fmt: skip
        ran = self.run(cmd, f"worker-{name}")
        check_ran(sec, ran, f"worker {name}")
        return json.loads(out.read_text()) if out.is_file() else {}


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL if it is still there 10 s later."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def check_ran(sec: Section, ran: Ran, what: str) -> bool:
    if ran.timed_out:
        sec.worse("timeout", f"{what}: stopped at the section's cap after {ran.wall_s:.0f} s (log: {ran.log.name})")
    elif ran.rc != 0:
        sec.worse("error", f"{what}: exit status {ran.rc} (log: {ran.log.name})")
        sec.blocks.append({"title": f"{what}: end of its output", "text": ran.tail(2000)})
    return ran.rc == 0


def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-…=… --format=csv,noheader,nounits``; None without a working nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=15, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


class GpuSampler(threading.Thread):
    """Every half second: each GPU's memory in use (nvidia-smi), which processes nvidia-smi sees on which GPU,
    and which live process holds each GPU lock (segmodels.devices writes the claimant's pid into its lock file).
    Nothing else records the GPU of a one-GPU train job, so placement is judged from these samples."""

    def __init__(self, lock_dir: Path | None = None, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.lock_dir, self.period, self.stop = lock_dir, period, threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.cmdlines: dict[int, list[str]] = {}
        self.t0 = time.time()
        uuids = nvidia_smi("--query-gpu=index,uuid") or []
        self.index_of = {row[1]: int(row[0]) for row in uuids if len(row) == 2}

    def run(self) -> None:
        while not self.stop.wait(self.period):
            with contextlib.suppress(Exception):  # a sampler hiccup must not end the section
                self.samples.append(self._sample())

    def _alive(self, pid: int) -> bool:
        try:
            self.cmdlines.setdefault(pid, Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))
            return True
        except OSError:
            return False

    def _sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": round(time.time() - self.t0, 2), "memory_mb": {}, "apps": [], "locks": {}}
        for row in nvidia_smi("--query-gpu=index,memory.used") or []:
            sample["memory_mb"][int(row[0])] = float(row[1])
        for row in nvidia_smi("--query-compute-apps=pid,gpu_uuid") or []:
            if len(row) == 2 and row[0].isdigit() and row[1] in self.index_of:
                sample["apps"].append([self.index_of[row[1]], int(row[0])])
                self._alive(int(row[0]))
        for lock in sorted(self.lock_dir.glob("gpu*.lock")) if self.lock_dir and self.lock_dir.is_dir() else []:
            text = lock.read_bytes()[:12].strip()
            if text.isdigit() and self._alive(int(text)):
                sample["locks"][lock.stem.removeprefix("gpu")] = int(text)
        return sample

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=10)

    def peak_memory_mb(self) -> dict[int, float]:
        peaks: dict[int, float] = {}
        for s in self.samples:
            for gpu, mb in s["memory_mb"].items():
                peaks[gpu] = max(peaks.get(gpu, 0.0), mb)
        return peaks
