"""The inference-ready model: every backbone × head gives the same logits with its BatchNorms folded."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

from segmodels.models import build_model, catalog
from segmodels.models.fold import fold_report, inference_model

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4


def _randomise_batchnorms(model: nn.Module, seed: int = 1) -> None:
    """Running statistics and affine parameters away from their identity defaults, so a wrong fold shows.

    The last BatchNorm of each residual block is scaled down (as torchvision's ``zero_init_residual`` does, not
    to zero): with random convolutions, 33 residual additions otherwise grow ResNet101's logits to ~1e4, where
    float32 rounding alone exceeds an absolute tolerance.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) or type(m).__module__ == "timm.models.resnet":  # V1c's blocks
                (m.bn3 if hasattr(m, "bn3") else m.bn2).weight.mul_(0.2)


@pytest.mark.parametrize("name", catalog.list_models())
def test_folded_model_gives_the_same_logits(name):
    backbone, head = catalog.parse_model_name(name)
    torch.manual_seed(0)
    strides = catalog.backbone(backbone).output_strides  # MiT has no dilated form: 32 only
    model = build_model(backbone, head, num_classes=5, pretrained=None, aux=True,
                        output_stride=8 if 8 in strides else strides[0])  # fmt: skip
    _randomise_batchnorms(model)
    before = fold_report(model)
    assert before["folded"] == 0 and before["foldable"] == before["batchnorm_left"] > 0

    folded = inference_model(model)
    report = fold_report(folded)
    # Every BatchNorm of the study's models follows a convolution: none is left.
    assert report["foldable"] == report["batchnorm_left"] == report["dropout"] == 0, report
    assert report["folded"] > 0 and not report["training_aux_head"]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in folded.modules())
    cascade = head in catalog.cascade_heads()
    assert (folded.aux_head is not None) == cascade  # OCR's eval forward reads the auxiliary logits
    assert not folded.training and all(not p.requires_grad for p in folded.parameters())

    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert set(got) == set(expected) == {"out"}
    assert got["out"].shape == (1, 5, 64, 64)
    diff = (got["out"] - expected["out"]).abs().max().item()
    assert diff <= ATOL, f"{name}: max |diff| {diff:.2e}"


def test_the_original_model_is_left_as_it_was():
    model = build_model("resnet18", "fcn", num_classes=3, pretrained=None).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inference_model(model)
    assert model.training and model.aux_head is not None
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class _Branchy(nn.Sequential):
    """A Sequential whose forward also reads the convolution's output: its BatchNorm must not be folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self[0](x)
        return self[1](y) + y


def test_batchnorms_without_a_foldable_convolution_stay():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),  # folded
        nn.ReLU(),
        nn.BatchNorm2d(4),  # after a ReLU: stays
        _Branchy(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),  # a forward of its own: stays
        nn.Conv2d(4, 4, 1, bias=False),
        nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics in eval too: stays
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
    model.eval()
    folded = inference_model(model)
    assert fold_report(folded) == {"folded": 1, "foldable": 0, "batchnorm_left": 3, "unfoldable": 3, "dropout": 0,
                                   "training_aux_head": False}  # fmt: skip
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3], nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8, generator=g)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_returned_convolution_keeps_its_batchnorm():
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 4, 1))
    net.add_module("bn", nn.BatchNorm2d(4))
    net.add_module("conv2", nn.Conv2d(4, 4, 1))
    net.add_module("bn2", nn.BatchNorm2d(4))
    getter = IntermediateLayerGetter(net, return_layers={"conv": "raw", "bn2": "out"}).eval()
    report = fold_report(inference_model(getter))
    assert (report["folded"], report["batchnorm_left"]) == (1, 1)  # conv2/bn2 folded; conv is read as it is
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode():
        got, expected = inference_model(getter)(x), getter(x)
    for key in ("raw", "out"):
        torch.testing.assert_close(got[key], expected[key])
