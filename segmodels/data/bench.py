"""Throughput of the training data path against the plain per-sample path, on the same generated data.

The plain path is what a course project typically writes: ``torchvision.datasets.Cityscapes`` on the raw tree,
PIL decoding, per-sample torchvision transforms (random resize, pad, crop, flip, ColorJitter, ToTensor,
Normalize, label-id lookup) in a ``DataLoader`` with worker processes. Ours gathers packed uint8 batches from a
memory map and augments whole batches at once (:class:`segmodels.data.loader.TrainLoader`), with as many
threads as the plain path has worker processes. Both produce batches of the same size and crop on the CPU; the
figures are samples per second after a warm-up and CPU time per sample (the latter is what a busy machine does
not change).
"""

from __future__ import annotations

import os
import platform
import random
import resource
import time
from pathlib import Path

import numpy as np

from segmodels.data._io import default_workers

__all__ = ["bench_data", "bench_generate_and_pack", "plain_loader"]


class _PlainTransforms:
    """Joint image/label transforms, one sample at a time, in the torchvision style."""

    def __init__(self, size, crop_size, scale_range, mean, std) -> None:
        from torchvision import transforms as T

        self.size, self.crop, self.scale_range = size, crop_size, scale_range
        self.jitter = T.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
        self.to_tensor, self.normalize = T.ToTensor(), T.Normalize(mean, std)

    def __call__(self, image, target):
        import torch
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode, RandomCrop

        from segmodels.data.labels import ID_TO_TRAINID

        s = random.uniform(*self.scale_range)
        h, w = max(int(self.size[0] * s), 1), max(int(self.size[1] * s), 1)
        image = TF.resize(image, [h, w], interpolation=InterpolationMode.BILINEAR)
        target = TF.resize(target, [h, w], interpolation=InterpolationMode.NEAREST)
        pad_h, pad_w = max(self.crop[0] - h, 0), max(self.crop[1] - w, 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
            target = TF.pad(target, [0, 0, pad_w, pad_h], fill=0)  # id 0 "unlabeled" → ignore
        i, j, ch, cw = RandomCrop.get_params(image, self.crop)
        image, target = TF.crop(image, i, j, ch, cw), TF.crop(target, i, j, ch, cw)
        if random.random() < 0.5:
            image, target = TF.hflip(image), TF.hflip(target)
        image = self.normalize(self.to_tensor(self.jitter(image)))
        return image, torch.from_numpy(ID_TO_TRAINID[np.asarray(target)]).long()


def plain_loader(raw: Path, *, batch_size: int, crop_size, size, scale_range, workers: int, seed: int = 0):
    """The plain per-sample pipeline as a DataLoader over the raw tree's training split."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import Cityscapes

    from segmodels.data.loader import MEAN, STD

    dataset = Cityscapes(
        str(raw),
        split="train",
        mode="fine",
        target_type="semantic",
        transforms=_PlainTransforms(size, crop_size, scale_range, MEAN, STD),
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def _time_batches(iterator, batches: int, warmup: int, min_seconds: float) -> tuple[int, float, float, tuple]:
    """(batches, seconds, CPU seconds of this process, last batch) over at least ``batches`` batches and
    ``min_seconds``, after ``warmup`` batches."""
    for _ in range(warmup):
        next(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    done, last = 0, None
    while done < batches or time.perf_counter() - start < min_seconds:
        last = next(iterator)
        done += 1
    return done, time.perf_counter() - start, time.process_time() - cpu, last


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # processes that have ended and been waited for
    return usage.ru_utime + usage.ru_stime


def bench_data(
    raw: Path,
    packed: Path,
    *,
    batch_size: int,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    workers: int = 2,
    batches: int = 30,
    warmup: int = 3,
    min_seconds: float = 3.0,
) -> dict:
    """Samples/s and CPU time per sample of both pipelines on the CPU.

    ``raw`` is a Cityscapes-layout tree and ``packed`` its packed folder. CPU time per sample does not depend on
    what else the machine runs, samples/s does: both are reported. The plain path's CPU time is that of its
    worker processes (counted when they exit) plus the main process, divided by every sample they may have made,
    prefetched ones included, so it errs on the low side.
    """
    import gc

    import torch

    from segmodels.data.loader import PackedSplit, TrainLoader

    split = PackedSplit(Path(packed) / "train")
    ours = TrainLoader(split, batch_size=batch_size, crop_size=crop_size, scale_range=scale_range, device="cpu")
    stream = ours.iterate(0, workers=max(workers, 1))  # as many threads as the plain path has processes
    n_ours, t_ours, cpu_ours, (y, _) = _time_batches(stream, batches, warmup, min_seconds)
    stream.close()

    children = _children_cpu()
    own = time.process_time()
    loader = plain_loader(
        Path(raw), batch_size=batch_size, crop_size=crop_size, size=split.size, scale_range=scale_range, workers=workers
    )
    it = iter(loader)
    n_plain, t_plain, _, (x, _) = _time_batches(_epochs(loader, it), batches, warmup, min_seconds)
    del it, loader
    gc.collect()  # shuts the workers down, so their CPU time is counted
    cpu_plain = time.process_time() - own + _children_cpu() - children
    made_plain = (n_plain + warmup + 2 * workers) * batch_size  # 2 batches prefetched per worker at most
    if x.shape != y.shape:
        raise AssertionError(f"pipelines disagree on the batch shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    ours_sps, plain_sps = n_ours * batch_size / t_ours, n_plain * batch_size / t_plain
    ours_ms, plain_ms = 1000 * cpu_ours / (n_ours * batch_size), 1000 * cpu_plain / made_plain
    return {
        "batch_shape": list(y.shape),
        "packed_size": list(split.size),
        "batches": {"ours": n_ours, "plain": n_plain},
        "workers": workers,
        "ours_samples_per_s": round(ours_sps, 1),
        "plain_samples_per_s": round(plain_sps, 1),
        "speedup": round(ours_sps / plain_sps, 2),
        "ours_cpu_ms_per_sample": round(ours_ms, 3),
        "plain_cpu_ms_per_sample": round(plain_ms, 3),
        "cpu_speedup": round(plain_ms / ours_ms, 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "device": f"cpu ({platform.processor() or platform.machine()}, {default_workers()} cores)",
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _epochs(loader, first):
    """Batches of ``loader`` across epochs, starting with the iterator ``first``."""
    yield from first
    while True:
        yield from loader


def bench_generate_and_pack(
    work: Path, *, train: int, val: int, raw_size, packed_size, seed: int = 0, workers: int | None = None
) -> tuple[dict, Path, Path]:
    """Generate and pack a dataset under ``work``, timing both steps; returns (timing, raw root, packed folder)."""
    from segmodels.data.pack import prepare
    from segmodels.data.synthetic import SynthParams, generate

    raw, packed = Path(work) / "raw", Path(work) / "packed" / "synthetic"
    start = time.perf_counter()
    rendered = generate(raw, SynthParams(train=train, val=val, size=tuple(raw_size), seed=seed), workers=workers)
    t_synth = time.perf_counter() - start
    start = time.perf_counter()
    result = prepare(root=raw, out=packed, size=tuple(packed_size), source="synthetic", workers=workers)
    t_pack = time.perf_counter() - start
    timing = {
        "images": train + val,
        "generated_size": list(raw_size),
        "packed_size": list(packed_size),
        "generate_s": round(t_synth, 2),
        "pack_s": round(t_pack, 2),
        "generated": rendered,  # images rendered (0: the folder was already complete)
        "packed": not result.skipped,
    }
    return timing, raw, packed
