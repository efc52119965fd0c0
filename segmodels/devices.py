"""Which device a job runs on, distinct GPUs for jobs that share a machine, and what the CPU can do.

Snakemake counts a ``gpu`` resource but never sets ``CUDA_VISIBLE_DEVICES``: with
``--resources gpu=4`` four jobs would all start on GPU 0. So a job claims its GPUs by holding an
exclusive ``flock`` on ``{lock_dir}/gpu{ID}.lock``, one file per visible GPU. The kernel drops a
lock when the last process holding it ends, however it ends (exit, exception, SIGKILL), so a
failed job never leaves a GPU claimed.

- A one-GPU job (``auto``/``cuda``) claims the first free GPU in-process (:func:`resolve_device`).
- A job given several GPUs claims them all before it starts its processes, sets
  ``CUDA_VISIBLE_DEVICES`` to them and runs its launcher (``torchrun``) with the locks inherited, so
  they stay held while any of its processes lives (:func:`run_on_gpus`). It takes all N or none:
  a partial claim is released before it waits, so two jobs can never hold half of each other's set.

The lock folder is the user's own (``/tmp/segmodels-gpu-locks-{uid}``, created 0700, refused when
it is a symlink or belongs to someone else). Users who share GPUs on one host may point
``SEGMODELS_GPU_LOCK_DIR`` at one common folder (mode 1777, like /tmp). Lock files are opened with
``O_NOFOLLOW`` (:func:`segmodels.locks.try_lock`) and never truncated, and the holder's pid is written only into
a file the user owns, so nobody can make a job overwrite another user's file through a planted link.

On the CPU, :func:`cpu_bf16_support` tells whether bfloat16 runs natively (AMX, AVX512-BF16, Arm BF16) or would
be emulated, and :func:`cpu_flags` lists the instruction sets that decide inference speed; both read
/proc/cpuinfo, or a text given to them.
"""

from __future__ import annotations

import os
import platform
import re
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from segmodels.locks import owned, try_lock

__all__ = [
    "CPU_FLAGS",
    "claim_devices",
    "claim_slot",
    "cpu_bf16_support",
    "cpu_flags",
    "cpu_int8_vnni",
    "cpu_name",
    "default_lock_dir",
    "release_devices",
    "resolve_device",
    "run_on_gpus",
    "visible_devices",
]

_HELD: list[int] = []  # file descriptors of claimed GPUs, kept open for the life of the process
_PID_WIDTH = 12  # the pid is written at a fixed width, so rewriting it never needs a truncate


def default_lock_dir() -> Path:
    """``$SEGMODELS_GPU_LOCK_DIR``, else this user's own folder under /tmp."""
    shared = os.environ.get("SEGMODELS_GPU_LOCK_DIR")
    return Path(shared) if shared else Path(f"/tmp/segmodels-gpu-locks-{os.geteuid()}")


def _checked_lock_dir(lock_dir: Path) -> Path:
    """Create ``lock_dir`` (0700) if needed; refuse a symlink, a non-folder, or (for the per-user default)
    a folder that another user owns or can write to."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(lock_dir)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"GPU lock folder {lock_dir} is a symlink or not a folder; remove it or set "
                              "SEGMODELS_GPU_LOCK_DIR to a folder of your own")  # fmt: skip
    if lock_dir == default_lock_dir() and "SEGMODELS_GPU_LOCK_DIR" not in os.environ and (
        st.st_uid != os.geteuid() or st.st_mode & 0o022
    ):
        raise PermissionError(f"GPU lock folder {lock_dir} belongs to uid {st.st_uid} or is writable by others; "
                              "remove it or set SEGMODELS_GPU_LOCK_DIR")  # fmt: skip
    return lock_dir


def _lock_name(device: str) -> str:
    return "gpu" + re.sub(r"[^A-Za-z0-9.-]", "_", device) + ".lock"  # ids may be UUIDs (GPU-…, MIG-…)


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on ``path``, or None when someone else holds it."""
    fd = try_lock(path, label="GPU lock file")
    if fd is not None and owned(fd):
        os.pwrite(fd, f"{os.getpid():>{_PID_WIDTH}}\n".encode(), 0)
    return fd


