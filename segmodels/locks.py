"""File locks (``fcntl.flock``): the one home of the project's locking.

The kernel drops a flock when the last descriptor of its open file closes, however the process ends (exit,
exception, SIGKILL), so a killed job never leaves a stale lock: the next job takes it.

- :func:`try_lock`: a lock file opened safely (never through a symlink; another user's file is only read) and
  locked without waiting. The GPU claims of :mod:`segmodels.devices` are built on it.
- :func:`locked`: an exclusive lock that waits, held while a block runs (the tracking store's schema, the
  offline queue's appends).
- :func:`holding`: a lock that never waits. An exclusive holder writes its pid, host and job into the file, so a
  refused process can say who holds it (:class:`LockBusyError`); it removes the file when it lets go, and the
  folders it created for it when they are left empty. Every taker checks that the file it locked is still the
  one at the path, so a file removed by its last holder is never locked by two processes. A nested take in the
  same process is counted, not refused. A process that holds a lock for processes it starts (``torchrun``'s
  workers) names the file in ``$SEGMODELS_HELD_LOCKS`` (:func:`held_env`); they take it as held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HELD_ENV", "Holder", "Lock", "LockBusyError", "held_env", "holding", "locked", "owned", "try_lock"]

HELD_ENV = "SEGMODELS_HELD_LOCKS"  # lock files a parent process holds for this one, os.pathsep-separated
_RETRIES = 20  # a file removed or replaced between open and lock: take the new one, this many times at most


def _open(path: Path, *, label: str, create: bool) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(f"{label} {path} is a symlink; refusing to follow it") from None
        if exc.errno != errno.EACCES:
            raise
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # another user's file: lock, never write


def try_lock(path: Path, *, shared: bool = False, label: str = "lock file", create: bool = True) -> int | None:
    """An fd holding an exclusive (``shared``: a shared) lock on ``path``, or None when another process holds it."""
    fd = _open(path, label=label, create=create)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(f"{label} {path} is not a regular file")
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def owned(fd: int) -> bool:
    """Whether the file of ``fd`` is this user's and has no other name: only then is it written or removed."""
    st = os.fstat(fd)
    return st.st_uid == os.geteuid() and st.st_nlink == 1


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created with its folder if missing) while the block runs; waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open(path, label="lock file", create=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Holder:
    """Who holds an exclusive lock, as its file says (None where the file says nothing)."""

    pid: int | None = None
    host: str | None = None
    job: str | None = None

    def __str__(self) -> str:
        return "another process" if self.pid is None else f"PID {self.pid} on {self.host or 'an unknown host'}"


class LockBusyError(BlockingIOError):
    """A lock another process holds: ``holder`` for an exclusive holder, None for processes sharing it."""

    def __init__(self, path: Path, holder: Holder | None) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{path} is locked by {holder or 'processes sharing it'}")
        self.path, self.holder = path, holder


@dataclass
class Lock:
    """A lock this process holds (``fd`` None: held by its parent, :data:`HELD_ENV`)."""

    path: Path
    fd: int | None
    shared: bool
    created: list[Path] = field(default_factory=list)  # folders made for the file, deepest first
    count: int = 1


_HELD: dict[Path, Lock] = {}


def _key(path: str | Path) -> Path:
    path = Path(path)
    return path.parent.resolve() / path.name


def held_env(*paths: Path) -> str:
    """The value of :data:`HELD_ENV` for processes started while this one holds ``paths`` (and those it was given)."""
    inherited = [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([*inherited, *(str(_key(p)) for p in paths)]))


def _make_dirs(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
            made.append(path)
        except FileExistsError:
            pass
    return made[::-1]


def _remove_dirs(folders: list[Path]) -> None:
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (something was written there), or gone
            return


def _is_at(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _read_holder(path: Path) -> Holder:
    try:
        fields = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    except OSError:
        return Holder()
    pid = fields.get("pid", "")
    return Holder(int(pid) if pid.isdigit() else None, fields.get("host"), fields.get("job"))


def _busy(path: Path, shared: bool, label: str) -> LockBusyError:
    """Who holds ``path``: an exclusive holder (its file names it), or processes sharing it."""
    if not shared:
        try:
            probe = try_lock(path, shared=True, label=label, create=False)
        except FileNotFoundError:  # its holder let go this instant
            return LockBusyError(path, Holder())
        if probe is not None:
            os.close(probe)
            return LockBusyError(path, None)
    return LockBusyError(path, _read_holder(path))


def _take(path: Path, *, shared: bool, job: str, label: str) -> Lock:
    created = _make_dirs(path.parent)
    try:
        for _ in range(_RETRIES):
            try:
                fd = try_lock(path, shared=shared, label=label)
            except FileNotFoundError:  # its folder was removed by a holder that let go: make it again
                created = list(dict.fromkeys(_make_dirs(path.parent) + created))
                continue
            if fd is None:
                raise _busy(path, shared, label)
            if _is_at(fd, path):
                break
            os.close(fd)  # locked a file its last holder had just removed
        else:
            raise LockBusyError(path, Holder())
    except BaseException:
        _remove_dirs(created)
        raise
    if not shared and owned(fd):
        record = f"pid {os.getpid()}\nhost {socket.gethostname()}\njob {job}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    return Lock(path, fd, shared, created)


def _release(lock: Lock) -> None:
    lock.count -= 1
    if lock.count:
        return
    del _HELD[lock.path]
    if lock.fd is None:
        return
    try:
        if not lock.shared and owned(lock.fd) and _is_at(lock.fd, lock.path):
            lock.path.unlink()  # under the lock: a process that opened it finds another file at the path, or none
    finally:
        os.close(lock.fd)
        _remove_dirs(lock.created)


@contextmanager
def holding(path: str | Path, *, shared: bool = False, job: str = "", label: str = "lock file") -> Iterator[Lock]:
    """Hold an exclusive (``shared``: a shared) lock on ``path`` while the block runs; LockBusyError at once, naming
    the holder, when another process holds it. Missing folders are made, and removed again when left empty."""
    key = _key(path)
    lock = _HELD.get(key)
    if lock is not None:
        lock.count += 1
    elif str(key) in os.environ.get(HELD_ENV, "").split(os.pathsep):
        lock = _HELD[key] = Lock(key, None, shared)
    else:
        lock = _HELD[key] = _take(key, shared=shared, job=job, label=label)
    try:
        yield lock
    finally:
        _release(lock)
