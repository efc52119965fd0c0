"""The normalisation layers of a model (``model.norm``): BatchNorm, SyncBatchNorm or GroupNorm.

- ``batch``: every model as its builders make it, BatchNorm over each GPU's micro-batch.
- ``sync``: the same modules; training under DDP on CUDA converts them to ``nn.SyncBatchNorm``, so the statistics
  pool the micro-batches of all GPUs (mmsegmentation's ``norm_cfg=dict(type='SyncBN')``). One process, or the
  CPU, trains as ``batch``; the checkpoint is the same either way.
- ``group``: every BatchNorm becomes a GroupNorm of :func:`group_count` groups (32, or the largest count that
  divides the channels: ``gcd(32, C)``), with the BatchNorm's affine weights carried over (ImageNet's where the
  backbone is pretrained) and its running statistics dropped, as mmsegmentation loads a BatchNorm checkpoint
  into ``norm_cfg=dict(type='GN')``. GroupNorm normalises each image on its own: the gradient of a batch does
  not depend on how it is split into micro-batches (``train.accumulate``), and evaluation normalises as
  training did. What it costs: the pretrained backbone starts from other statistics than it was trained with,
  and nothing is folded into the convolutions for deployment.

The conversion runs after the backbone's weights are loaded, and on a checkpoint's model before its weights are:
a GroupNorm's state is its ``weight`` and ``bias``, the BatchNorm's names, so the keys line up.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GROUPS", "NORMS", "GroupNormAct", "apply_norm", "group_count", "pooled_batchnorms", "to_group_norm",
           "training_norms"]

NORMS = ("batch", "sync", "group")  # model.norm
GROUPS = 32  # GroupNorm's groups where the channels allow (Wu & He 2018; mmsegmentation's GN configs)
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def group_count(channels: int) -> int:
    """Groups of a GroupNorm over ``channels``: 32 where 32 divides them, else the largest count that does."""
    return math.gcd(GROUPS, channels)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, then the dropout and activation of the norm-and-activation module it replaces (timm's
    ``BatchNormAct2d``, which holds its activation as ``act`` and its dropout as ``drop``)."""

    def __init__(self, num_groups: int, num_channels: int, *, eps: float, affine: bool, drop: nn.Module,
                 act: nn.Module) -> None:  # fmt: skip
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _group_norm_of(bn: nn.modules.batchnorm._BatchNorm, where: str) -> nn.GroupNorm:
    channels = bn.num_features
    if type(bn) in _PLAIN:
        gn = nn.GroupNorm(group_count(channels), channels, eps=bn.eps, affine=bn.affine)
    elif isinstance(getattr(bn, "act", None), nn.Module) and isinstance(getattr(bn, "drop", None), nn.Module):
        gn = GroupNormAct(group_count(channels), channels, eps=bn.eps, affine=bn.affine, drop=bn.drop, act=bn.act)
    else:
        raise ValueError(
            f"model.norm: group cannot replace {where} ({type(bn).__module__}.{type(bn).__name__}): it is neither "
            "a plain BatchNorm nor a norm-and-activation module with 'act' and 'drop'; use model.norm: batch or sync"
        )
    if bn.affine:
        gn.weight.data.copy_(bn.weight.data)
        gn.bias.data.copy_(bn.bias.data)
    return gn.to(device=bn.weight.device if bn.affine else None)


def to_group_norm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm replaced in place by a GroupNorm (:func:`group_count` groups, the same
    affine weights and eps, no running statistics); returns it. A BatchNorm subclass it cannot mirror (one with
    behaviour of its own) raises ValueError naming the module."""
    replaced = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                path = f"{name}.{child_name}" if name else child_name
                replaced.append((module, child_name, _group_norm_of(child, path)))
    for parent, child_name, gn in replaced:
        setattr(parent, child_name, gn)
    return model


def apply_norm(model: nn.Module, norm: str) -> nn.Module:
    """``model`` with the normalisation ``model.norm`` asks for (``sync`` is applied by training under DDP)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return to_group_norm(model) if norm == "group" else model


def training_norms(model: nn.Module, norm: str, *, distributed: bool, device_type: str) -> nn.Module:
    """The model as training runs it: with ``sync``, under DDP on CUDA, every BatchNorm a SyncBatchNorm (the CPU's
    gloo backend has none, and one process has nothing to pool); ``model`` itself otherwise."""
    if norm == "sync" and distributed and device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _pools_to_one(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and module.output_size in (1, (1, 1))


def pooled_batchnorms(model: nn.Module) -> list[str]:
    """The BatchNorms that read a globally pooled (1×1) map: those of PPM's 1×1 bin and ASPP's image pooling, each
    after an ``AdaptiveAvgPool2d(1)`` in the same ``nn.Sequential``. In training they see one value per channel and
    image, so a micro-batch of one image cannot be normalised (torch raises); SyncBatchNorm pools the GPUs' images
    and GroupNorm normalises over channels, so neither is listed."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        pooled = next((i for i, (_, child) in enumerate(children) if _pools_to_one(child)), None)
        if pooled is None:
            continue
        for child_name, child in children[pooled + 1:]:
            for sub_name, sub in child.named_modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not isinstance(sub, nn.SyncBatchNorm):
                    found.append(".".join(part for part in (name, child_name, sub_name) if part))
    return found
