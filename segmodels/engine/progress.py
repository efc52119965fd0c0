"""Training progress: a tqdm bar on a terminal, plain lines at logging iterations otherwise (Snakemake logs)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A tqdm bar on a terminal; plain lines at logging iterations otherwise (Snakemake logs)."""

    def __init__(self, total: int, start: int, *, batch: int, enabled: bool) -> None:
        self.total, self.start, self.batch, self.enabled = total, start, batch, enabled
        self.t0 = self._t = time.perf_counter()
        self._it = start
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def rate(self, iteration: int) -> float:
        """Images per second since the previous call (call it after a device sync)."""
        now = time.perf_counter()
        rate = (iteration - self._it) * self.batch / max(now - self._t, 1e-9)
        self._t, self._it = now, iteration
        return rate

    def report(self, iteration: int, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = (self.total - iteration) * elapsed / max(iteration - self.start, 1)
        text = {"loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}", "img/s": f"{row['images_per_s']:.1f}"}
        if "val_miou" in row:
            text["val_mIoU"] = f"{row['val_miou']:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        else:
            fields = " ".join(f"{k} {v}" for k, v in text.items())
            print(f"iter {iteration}/{self.total} {fields} eta {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
