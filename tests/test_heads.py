"""The heads as the study compares them: one width and one tail for every context module, and the kind of
dropout (single activations, or whole channels as mmsegmentation's decode heads) for the head and the aux head."""

from __future__ import annotations

import pytest
import torch
from test_models import _stride
from torch import nn

from segmodels.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _dropouts(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@pytest.mark.parametrize("head", ["ppm", "aspp", "ocr", "fcn"])
def test_context_heads_end_alike_at_one_width(head: str) -> None:
    """The heads the study compares differ only in their context module: by default each ends in a 512-channel
    conv-BN-ReLU, one dropout of 0.1 and the classifier (ASPP's branches and projection are 512 wide too), so
    neither width nor regularisation favours one of them."""
    with torch.device("meta"):
        model = build_model("resnet18", head, num_classes=19)
    assert model.head.classifier.in_channels == 512
    assert [d.p for d in _dropouts(model.head) if d.p > 0] == [0.1]
    if head == "aspp":
        assert {m.out_channels for m in model.head.modules() if isinstance(m, nn.Conv2d)} == {512, 19}


@pytest.mark.parametrize("head", ["ppm", "aspp", "ocr", "fcn", "segformer"])
def test_channel_dropout_drops_whole_maps_in_every_head(head: str) -> None:
    """mmsegmentation's decode heads drop whole channels (nn.Dropout2d); ``head_dropout="channel"`` makes every
    dropout of the head and the auxiliary head so, at the same rates, with the same weights."""
    backbone = "mitb0" if head == "segformer" else "resnet18"
    element = build_model(backbone, head, output_stride=_stride(backbone))
    channel = build_model(backbone, head, output_stride=_stride(backbone), head_dropout="channel")
    assert {type(d) for d in _dropouts(element)} == {nn.Dropout}  # the default: single activations
    assert {type(d) for d in _dropouts(channel.head) + _dropouts(channel.aux_head)} == {nn.Dropout2d}
    assert [d.p for d in _dropouts(channel)] == [d.p for d in _dropouts(element)]
    assert channel.state_dict().keys() == element.state_dict().keys()
    torch.manual_seed(0)
    dropped = channel.head.dropout.train()(torch.ones(2, 64, 8, 8)).flatten(2)
    zero = (dropped == 0).all(-1)
    assert zero.any() and ((dropped != 0).all(-1) | zero).all()  # a map is dropped whole or kept whole


def test_head_dropout_is_checked() -> None:
    with pytest.raises(ValueError, match="head_dropout must be one of element, channel, got 'spatial'"):
        build_model("resnet18", "fcn", head_dropout="spatial")
