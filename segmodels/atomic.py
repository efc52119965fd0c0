"""Atomic writes: a reader sees the old file or the complete new one, never a half-written file."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "FILE_MODE",
    "DiskFullError",
    "disk_full_error",
    "fsync_dir",
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file; mkstemp's 0600 is changed to it
_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; ``errno`` and ``filename`` are the original ones."""

    def __str__(self) -> str:
        return str(self.strerror)  # the whole message; OSError's "[Errno 28] ..." prefix only adds noise


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A full disk or quota raises :class:`DiskFullError` naming ``path`` and the space left; ``path`` is
    then unchanged and the temporary file removed.
    """
    path = Path(path)
    try:
        _write(path, write)
    except Exception as exc:
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from exc
    fsync_dir(path.parent)
    return path


def disk_full_error(exc: BaseException, path: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` and its filesystem's free space when ``exc`` (or its cause) is a
    full disk or quota, else None: for writers that cannot go through :func:`write_atomic`."""
    full = _disk_full_cause(exc)
    if full is None:
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    msg = f"{os.strerror(full.errno)} writing {path} ({_free_space(folder)} on its filesystem)"
    return DiskFullError(full.errno, msg, str(path))


def _write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _disk_full_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error in ``exc``'s chain: torch.save, for one, re-raises it as a RuntimeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(folder: Path) -> str:
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "free space unknown"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while free >= 1024 and i < len(units) - 1:
        free, i = free / 1024, i + 1
    return f"{free:.1f} {units[i]} free"


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
