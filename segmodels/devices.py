"""Which device a job runs on, and one GPU per job when several jobs share a machine.

Snakemake counts a ``gpu`` resource but never sets ``CUDA_VISIBLE_DEVICES``: with
``--resources gpu=4`` four jobs would all start on GPU 0. So a job that asks for
``auto``/``cuda`` on a machine with several visible GPUs claims the first free one by
holding an exclusive ``flock`` on ``{lock_dir}/gpu{N}.lock``. The kernel drops the lock
when the process ends, however it ends (exit, exception, SIGKILL), so a failed job
never leaves a GPU claimed.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

__all__ = ["claim_slot", "default_lock_dir", "resolve_device"]

_HELD: list[int] = []  # file descriptors of claimed slots, kept open for the life of the process


def default_lock_dir() -> Path:
    return Path(os.environ.get("SEGMODELS_GPU_LOCK_DIR", "/tmp/segmodels-gpu-locks"))


def claim_slot(count: int, lock_dir: Path, *, wait_s: float = 3600.0, poll_s: float = 1.0) -> int:
    """Claim the first free of ``count`` slots; wait (up to ``wait_s``) while all are held elsewhere."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        for index in range(count):
            fd = os.open(lock_dir / f"gpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _HELD.append(fd)
            return index
        if time.monotonic() > deadline:
            raise TimeoutError(f"all {count} GPUs stayed claimed by other jobs (locks in {lock_dir})")
        if not announced:
            print(f"waiting for a free GPU (all {count} claimed; locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_s)


def resolve_device(spec: str = "auto", *, lock_dir: Path | None = None):
    """``auto`` → a free CUDA GPU if there is one, else the CPU; ``cpu``; ``cuda`` (a free GPU); ``cuda:N``.

    Under ``torchrun`` (LOCAL_RANK set) each process takes the GPU of its local rank.
    """
    import torch

    if spec not in ("auto", "cpu", "cuda") and not spec.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA GPU")
    if spec.startswith("cuda:"):
        return torch.device(spec)
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    count = torch.cuda.device_count()
    index = 0 if count == 1 else claim_slot(count, lock_dir or default_lock_dir())
    return torch.device("cuda", index)
