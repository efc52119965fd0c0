"""A tiny SegFormer (MiT encoder and MLP decoder) with fixed weights and input, for the shipped reference logits.

``tests/data/mit_reference.npz`` holds the logits Hugging Face's ``SegformerForSemanticSegmentation`` computes for
this model, its weights and its input (written by ``tests/data/make_mit_reference.py``, which needs
``transformers``); the test recomputes them with our code alone. Weights and input are drawn from NumPy's legacy
``RandomState``, whose streams NumPy keeps unchanged across versions, one seed per parameter name, so the file holds
the logits only (a few KB) and a checksum of what they were computed from.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from segmodels.models.backbones.mit import MiTConfig, MixVisionTransformer, wrap_mit
from segmodels.models.heads.segformer import SegFormerHead
from segmodels.models.segmentor import SegmentationModel

__all__ = ["CLASSES", "CONFIG", "DECODER_CHANNELS", "REFERENCE", "SIZE", "checksum", "fixed_input", "tiny_segformer"]

REFERENCE = Path(__file__).parent / "data" / "mit_reference.npz"
# Four stages with two blocks in one (block indices), every head width 8 (so the attention scale is 8 ** -0.5),
# sequence reduction at the first three stages.
CONFIG = MiTConfig(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4))
DECODER_CHANNELS = 8
CLASSES = 3
SIZE = (64, 96)  # stage 1 at 16×24 tokens, its keys and values reduced 8× to 2×3


def _fixed_(name: str, tensor: torch.Tensor) -> None:
    """Values that keep activations near unit scale, so attention weights are far from uniform and every scale and
    normalisation shows in the logits: matrices uniform with variance 3 / fan-in, norm scales and variances in
    [0.5, 1.5), biases and means in [-0.5, 0.5)."""
    u = torch.from_numpy(np.random.RandomState(zlib.crc32(name.encode())).uniform(size=tuple(tensor.shape)))
    if tensor.ndim >= 2:
        fan_in = tensor[0].numel()
        tensor.copy_((2 * u - 1) * 3 / fan_in**0.5)
    elif name.endswith(("weight", "running_var")):
        tensor.copy_(0.5 + u)
    else:
        tensor.copy_(u - 0.5)


def tiny_segformer() -> SegmentationModel:
    """The model in float64 and eval mode, with its fixed weights (our key layout, ``backbone.body.*`` and
    ``head.*``)."""
    backbone = wrap_mit(MixVisionTransformer(CONFIG), 32)
    head = SegFormerHead(CONFIG.embed_dims, CLASSES, channels=DECODER_CHANNELS)
    model = SegmentationModel(backbone, head, None, backbone_name="mit-tiny", head_name="segformer",
                              num_classes=CLASSES, output_stride=32).double().eval()  # fmt: skip
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                _fixed_(name, tensor)
    return model


def fixed_input() -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(0).standard_normal((1, 3, *SIZE)))


def checksum(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Sum of |weights| and |input|: the same number means the same draws."""
    return float(sum(v.abs().sum() for v in model.state_dict().values() if v.is_floating_point()) + x.abs().sum())


def decoder_logits(model: SegmentationModel, x: torch.Tensor) -> torch.Tensor:
    """The decoder's logits at a quarter of the input, as Hugging Face's model returns them."""
    with torch.no_grad():
        maps = model.backbone(x)
        return model.head([maps[key] for key in model.head_stages])["out"]