def claim_devices(
    n: int, devices: Sequence[str], lock_dir: Path | None = None, *, wait_s: float = 3600.0, poll_s: float = 1.0
) -> list[int]:
    """Claim ``n`` of ``devices`` (GPU ids as CUDA_VISIBLE_DEVICES names them), all or none; return their
    positions in ``devices``. Waits up to ``wait_s`` while fewer than ``n`` are free, then raises TimeoutError."""
    devices = list(devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} GPUs; this machine shows {len(devices)} ({', '.join(devices) or 'none'})")
    lock_dir = _checked_lock_dir(lock_dir or default_lock_dir())
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        taken: list[tuple[int, int]] = []
        for position, device in enumerate(devices):
            fd = _try_lock(lock_dir / _lock_name(device))
            if fd is not None:
                taken.append((position, fd))
                if len(taken) == n:
                    _HELD.extend(fd for _, fd in taken)
                    return [position for position, _ in taken]
        for _, fd in taken:  # not enough: hold none while waiting, so no two jobs wait on each other
            os.close(fd)
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} of {len(devices)} GPUs free: claimed by other jobs (locks in "
                               f"{lock_dir})")  # fmt: skip
        if not announced:
            print(f"waiting for {n} free GPU(s) of {len(devices)} (locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_s)


def claim_slot(count: int, lock_dir: Path, *, wait_s: float = 3600.0, poll_s: float = 1.0) -> int:
    """Claim the first free of GPUs ``0 … count-1``; its index."""
    return claim_devices(1, [str(i) for i in range(count)], lock_dir, wait_s=wait_s, poll_s=poll_s)[0]


def release_devices() -> None:
    """Give back every GPU this process claimed."""
    while _HELD:
        os.close(_HELD.pop())


def visible_devices() -> list[str]:
    """The GPUs this process may use, as ids: CUDA_VISIBLE_DEVICES's entries, else ``0 … count-1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_on_gpus(
    n: int, command: Sequence[str], *, devices: Sequence[str] | None = None, lock_dir: Path | None = None,
    wait_s: float = 3600.0, poll_s: float = 1.0, pass_fds: Sequence[int] = (), env: dict[str, str] | None = None,
) -> int:
    """Claim ``n`` GPUs, run ``command`` on them (CUDA_VISIBLE_DEVICES set, the locks inherited), release
    them, and return its exit status. Without any GPU the command runs as it is (gloo on the CPU).

    ``pass_fds``: more descriptors the command inherits (locks the caller holds for it); ``env``: its environment
    (default: this process's)."""
    devices = visible_devices() if devices is None else list(devices)
    env = dict(os.environ if env is None else env)
    held: list[int] = []
    if devices:
        positions = claim_devices(n, devices, lock_dir, wait_s=wait_s, poll_s=poll_s)
        held = _HELD[-n:]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[p] for p in positions)
        print(f"claimed GPU(s) {env['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    try:
        return subprocess.run(list(command), env=env, pass_fds=[*held, *pass_fds], check=False).returncode
    finally:
        release_devices()


def resolve_device(spec: str = "auto", *, lock_dir: Path | None = None):
    """``auto`` → a free CUDA GPU if there is one, else the CPU; ``cpu``; ``cuda`` (a free GPU); ``cuda:N``.

    Under ``torchrun`` (LOCAL_RANK set) each process takes the GPU of its local rank: its launcher claimed them.
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
    index = 0 if count == 1 else claim_devices(1, visible_devices()[:count], lock_dir)[0]
    return torch.device("cuda", index)


# --- what the CPU can do -------------------------------------------------------------------------------------

# Instruction sets that decide CPU inference speed, as /proc/cpuinfo spells them: AVX2/AVX-512 for fp32 kernels,
# AVX512-BF16 and AMX for bf16 (native dot products instead of conversions to fp32), VNNI for int8 (onnxruntime's
# and oneDNN's u8×s8 dot products). "bf16" is the Arm BF16 extension (a "Features" entry on aarch64).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "bf16")


def _cpuinfo(cpuinfo: str | None) -> str | None:
    if cpuinfo is not None:
        return cpuinfo
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _cpuinfo_field(text: str, *keys: str) -> str | None:
    """The value of the first line whose key is one of ``keys`` (the first processor's entry)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return value.strip()
    return None


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name: /proc/cpuinfo's (or the ``cpuinfo`` text given), else ``platform.processor()``."""
    text = _cpuinfo(cpuinfo)
    name = _cpuinfo_field(text, "model name") if text else None
    return name or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction sets of :data:`CPU_FLAGS` this CPU has, in that order (from /proc/cpuinfo, or the
    ``cpuinfo`` text given); empty where neither can be read."""
    text = _cpuinfo(cpuinfo)
    listed = (_cpuinfo_field(text, "flags", "features") or "") if text else ""
    present = set(listed.lower().split())
    return [flag for flag in CPU_FLAGS if flag in present]


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether bfloat16 runs natively on this CPU, and why (a non-empty reason either way).

    Native means AMX (``amx_bf16``: tile matrix multiplies, Sapphire Rapids on), AVX512-BF16 (``avx512_bf16``:
    bf16 dot products, Cooper Lake, Zen 4 on) or Arm's BF16 extension. Without them oneDNN still runs bf16 on
    AVX-512 by converting to fp32, which is slower than fp32 itself, so a bf16 timing would mislead.
    ``cpuinfo``: the text of /proc/cpuinfo to judge (default: this machine's).
    """
    text = _cpuinfo(cpuinfo)
    name = cpu_name(cpuinfo)
    if text is None:
        return False, (f"cannot tell whether this CPU ({name}) has bf16 instructions: /proc/cpuinfo is not "
                       "readable here, so bf16 is not assumed")  # fmt: skip
    flags = cpu_flags(text)
    if "amx_bf16" in flags:
        return True, f"{name} has AMX (amx_bf16): native bf16 matrix multiplies"
    if "avx512_bf16" in flags:
        return True, f"{name} has AVX512-BF16 (avx512_bf16): native bf16 dot products"
    if "bf16" in flags:
        return True, f"{name} has the Arm BF16 extension (bf16): native bf16 dot products"
    return False, f"this CPU ({name}) has no AVX512-BF16 or AMX: bf16 on the CPU would be emulated and slower"


def cpu_int8_vnni(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU has VNNI (``avx512_vnni`` or ``avx_vnni``), and why (a non-empty reason either way).

    With VNNI, x86 multiplies uint8 by int8 and sums into 32 bits in one instruction (vpdpbusd). Without it,
    onnxruntime's u8×s8 kernels use vpmaddubsw, which adds pairs of products into 16 bits and can saturate; its
    documentation's remedy is 7-bit weights (``reduce_range``) or u8×u8. ``cpuinfo``: the text of /proc/cpuinfo to
    judge (default: this machine's); unreadable, VNNI is not assumed.
    """
    text = _cpuinfo(cpuinfo)
    name = cpu_name(cpuinfo)
    if text is None:
        return False, f"cannot tell whether this CPU ({name}) has VNNI: /proc/cpuinfo is not readable here"
    flags = cpu_flags(text)
    for flag in ("avx512_vnni", "avx_vnni"):
        if flag in flags:
            return True, f"{name} has {flag}: u8×s8 dot products summed in 32 bits"
    return False, (f"this CPU ({name}) has no AVX512-VNNI or AVX-VNNI: pairs of u8×s8 products are summed in 16 bits, "
                   "which can saturate")  # fmt: skip
