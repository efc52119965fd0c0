"""How many images one forward pass can take on the training device: ``train.micro_batch`` and ``train.accumulate``.

``train.batch_size`` is the batch of one optimizer step (the recipe's); on a card too small for it the step goes
through the model in micro-batches and accumulates their gradients (:class:`segmodels.engine.step.Stepper`).
``train.micro_batch: auto`` finds the largest micro-batch that fits before the first step: a forward and backward
pass at the config's crop and precision on random images, for each divisor of the per-GPU batch from the largest
down, until one runs without ``torch.cuda.OutOfMemoryError`` and its peak memory leaves :data:`HEADROOM` of the
card free. The probe leaves no trace in the training: the model's buffers (BatchNorm statistics), its gradients
and every random-number generator are put back as they were, so a run with ``auto`` trains exactly like one given
the micro-batch it found. The result is kept in ``last.pt``: a resumed run reuses it rather than searching again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from segmodels.engine.checkpoint import TrainState
    from segmodels.engine.step import SpeedSettings

__all__ = ["HEADROOM", "Accumulation", "OutOfMemory", "accumulation", "check_micro_batch", "divisors",
           "find_micro_batch", "is_out_of_memory", "oom_message", "run_accumulation", "single_image_refusal"]

HEADROOM = 0.10  # of the card's memory left free by the micro-batch the search keeps


class OutOfMemory(RuntimeError):
    """Training ran out of device memory; the message says which setting to change."""


@dataclass(frozen=True)
class Accumulation:
    micro_batch: int  # images per forward pass, on each GPU
    accumulate: int  # micro-batches per optimizer step
    searched: bool = False  # found by train.micro_batch: auto


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, largest first."""
    return [d for d in range(n, 0, -1) if n % d == 0]


