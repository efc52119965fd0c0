"""Small file and progress helpers shared by the data commands: atomic writes, progress reporting, worker pools."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from segmodels.atomic import write_bytes_atomic

__all__ = [
    "Progress",
    "atomic_write_json",
    "default_workers",
    "encode_png",
    "parallel_map",
]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def atomic_write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def encode_png(image: Any, compress_level: int = 6) -> bytes:
    """PIL image → PNG bytes (kept in memory so the file itself is written atomically)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise (logs of batch jobs stay readable)."""

    def __init__(self, total: int, desc: str, *, every_s: float = 10.0, enabled: bool = True) -> None:
        self.total, self.desc, self.every_s, self.done = total, desc, every_s, 0
        self._bar = None
        self._enabled = enabled
        self._start = self._last = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self._enabled and (now - self._last >= self.every_s or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            print(f"{self.desc}: {self.done}/{self.total} ({rate:.1f}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    progress: Progress | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[tuple[int, R]]:
    """Yield ``(position, fn(item))`` as items finish, over ``workers`` processes (in-process when ``workers <= 1``).

    The first exception cancels the pending items and is raised as it is, so a worker's message (naming the file
    at fault) reaches the user unchanged. A result is let go once yielded, so results as large as encoded images
    stream through instead of piling up until the last item.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for i, item in enumerate(items):
            result = fn(item)
            if progress is not None:
                progress.update()
            yield i, result
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), initializer=initializer, initargs=initargs) as pool:
        futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in as_completed(futures):
                result = fut.result()  # a worker's exception is raised here, as it is
                if progress is not None:
                    progress.update()
                yield futures.pop(fut), result
                del result
        finally:
            for fut in futures:
                fut.cancel()
