"""Batches from packed splits: memory-mapped uint8 arrays → augmented, normalised tensors on the training device.

A batch is gathered from the memory map in one copy of only the pixels its crops read (into pinned memory when
the device is a GPU), moved to the device, and augmented there as a whole (:mod:`segmodels.data.augment`), so
with a GPU the data path costs the CPU one memcpy per batch and never limits the GPU; on the CPU, batches cost a fraction of a millisecond per
sample, made ahead by background threads. Everything random is drawn from generators keyed by (seed, step,
rank): ``batch(step)`` is a pure function of its arguments, so a resumed run sees the batches it would have seen.
Under DDP the ranks share one permutation per epoch and take disjoint slices of it.
"""

from __future__ import annotations

import copy
import functools
import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmodels.data.augment import AugmentParams, augment_batch, redraw_crops, sample_params, source_windows
from segmodels.data.labelset import IGNORE_INDEX
from segmodels.data.pack import read_manifest

__all__ = ["MEAN", "STD", "PackedSplit", "TrainLoader", "WaitClock", "normalize", "val_batches"]

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, 0-1 scale: the backbones are ImageNet-pretrained
STD = (0.229, 0.224, 0.225)


class PackedSplit:
    """One packed split (``data/packed/{dataset}/{split}``) opened by memory map: ``images`` (N, H, W, 3) and
    ``labels`` (N, H, W) uint8, and ``instances`` (N, H, W) uint16 where the split has instance ids (None where not;
    their encoding in ``instance_encoding``, as the manifest records it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        files = {name: self.path / f"{name}.npy" for name in ("images", "labels")}
        for f in files.values():
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found: run `segmodels prepare` to pack the dataset first")
        try:
            self.images: np.ndarray = np.load(files["images"], mmap_mode="r")
            self.labels: np.ndarray = np.load(files["labels"], mmap_mode="r")
        except ValueError as exc:
            raise ValueError(f"{self.path}: not a packed split ({exc})") from None
        n = self.images.shape[0]
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(
                f"{files['images']}: expected uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.uint8 or self.labels.shape != self.images.shape[:3]:
            raise ValueError(
                f"{files['labels']}: expected uint8 {self.images.shape[:3]} to match the images, "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if n == 0:
            raise ValueError(f"{self.path}: the split is empty")
        try:
            info = read_manifest(self.path.parent)["splits"].get(self.path.name, {})
        except FileNotFoundError:  # arrays without a manifest (written by hand): numbered ids
            info = {}
        self.names: list[str] = info.get("names") or [f"{self.path.name}_{i:06d}" for i in range(n)]
        if len(self.names) != n:
            raise ValueError(
                f"{self.path.parent / 'manifest.json'}: lists {len(self.names)} image ids for split "
                f"'{self.path.name}' but {files['images']} holds {n} images; run `segmodels prepare --force`"
            )
        self.class_frequency: list[float] | None = info.get("class_frequency")
        self.instance_encoding: str | None = info.get("instances")  # e.g. "cityscapes": label id × 1000 + k
        self.instances: np.ndarray | None = self._instances(self.path / "instances.npy")

    def _instances(self, file: Path) -> np.ndarray | None:
        """``instances.npy`` by memory map (uint16, the shape of the labels), or None for a split without it."""
        if not file.is_file():
            if self.instance_encoding:
                raise FileNotFoundError(f"{file} not found, but {self.path.parent / 'manifest.json'} lists instance "
                                        f"ids for split '{self.path.name}'; run `segmodels prepare --force`")  # fmt: skip
            return None
        try:
            instances = np.load(file, mmap_mode="r")
        except ValueError as exc:
            raise ValueError(f"{file}: not a packed array of instance ids ({exc})") from None
        if instances.dtype != np.uint16 or instances.shape != self.labels.shape:
            raise ValueError(f"{file}: expected uint16 {self.labels.shape} to match the labels, "
                             f"got {instances.dtype} {instances.shape}")  # fmt: skip
        return instances

    def with_images(self, images: np.ndarray) -> PackedSplit:
        """The split's first ``len(images)`` images with other pixels (corrupted copies, say): their labels, instance
        ids and names, and ``images`` (N', H, W, 3) uint8 of the packed size as their pixels. Read in this process
        only: it cannot be sent to another by its path."""
        n = len(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.images.shape[1:] or not 0 < n <= len(self):
            raise ValueError(f"replacement images for {self.path}: expected uint8 (N, {self.size[0]}, {self.size[1]}, "
                             f"3) with 1 <= N <= {len(self)}, got {images.dtype} {tuple(images.shape)}")  # fmt: skip
        other = copy.copy(self)
        other.images, other.labels, other.names = images, self.labels[:n], self.names[:n]
        other.instances = None if self.instances is None else self.instances[:n]
        other._replaced = True
        return other

    def __getstate__(self) -> dict:  # reopen by path in another process instead of copying the arrays
        if getattr(self, "_replaced", False):
            raise TypeError(f"{self!r} holds images of its own (with_images): it cannot be reopened by its path")
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the packed images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __repr__(self) -> str:
        return f"PackedSplit({str(self.path)!r}, n={len(self)}, size={self.size})"


@functools.lru_cache(maxsize=8)
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) → float32 (N, 3, H, W), ImageNet-normalised, on the same device."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    mean, std = _stats(images.device)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - mean) / std).contiguous()


@functools.lru_cache(maxsize=1)
def _per_thread_intra_op() -> bool:
    """Whether torch.set_num_threads only affects the calling thread (the OpenMP backend; not TBB or native)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _generator(*key: int) -> torch.Generator:
    # SeedSequence mixes the key into well-spread seeds: nearby steps do not get correlated streams
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _gather(split: PackedSplit, idx: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the rows ``idx`` out of the memory map, into page-locked memory when ``pin``."""
    h, w = split.size
    images = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=pin)
    labels = torch.empty((len(idx), h, w), dtype=torch.uint8, pin_memory=pin)
    np.take(split.images, idx, axis=0, out=images.numpy())
    np.take(split.labels, idx, axis=0, out=labels.numpy())
    return images, labels


def _gather_windows(
    split: PackedSplit, idx: np.ndarray, windows: np.ndarray, held: tuple[int, int], pin: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy only each row's window ``[y0, y1) × [x0, x1)`` out of the memory map, at the top-left of a buffer of
    ``held`` pixels; the row and column just past a smaller window repeat its edge (the 'border' padding of the
    resampling may give them a weight of a rounding error)."""
    hh, hw = held
    if (windows[:, 1] - windows[:, 0]).max() > hh or (windows[:, 3] - windows[:, 2]).max() > hw:
        raise AssertionError(f"a crop window is larger than the buffer {held}: {windows.tolist()}")
    images = torch.empty((len(idx), hh, hw, 3), dtype=torch.uint8, pin_memory=pin)
    labels = torch.empty((len(idx), hh, hw), dtype=torch.uint8, pin_memory=pin)
    im, lab = images.numpy(), labels.numpy()
    for k, (i, (y0, y1, x0, x1)) in enumerate(zip(idx.tolist(), windows.tolist(), strict=True)):
        wh, ww = y1 - y0, x1 - x0
        im[k, :wh, :ww] = split.images[i, y0:y1, x0:x1]
        lab[k, :wh, :ww] = split.labels[i, y0:y1, x0:x1]
        if wh < hh:
            im[k, wh, :ww] = im[k, wh - 1, :ww]
        if ww < hw:
            im[k, : min(wh + 1, hh), ww] = im[k, : min(wh + 1, hh), ww - 1]
    return images, labels


def _as_split(split: PackedSplit | str | Path) -> PackedSplit:
    return split if isinstance(split, PackedSplit) else PackedSplit(split)


class TrainLoader:
    """Augmented training batches, deterministic in (seed, step, rank); see the module docstring."""

    def __init__(
        self,
        split: PackedSplit | str | Path,
        *,
        batch_size: int,
        crop_size: tuple[int, int] | list[int],
        scale_range: tuple[float, float] | list[float] = (0.5, 2.0),
        flip: bool = True,
        photometric: bool = True,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        cat_max_ratio: float = 1.0,
        contrast_center: str = "mean",
    ) -> None:
        self.split = _as_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be [height, width] of positive integers, got {list(crop_size)}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1] (1: off), got {cat_max_ratio}")
        self.batch_size, self.crop_size = batch_size, (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip, self.photometric = flip, photometric
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.cat_max_ratio, self.contrast_center = float(cat_max_ratio), contrast_center
        self._pin = self.device.type == "cuda"
        # The buffer the crop windows are copied into: the largest window the scale range allows, so that its size
        # (and with it the rounding of every sample's resampling) does not depend on which samples share a batch.
        self._held = tuple(min(size, int(np.ceil((crop - 1) / self.scale_range[0])) + 5)
                           for size, crop in zip(self.split.size, self.crop_size, strict=True))  # fmt: skip
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def steps_per_epoch(self) -> int:
        """Steps after which every rank together has seen each image once."""
        return -(-len(self.split) // (self.batch_size * self.world_size))

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:  # the same on every rank: only the seed and the epoch enter it
            perm = torch.randperm(len(self.split), generator=_generator(self.seed, epoch, 1)).numpy()
            with self._lock:  # prefetch threads share the cache
                if len(self._perms) > 4:
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = perm
        return perm

    def indices(self, step: int) -> np.ndarray:
        """Indices into the split of this rank's batch at ``step``."""
        n, b = len(self.split), self.batch_size
        start = step * b * self.world_size + self.rank * b
        positions = np.arange(start, start + b)
        return np.array([self._perm(int(p // n))[p % n] for p in positions], dtype=np.int64)

    def _host(self, steps: list[int]):
        """The CPU part for consecutive ``steps``: the augmentation parameters, then only the part of each image
        that its crop reads (:func:`~segmodels.data.augment.source_windows`) copied out of the memory map."""
        per_step = [self.indices(step) for step in steps]
        idx = np.concatenate(per_step)
        params = []
        for step, rows in zip(steps, per_step, strict=True):
            drawn = sample_params(
                _generator(self.seed, step, self.rank, 2),
                self.batch_size,
                self.split.size,
                self.crop_size,
                scale_range=self.scale_range,
                flip=self.flip,
                photometric=self.photometric,
            )
            if self.cat_max_ratio < 1:  # crops where one class dominates are redrawn, from a stream of their own
                drawn = redraw_crops(_generator(self.seed, step, self.rank, 3), drawn,
                                     [self.split.labels[i] for i in rows], self.crop_size,
                                     cat_max_ratio=self.cat_max_ratio, ignore_index=IGNORE_INDEX)  # fmt: skip
            params.append(drawn)
        params = AugmentParams.concat(params)
        windows = source_windows(params, self.split.size, self.crop_size)
        images, labels = _gather_windows(self.split, idx, windows, self._held, self._pin)
        return images, labels, params, windows

    def _device(self, host) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The device part: one augmentation over all the steps' samples, split back into batches."""
        images, labels, params, windows = host
        images = images.to(self.device, non_blocking=self._pin)
        labels = labels.to(self.device, non_blocking=self._pin)
        x, y = augment_batch(images, labels, params, self.crop_size, MEAN, STD, ignore_index=IGNORE_INDEX,
                             in_size=self.split.size, windows=windows,
                             contrast_center=self.contrast_center)  # fmt: skip
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 (B, 3, ch, cw) normalised, labels int64 (B, ch, cw)) on the device, for ``step``."""
        return self._device(self._host([step]))[0]

    def iterate(
        self, start_step: int = 0, *, prefetch: int = 2, workers: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from ``start_step`` on, endlessly, prepared ahead by ``workers`` background threads.

        Each sample's augmentation depends only on (seed, step, rank, its place in the batch), so several steps
        are augmented in one call (a chunk of at least 16 samples on the CPU, where fixed costs per call would
        dominate small batches) and yielded one by one. On a GPU the threads gather into pinned memory and the
        device work stays on the caller's stream; on the CPU they make whole batches, each thread with one
        intra-op thread. Chunks go round the threads and come back in step order, so the batches are the same
        for any number of workers.
        """
        chunk = 1 if self._pin else max(1, -(-16 // self.batch_size))
        n = max(int(workers), 1)
        queues: list[queue.Queue] = [queue.Queue(maxsize=max(prefetch, 1)) for _ in range(n)]
        stop = threading.Event()
        threads = torch.get_num_threads()  # also settles the caller's own setting before the workers change theirs

        def stage(steps: list[int]):
            return self._host(steps) if self._pin else self._device(self._host(steps))

        single = not self._pin and _per_thread_intra_op()

        def work(k: int) -> None:
            if single:
                # One intra-op thread per worker, as PyTorch's own pin-memory thread does, so that the workers and
                # the model's threads do not oversubscribe the cores (a per-thread setting with OpenMP; threads
                # started meanwhile inherit it, hence the reset at the end).
                torch.set_num_threads(1)
            j = k
            try:
                while not stop.is_set():
                    first = start_step + j * chunk
                    try:
                        item = (True, stage(list(range(first, first + chunk))))
                    except BaseException as exc:  # handed to the consumer, which raises it
                        item = (False, exc)
                    while not stop.is_set():
                        try:
                            queues[k].put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if not item[0]:
                        return
                    j += n
            finally:
                if single:
                    torch.set_num_threads(threads)

        pool = [threading.Thread(target=work, args=(k,), name=f"TrainLoader-{k}", daemon=True) for k in range(n)]
        for thread in pool:
            thread.start()
        try:
            for k in itertools.cycle(range(n)):
                ok, value = queues[k].get()
                if not ok:
                    raise value
                yield from self._device(value) if self._pin else value
        finally:
            stop.set()
            for thread in pool:
                thread.join(timeout=5)


def val_batches(
    split: PackedSplit | str | Path,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Unaugmented batches at the packed resolution: (images float32 NCHW normalised, labels int64, indices).

    Rank ``r`` of ``world_size`` gets images r, r + world_size, …, so the ranks together cover the split once.
    ``indices`` is a CPU int64 tensor of positions in the split.
    """
    split = _as_split(split)
    device = torch.device(device)
    pin = device.type == "cuda"
    order = np.arange(rank, len(split), world_size, dtype=np.int64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        images, labels = _gather(split, idx, pin)
        x = normalize(images.to(device, non_blocking=pin))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels.to(device, non_blocking=pin).long(), torch.from_numpy(idx)


class WaitClock:
    """Iterates ``batches`` and adds up the time spent waiting for the next one: a loader that keeps up makes the
    training step wait for nothing (on a GPU, what remains is the copy and the augmentation kernels' launch)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches, self.seconds = iter(batches), 0.0

    def __iter__(self) -> WaitClock:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0

    def take(self) -> float:
        """The seconds waited since the last call."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds
