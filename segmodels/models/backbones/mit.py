"""Mix Transformer (MiT) encoders MiT-B0, B1 and B2: the hierarchical encoder of SegFormer (Xie et al. 2021,
"SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers", §3.1 and Table 6).

Four stages at strides 4, 8, 16 and 32, each an overlapping patch embedding (a strided convolution, 7×7 stride 4
for the first stage, 3×3 stride 2 after, then LayerNorm), a stack of transformer blocks and a LayerNorm. A block
is pre-norm efficient self-attention and a Mix-FFN, both residual with stochastic depth (rate rising linearly
from 0 to 0.1 over all blocks). Efficient self-attention shortens the keys and values by a sequence-reduction
ratio R (8, 4, 2, 1 per stage): a R×R convolution with stride R and a LayerNorm over the reshaped tokens, so
attention costs N·N/R² instead of N². The Mix-FFN puts a 3×3 depth-wise convolution between its two linear
layers (expansion 4) and needs no positional encoding: the zero padding of that convolution leaks position.

The module and parameter names are those of the released code and ImageNet weights (NVlabs/SegFormer's
``mix_transformer.py``, also mmsegmentation 0.x's): ``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``,
``block1.0.attn.kv.weight``, ``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight``, so their ``mit_b*.pth`` files
load as they are; Hugging Face's layout is converted by :mod:`segmodels.models.backbones.mit_weights`.

A transformer has no dilated form: the sequence reduction convolutions are sized for their stage's stride, and
at stride 8 the last stage would attend over 16 times as many tokens. The encoder therefore gives output stride 32
only (``OUTPUT_STRIDES``); the stage before the last (stride 16) is "aux", the last is "out".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from segmodels.models.backbones.base import Backbone, BackboneSpec, FeatureInfo, register_backbone, stage_keys

__all__ = ["MIT_CONFIGS", "OUTPUT_STRIDES", "MiTConfig", "MixVisionTransformer", "wrap_mit"]

OUTPUT_STRIDES = (32,)


@dataclass(frozen=True)
class MiTConfig:
    """One MiT size (the paper's Table 6); the other hyper-parameters are shared by every size."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    drop_path: float = 0.1  # stochastic depth of the last block; the first has 0


MIT_CONFIGS = {
    "mitb0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mitb1": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mitb2": MiTConfig(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
}
_BLOCK_EPS = 1e-6  # the blocks' and stage ends' LayerNorms (the released code's); the others keep torch's 1e-5


# Tokens (B, N, C) hold the memory of a channels-last map (B, H, W, C): the two views below move between them
# without a copy, and convolutions read and write channels-last maps as they are (on a CPU, the copies of
# transpose-and-reshape cost as much time as the convolutions).
def _to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens → a (B, C, H, W) map in channels-last memory."""
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map → (B, H·W, C) tokens (a view for a channels-last map)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with padding ``patch // 2`` (patches overlap), then LayerNorm over the tokens."""

    def __init__(self, in_channels: int, dim: int, *, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the tokens shortened by ``sr_ratio``²."""

    def __init__(self, dim: int, *, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not a multiple of its {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys, then values: one matrix, as in the released weights
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        # The scale on the queries (N × d) rather than on the scores (N × M): the same products, fewer multiplies.
        q = (self.q(x) * self.scale).reshape(b, n, heads, c // heads).transpose(1, 2)  # (B, heads, N, d)
        if self.sr_ratio > 1:
            x = self.norm(_to_tokens(self.sr(_to_map(x, h, w))))
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)  # (2, B, heads, M, d)
        k, v = kv[0], kv[1]
        # Written out rather than F.scaled_dot_product_attention: FLOP counters and exporters see every product.
        attention = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3×3 depth-wise convolution over the token grid (the Mix-FFN's positional cue)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _to_tokens(self.dwconv(_to_map(x, h, w)))


class MixFFN(nn.Module):
    """Linear → 3×3 depth-wise conv → GELU → linear (the paper's Eq. 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, *, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads=num_heads, sr_ratio=sr_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")  # per sample, identity in eval mode
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """The encoder: ``forward(x)`` returns the four stage maps (N, C_i, H/s_i, W/s_i), s_i = 4, 8, 16, 32."""

    def __init__(self, config: MiTConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        total = sum(config.depths)
        rates = [config.drop_path * i / max(total - 1, 1) for i in range(total)]  # linear, as torch.linspace
        dims = (in_channels, *config.embed_dims)
        first = 0
        for i, depth in enumerate(config.depths):
            stage = i + 1
            dim = config.embed_dims[i]
            embed = OverlapPatchEmbed(dims[i], dim, patch_size=config.patch_sizes[i], stride=config.strides[i])
            blocks = nn.ModuleList(
                Block(dim, num_heads=config.num_heads[i], sr_ratio=config.sr_ratios[i], mlp_ratio=config.mlp_ratio,
                      drop_path=rates[first + j])
                for j in range(depth)
            )  # fmt: skip
            self.add_module(f"patch_embed{stage}", embed)
            self.add_module(f"block{stage}", blocks)
            self.add_module(f"norm{stage}", nn.LayerNorm(dim, eps=_BLOCK_EPS))
            first += depth
        self.apply(_init_weights)

    @property
    def num_stages(self) -> int:
        return len(self.config.depths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in range(1, self.num_stages + 1):
            x, h, w = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x, h, w)
            x = _to_map(getattr(self, f"norm{stage}")(x), h, w)
            maps.append(x)
        return maps


def _init_weights(module: nn.Module) -> None:
    """The released code's initialisation (truncated normal linear layers, He-normal convolutions)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def wrap_mit(model: nn.Module, output_stride: int) -> Backbone:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"a Mix Transformer has output stride 32 only, got {output_stride}")
    config = model.config
    keys = stage_keys(model.num_stages)
    strides = [math.prod(config.strides[: i + 1]) for i in range(model.num_stages)]
    info = {key: FeatureInfo(dim, stride) for key, dim, stride in zip(keys, config.embed_dims, strides, strict=True)}
    return Backbone(model, info, stages=keys)  # the encoder's list of maps, keyed by the stage keys


def _register() -> None:
    from segmodels.models.backbones.mit_weights import load_mit_pretrained

    for name, config in MIT_CONFIGS.items():
        register_backbone(name, BackboneSpec(
            lambda weights=None, config=config: MixVisionTransformer(config), wrap_mit,
            loader=load_mit_pretrained, output_strides=OUTPUT_STRIDES))  # fmt: skip


_register()
