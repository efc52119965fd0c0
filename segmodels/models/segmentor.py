"""``build_model(backbone, head, ...)``: a dilated backbone, a context module and an auxiliary FCN head.

The forward contract is torchvision's: the backbone returns a dict of feature maps and the model returns
``{"out": logits}`` at the input size, plus ``"aux"`` in training mode. For a cascade head (OCR) the
auxiliary head runs in eval mode too: its logits are the head's soft object regions. A multi-stage head
(SegFormer's MLP decoder) reads the list of the backbone's stages (``backbone.stages``) instead of "out".
The backbone may be any timm model with ``features_only``: ``"timm:<model>"``, or a catalogued alias of one.
The registries are plain dicts: ``BACKBONE_SPECS`` (backbones package) and ``HEAD_BUILDERS`` (heads package),
keyed by the names in :mod:`segmodels.models.catalog`; a name in one but not the other fails here, by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segmodels.models import catalog
from segmodels.models.backbones import BACKBONE_SPECS, OUTPUT_STRIDES, Backbone, build_backbone, timm_name_of
from segmodels.models.catalog import list_models, parse_model_name
from segmodels.models.heads import HEAD_BUILDERS, FCNHead, backbone_options, keyword_options, reads_stages
from segmodels.models.norms import NORMS, apply_norm

__all__ = ["AUX_CHANNELS", "HEAD_DROPOUTS", "SegmentationModel", "build_model", "list_models", "parse_model_name"]

AUX_CHANNELS = 256  # width of the auxiliary FCN head (PSPNet's; torchvision's FCNHead on 1024 channels)
# What the heads' dropout drops: single activations (nn.Dropout: torchvision's segmentation heads, the earlier
# study's) or whole feature maps (nn.Dropout2d: every decode head of mmsegmentation, its dropout_ratio). The rates
# are the heads' own options; neither kind has weights, so a checkpoint loads under either.
HEAD_DROPOUTS = ("element", "channel")


class SegmentationModel(nn.Module):
    """Backbone → head → bilinear upsampling to the input size; the auxiliary head runs in training only,
    except for a cascade head (``cascade=True``, OCR), which takes the auxiliary logits as a second input."""

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        aux_head: nn.Module | None,
        *,
        backbone_name: str,
        head_name: str,
        num_classes: int,
        output_stride: int,
        cascade: bool = False,
    ) -> None:
        super().__init__()
        if cascade and aux_head is None:
            raise ValueError(f"head '{head_name}' reads the auxiliary head's logits: build it with aux=True")
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.backbone_name = backbone_name
        self.head_name = head_name
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.cascade = cascade
        # A multi-stage head reads these maps of the backbone, shallow to deep; any other head reads "out".
        self.head_stages = tuple(getattr(backbone, "stages", ("aux", "out"))) if reads_stages(type(head)) else None

    @property
    def name(self) -> str:
        return f"{self.backbone_name}-{self.head_name}"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name} expects a float image batch of shape (N, 3, H, W), got a {got}")
        features = self.backbone(x)
        aux = None
        if self.aux_head is not None and (self.training or self.cascade):
            aux = self.aux_head(features["aux"])["out"]
        if self.head_stages is not None:
            head = self.head([features[key] for key in self.head_stages])
        else:
            head = self.head(features["out"], aux) if self.cascade else self.head(features["out"])
        outputs = {"out": head["out"]}
        if self.training and aux is not None:
            outputs["aux"] = aux
        size = x.shape[-2:]
        return {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in outputs.items()}

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) in eval mode, without autograd."""
        if self.training:
            self.eval()
        return self(x)["out"]


def _check_registered(kind: str, name: str, registry: Mapping[str, Any], names: tuple[str, ...], how: str) -> None:
    """``name`` is both in the catalog and in the builder ``registry``, or a ValueError/RuntimeError says which."""
    if name in registry and name not in names:
        raise RuntimeError(f"{kind} '{name}' has a builder but no catalog entry: register it with "
                           f"segmodels.models.{how}(name, ..., label=...), not into the registry directly")  # fmt: skip
    if name not in names:
        raise ValueError(f"unknown {kind} '{name}'; valid: {', '.join(names)}")
    if name not in registry:
        raise RuntimeError(f"{kind} '{name}' is in the catalog but has no builder: register one with "
                           f"segmodels.models.{how}")  # fmt: skip


