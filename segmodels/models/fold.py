"""The inference-ready copy of a model: BatchNorm folded into the convolution before it, no dropout, no
auxiliary head that only training reads.

In eval mode a BatchNorm is an affine map per channel, ``y = γ (x - μ) / sqrt(σ² + ε) + β``, so after a
convolution it can be merged into that convolution's weights and bias (``W' = W γ / sqrt(σ² + ε)``, ``b' = (b - μ)
γ / sqrt(σ² + ε) + β``; Ioffe & Szegedy 2015 note the eval-time transform is linear). Each folded pair saves one
pass over a feature map, which on a CPU is memory-bound work as long as the convolution's own.

A pair is folded only where the code guarantees that the BatchNorm reads the convolution's output and nothing
else does:

* consecutive children of a plain ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, the inverted
  residuals of MobileNetV2/V3, ResNet's ``downsample``) — a subclass only when it keeps Sequential's forward;
* consecutive children of torchvision's ``IntermediateLayerGetter`` (ResNet's stem ``conv1``/``bn1``), unless the
  convolution's own output is one of the returned feature maps;
* in both, a plain ``nn.Sequential`` ending in a convolution counts as that convolution (the deep stem of the
  ResNet-V1c backbones: ``conv1`` = conv-BN-ReLU-conv-BN-ReLU-conv, then ``bn1``);
* the named pairs of block classes listed in :data:`FOLDABLE_BLOCKS` (torchvision's ``BasicBlock`` and
  ``Bottleneck``, whose forward applies ``bnK(convK(x))``), and of timm's ResNet blocks, named in
  :data:`FOLDABLE_BLOCK_NAMES` so that folding needs no timm import. A backbone of one's own adds its block there.

Any other BatchNorm stays (:func:`fold_report` counts it). Dropout becomes ``nn.Identity`` (it is one already in
eval mode, but an exporter then need not reason about it). The auxiliary head is dropped unless the head is a
cascade (OCR), whose eval forward reads the auxiliary logits. The copy's forward gives what the original's eval
forward gives (``{"out": logits}``) up to float rounding; it must not be trained.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["FOLDABLE_BLOCKS", "FOLDABLE_BLOCK_NAMES", "fold_report", "inference_model"]

# Block class → (convolution, BatchNorm) attribute pairs its forward applies as ``bn(conv(x))`` and nowhere else.
FOLDABLE_BLOCKS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
# The same for classes named "module.qualname" (exact classes): timm's ResNet blocks apply bnK(convK(x)) too.
FOLDABLE_BLOCK_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "timm.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "timm.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_FOLDED = "_folded_batchnorms"  # attribute of a model made by inference_model: how many BatchNorms it folded


def _can_fold(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    # The exact classes: a subclass may do more in its forward (timm's BatchNormAct2d applies an activation).
    return (
        type(conv) is nn.Conv2d
        and type(bn) in _NORMS
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _output_conv(parent: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Where the module whose output child ``name`` of ``parent`` gives is: the child itself, or, for a plain
    Sequential, its last child (recursively)."""
    child = parent._modules[name]
    while _plain_sequential(child) and len(child):
        parent, name = child, list(child._modules)[-1]
        child = parent._modules[name]
    return parent, name


# A foldable pair: (the convolution's parent, its name, the BatchNorm's parent, its name).
_Pair = tuple[nn.Module, str, nn.Module, str]


def _ordered_pairs(parent: nn.Module, skip: set[str]) -> Iterator[_Pair]:
    names = list(parent._modules)
    for first, second in zip(names, names[1:], strict=False):
        holder, conv = _output_conv(parent, first)
        if first not in skip and _can_fold(holder._modules[conv], parent._modules[second]):
            yield holder, conv, parent, second


def _block_pairs(parent: nn.Module) -> tuple[tuple[str, str], ...]:
    for block, pairs in FOLDABLE_BLOCKS.items():
        if isinstance(parent, block):
            return pairs
    return FOLDABLE_BLOCK_NAMES.get(f"{type(parent).__module__}.{type(parent).__qualname__}", ())


def _pairs_of(parent: nn.Module) -> list[_Pair]:
    """The (convolution, BatchNorm) pairs read by ``parent``'s forward that can be folded."""
    if _plain_sequential(parent):
        return list(_ordered_pairs(parent, set()))
    if isinstance(parent, IntermediateLayerGetter):
        return list(_ordered_pairs(parent, set(parent.return_layers)))
    return [(parent, c, parent, b) for c, b in _block_pairs(parent)
            if _can_fold(getattr(parent, c, None), getattr(parent, b, None))]  # fmt: skip


def _foldable(model: nn.Module) -> Iterator[_Pair]:
    for parent in model.modules():
        yield from _pairs_of(parent)


def _fused(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """``conv`` with ``bn`` merged in; the arithmetic in float64, the result in the convolution's dtype."""
    fused = copy.deepcopy(conv)
    bias = conv.bias.double() if conv.bias is not None else None
    affine = [t.double() if t is not None else None for t in (bn.weight, bn.bias)]
    weight, bias = fuse_conv_bn_weights(conv.weight.double(), bias, bn.running_mean.double(),
                                        bn.running_var.double(), bn.eps, *affine)  # fmt: skip
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return fused


def _drops_aux(model: nn.Module) -> bool:
    return getattr(model, "aux_head", None) is not None and not getattr(model, "cascade", False)


def inference_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every foldable BatchNorm folded into its convolution, dropout
    replaced by ``nn.Identity`` and the auxiliary head dropped (kept for a cascade head); ``model`` is unchanged.

    The copy's forward returns what ``model.eval()`` returns, the main logits under ``"out"``.
    """
    folded = copy.deepcopy(model).eval()
    if _drops_aux(folded):
        folded.aux_head = None
    with torch.no_grad():
        pairs = list(_foldable(folded))
        for holder, conv, parent, bn in pairs:
            holder._modules[conv] = _fused(holder._modules[conv], parent._modules[bn])
            parent._modules[bn] = nn.Identity()
    for parent in list(folded.modules()):
        for name, child in parent._modules.items():
            if isinstance(child, nn.modules.dropout._DropoutNd):
                parent._modules[name] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    setattr(folded, _FOLDED, getattr(model, _FOLDED, 0) + len(pairs))
    return folded


def fold_report(model: nn.Module) -> dict[str, Any]:
    """What :func:`inference_model` did to ``model``, or would do to it.

    ``folded``: BatchNorms already folded (0 for a model not made by :func:`inference_model`); ``foldable``: the
    BatchNorms it would still fold; ``batchnorm_left``: every BatchNorm the model holds (including the foldable
    ones); ``unfoldable``: those without a foldable convolution before them; ``dropout``: Dropout modules;
    ``training_aux_head``: whether an auxiliary head that only training reads is still in the model.
    """
    foldable = len(list(_foldable(model)))
    left = sum(isinstance(m, _NORMS) for m in model.modules())
    return {
        "folded": int(getattr(model, _FOLDED, 0)),
        "foldable": foldable,
        "batchnorm_left": left,
        "unfoldable": left - foldable,
        "dropout": sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()),
        "training_aux_head": _drops_aux(model),
    }
