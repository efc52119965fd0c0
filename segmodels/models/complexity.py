"""Model size and cost: parameter count and FLOPs of one forward pass.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as two
FLOPs and covers convolutions and matrix products (the dominant cost; element-wise ops, pooling and
interpolation are not counted). Many papers quote multiply-adds as "FLOPs": divide by two to compare.
The count depends only on shapes, so a model built on the "meta" device (no memory, no arithmetic)
gives the same number instantly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, size: Sequence[int], batch_size: int = 1) -> int:
    """FLOPs of one eval-mode forward of a (batch_size, 3, H, W) input; ``size`` is (H, W)."""
    if len(size) != 2 or min(size) < 1 or batch_size < 1:
        raise ValueError(
            f"count_flops needs size (H, W) of positive integers and batch_size >= 1, got {size}, {batch_size}"
        )
    reference = next(model.parameters())
    x = torch.zeros(batch_size, 3, *size, device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