def accumulation(micro_batch: int | str | None, accumulate: int, per_gpu: int) -> Accumulation | None:
    """The accumulation ``train.micro_batch`` / ``train.accumulate`` set for a per-GPU batch of ``per_gpu`` images;
    None for ``auto`` (to be searched)."""
    if micro_batch == "auto":
        return None
    micro = int(micro_batch) if micro_batch is not None else per_gpu // accumulate if per_gpu % accumulate == 0 else 0
    if micro < 1 or per_gpu % micro:
        raise ValueError(f"train.micro_batch {micro_batch} / train.accumulate {accumulate} do not split the batch of "
                         f"{per_gpu} images per GPU into equal micro-batches")  # fmt: skip
    return Accumulation(micro, per_gpu // micro)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (CUDA's error, or an allocator's message)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _probe(model: nn.Module, micro: int, crop: tuple[int, int], device: torch.device,
           amp_dtype: torch.dtype | None, channels_last: bool) -> None:  # fmt: skip
    """One forward and backward pass of ``micro`` random crops (what a training micro-batch costs)."""
    x = torch.randn(micro, 3, *crop, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with autocast:
        out = model(x)
        loss = sum(v.float().mean() for v in (out.values() if isinstance(out, dict) else [out]))
    loss.backward()


def single_image_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot train on micro-batches of one image, or None: a BatchNorm after a global pooling
    (:func:`segmodels.models.norms.pooled_batchnorms`) would normalise one value per channel."""
    from segmodels.models.norms import pooled_batchnorms

    pooled = pooled_batchnorms(model)
    if not pooled:
        return None
    return (f"a micro-batch of 1 image cannot train it: the BatchNorm {pooled[0]} reads a globally pooled 1×1 map "
            "(PPM's 1×1 bin, ASPP's image pooling), one value per channel; use micro-batches of 2 or more "
            "(train.micro_batch, train.accumulate), or model.norm: group (or sync, across GPUs)")  # fmt: skip


def check_micro_batch(model: nn.Module, acc: Accumulation, where: str) -> None:
    """Raise ValueError, ``where`` first, when ``acc`` gives ``model`` micro-batches of one image it cannot train on
    (:func:`single_image_refusal`): what training, ``segmodels plan`` and its calibration say before any work."""
    if acc.micro_batch == 1 and (refusal := single_image_refusal(model)) is not None:
        raise ValueError(f"{where}: {refusal}")


def find_micro_batch(
    model: nn.Module, per_gpu: int, crop: tuple[int, int], device: torch.device, *,
    amp_dtype: torch.dtype | None = None, channels_last: bool = False,
    probe: Callable[..., None] | None = None, total_memory: int | None = None,
) -> Accumulation:  # fmt: skip
    """The largest divisor of ``per_gpu`` whose forward and backward fit the device with :data:`HEADROOM` to spare;
    ``probe`` (default :func:`_probe`) runs one micro-batch. On the CPU there is no memory limit to find: the whole
    batch. One image is not tried where the model cannot train on it (:func:`single_image_refusal`). Raises
    :class:`OutOfMemory` when no micro-batch fits."""
    probe = probe or _probe
    refusal = single_image_refusal(model)
    smallest = 1 if refusal is None else 2
    cuda = device.type == "cuda"
    if total_memory is None and cuda:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    buffers = {k: v.detach().clone() for k, v in model.state_dict().items()}
    devices = [device.index or 0] if cuda else []
    tried = []
    try:
        with torch.random.fork_rng(devices=devices):
            for micro in (d for d in divisors(per_gpu) if d >= smallest):
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    probe(model, micro, crop, device, amp_dtype, channels_last)
                except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    tried.append(f"{micro}: out of memory")
                    continue
                finally:
                    model.zero_grad(set_to_none=True)
                peak = torch.cuda.max_memory_allocated(device) if cuda else 0
                if total_memory and peak > (1 - HEADROOM) * total_memory:
                    tried.append(f"{micro}: {peak / 2**30:.1f} of {total_memory / 2**30:.1f} GiB")
                    continue
                return Accumulation(micro, per_gpu // micro, searched=True)
    finally:
        with torch.no_grad():
            model.load_state_dict(buffers)
        if cuda:
            torch.cuda.empty_cache()
    memory = f"{total_memory / 2**30:.1f} GiB" if total_memory else "its memory"
    if smallest > 1:
        raise OutOfMemory(f"train.micro_batch auto: not even {smallest} {crop[0]}×{crop[1]} crops fit the device "
                          f"({memory}; tried {', '.join(tried) or 'none: the batch per GPU is 1'}) and one image "
                          f"is not enough: {refusal}")  # fmt: skip
    raise OutOfMemory(f"train.micro_batch auto: not even one {crop[0]}×{crop[1]} crop fits the device ({memory}; "
                      f"tried {', '.join(tried)}); use a smaller train.crop_size or a larger card")  # fmt: skip


def oom_message(model_name: str, acc: Accumulation, crop: tuple[int, int], precision: str,
                device: torch.device) -> str:  # fmt: skip
    """One line for an out-of-memory during training: what ran, on what card, and the setting to change."""
    where = "the CPU"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    advice = ("set train.micro_batch: auto, or a larger train.accumulate" if acc.micro_batch > 1
              else "use a smaller train.crop_size")  # fmt: skip
    return (f"out of memory training {model_name}: micro-batch {acc.micro_batch} (accumulate {acc.accumulate}) of "
            f"{crop[0]}×{crop[1]} crops in {precision} on {where}; {advice}. last.pt keeps the last saved state: "
            "run again to resume")  # fmt: skip


def run_accumulation(state: TrainState, speed: SpeedSettings, saved: dict[str, Any] | None) -> Accumulation:
    """The micro-batch and accumulation of this run: as configured, or for ``train.micro_batch: auto`` the one
    ``last.pt`` recorded, else searched on the device (the smallest any GPU found)."""
    t, info = state.cfg.train, state.info
    per_gpu = t.batch_size // info.world_size
    acc = accumulation(t.micro_batch, t.accumulate, per_gpu)
    if acc is not None:
        check_micro_batch(state.model, acc, str(state.folder.path))
        return acc
    recorded = (saved or {}).get("accumulation")
    if recorded and recorded.get("micro_batch") and per_gpu % int(recorded["micro_batch"]) == 0:
        return Accumulation(int(recorded["micro_batch"]), per_gpu // int(recorded["micro_batch"]), searched=True)
    found = find_micro_batch(state.model, per_gpu, tuple(t.crop_size), state.device, amp_dtype=speed.amp_dtype,
                             channels_last=speed.channels_last)  # fmt: skip
    if info.enabled:  # every rank the same micro-batch: the smallest any found (a divisor of the same batch)
        micro = torch.tensor(found.micro_batch, device=state.device)
        torch.distributed.all_reduce(micro, op=torch.distributed.ReduceOp.MIN)
        found = Accumulation(int(micro.item()), per_gpu // int(micro.item()), searched=True)
    if info.is_main:
        print(f"train.micro_batch auto: {found.micro_batch} images per forward pass, {found.accumulate} per step",
              flush=True)  # fmt: skip
    return found