def _channel_dropout(module: nn.Module) -> None:
    """Every ``nn.Dropout`` in ``module`` becomes an ``nn.Dropout2d`` of the same rate: whole channels dropped."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, nn.Dropout2d(child.p, inplace=child.inplace))
        else:
            _channel_dropout(child)


def _check_head_options(head: str, options: Mapping[str, Any]) -> None:
    allowed = list(keyword_options(HEAD_BUILDERS[head]))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option '{unknown[0]}' for head '{head}'; valid: {', '.join(allowed)}")


def build_model(
    backbone: str,
    head: str,
    *,
    num_classes: int = 19,
    output_stride: int = 8,
    aux: bool = True,
    pretrained: str | os.PathLike[str] | None = None,
    head_options: Mapping[str, Any] | None = None,
    bn_momentum: float | None = None,
    head_dropout: str = "element",
    norm: str = "batch",
) -> SegmentationModel:
    """Build ``{backbone}-{head}``.

    backbone: a catalogued name, or ``"timm:<model>"`` for any timm model with ``features_only``.
    pretrained: None (random init), "imagenet" (torchvision's ImageNet weights, from the torch hub cache or
    downloaded; the released MiT weights; timm's default weights) or the path of a state dict in the backbone's
    key layout (torchvision's; the released MiT code's or Hugging Face's; timm's).
    aux: the auxiliary FCN head on the backbone's "aux" stage. A cascade head (``catalog.cascade_heads()``: OCR)
    needs it, in eval mode too: its soft object regions are that head's logits.
    head_options: keyword arguments of the head's class, e.g. ``heads.DEEPLABV3_OPTIONS`` for ASPP; they override
    the head's own defaults for the backbone (SegFormer's decoder: 768 channels on MiT-B2, else 256).
    bn_momentum: running-statistics momentum of every BatchNorm (None keeps each constructor's own: 0.1, but
    0.01 in torchvision's MobileNetV3).
    head_dropout: "element" (``nn.Dropout``) or "channel" (``nn.Dropout2d``, mmsegmentation's): what every dropout
    of the head and the auxiliary head drops (:data:`HEAD_DROPOUTS`).
    norm: "batch", "sync" (BatchNorm, made SyncBatchNorm by training under DDP) or "group" (every BatchNorm a
    GroupNorm with its affine weights, after the pretrained weights are loaded): :mod:`segmodels.models.norms`.
    All arguments are checked before anything is built.
    """
    if timm_name_of(backbone) is None:  # a timm model needs no builder of its own
        _check_registered("backbone", backbone, BACKBONE_SPECS, catalog.backbones(), "register_backbone")
    _check_registered("head", head, HEAD_BUILDERS, catalog.heads(), "register_head")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pretrained is not None and pretrained != "imagenet" and not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained weights file not found: {pretrained} (pretrained is None, 'imagenet' or a state-dict path)"
        )
    cascade = catalog.head(head).cascade
    if cascade and not aux:
        raise ValueError(
            f"head '{head}' needs aux=True: its soft object regions are the auxiliary FCN head's logits "
            "(OCR's ResNet cascade), so that head is part of the model in eval mode too"
        )
    if bn_momentum is not None and (isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float))
                                    or not 0 < bn_momentum <= 1):
        raise ValueError(f"bn_momentum must lie in (0, 1] or be None, got {bn_momentum!r}")
    if head_dropout not in HEAD_DROPOUTS:
        raise ValueError(f"head_dropout must be one of {', '.join(HEAD_DROPOUTS)}, got {head_dropout!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    options = dict(head_options or {})
    _check_head_options(head, options)
    head_class = HEAD_BUILDERS[head]
    options = {**backbone_options(head_class, backbone), **options}

    features = build_backbone(backbone, output_stride=output_stride, pretrained=pretrained)
    info = features.feature_info
    if reads_stages(head_class):
        stages = getattr(features, "stages", ("aux", "out"))
        head_module = head_class([info[key].channels for key in stages], num_classes, **options)
    else:
        head_module = head_class(info["out"].channels, num_classes, **options)
    aux_head = FCNHead(info["aux"].channels, num_classes, channels=AUX_CHANNELS) if aux else None
    model = SegmentationModel(
        features,
        head_module,
        aux_head,
        backbone_name=backbone,
        head_name=head,
        num_classes=num_classes,
        output_stride=output_stride,
        cascade=cascade,
    )
    if head_dropout == "channel":
        for module in (head_module, aux_head):
            if module is not None:
                _channel_dropout(module)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(bn_momentum)
    return apply_norm(model, norm)
