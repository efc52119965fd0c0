"""The ResNet-V1c backbones against mmsegmentation's ResNetV1c (mmseg/models/backbones/resnet.py, ResLayer in
mmseg/models/utils/res_layer.py; configs/_base_/models/pspnet_r50-d8.py): its layer list, its dilation at output
stride 8 and 16, and its weights (timm's for resnet50c/101c, mmsegmentation's own file for resnet18c, either key
layout from a file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from segmodels.models import build_model, catalog, count_parameters
from segmodels.models.backbones import build_backbone, resnet_v1c

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

# mmsegmentation's ResNet.arch_settings: block type (expansion) and blocks per stage.
MMSEG_ARCH = {"resnet18c": (1, (2, 2, 2, 2)), "resnet50c": (4, (3, 4, 6, 3)), "resnet101c": (4, (3, 4, 23, 3))}


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k  # bias=False throughout


def _bn(c: int) -> int:
    return 2 * c  # weight and bias


def mmseg_v1c_parameters(expansion: int, blocks: tuple[int, ...]) -> int:
    """Parameters of mmsegmentation's ResNetV1c (deep_stem=True, avg_down=False, stem_channels=64,
    base_channels=64), written from its layer list: the stem, then each stage's blocks and the first block's
    1×1 shortcut (present where the stride or the width changes)."""
    total = _conv(3, 32, 3) + _bn(32) + _conv(32, 32, 3) + _bn(32) + _conv(32, 64, 3) + _bn(64)
    inplanes = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        for index in range(count):
            if expansion == 1:  # BasicBlock: 3×3, 3×3
                total += _conv(inplanes, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            else:  # Bottleneck: 1×1, 3×3, 1×1 to planes × 4
                total += (_conv(inplanes, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
                          + _conv(planes, planes * 4, 1) + _bn(planes * 4))  # fmt: skip
            if index == 0 and (stage > 0 or inplanes != planes * expansion):
                total += _conv(inplanes, planes * expansion, 1) + _bn(planes * expansion)
            inplanes = planes * expansion
    return total


@pytest.mark.parametrize("name", list(MMSEG_ARCH))
def test_parameters_are_mmsegs_resnet_v1c(name: str) -> None:
    with torch.device("meta"):
        backbone = build_backbone(name)
    assert count_parameters(backbone) == mmseg_v1c_parameters(*MMSEG_ARCH[name])
    stem = [m for m in backbone.body.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]  # fmt: skip


def _geometry(conv: nn.Conv2d) -> tuple:
    return conv.stride, conv.dilation, conv.padding


def mmseg_block_dilations(strides: tuple[int, ...], dilations: tuple[int, ...], blocks: tuple[int, ...]) -> list:
    """(stride, dilation) of each block's dilated 3×3 per stage, as mmsegmentation's ResLayer with
    contract_dilation=True builds them: the first block takes the stage's stride and dilation // 2 (when the
    stage is dilated), the others stride 1 and the stage's dilation."""
    return [[(s, d // 2 if d > 1 else d)] + [(1, d)] * (n - 1) for s, d, n in zip(strides, dilations, blocks, strict=True)]


# (output stride, mmsegmentation's strides and dilations of the R-*-D8 and R-*-D16 backbones)
_SETTINGS = [(8, (1, 2, 1, 1), (1, 1, 2, 4)), (16, (1, 2, 2, 1), (1, 1, 1, 2))]


@pytest.mark.parametrize(("output_stride", "strides", "dilations"), _SETTINGS)
@pytest.mark.parametrize("name", ["resnet18c", "resnet50c"])
def test_dilation_is_mmsegs(name: str, output_stride: int, strides: tuple, dilations: tuple) -> None:
    backbone = build_backbone(name, output_stride=output_stride)
    expansion, blocks = MMSEG_ARCH[name]
    expected = mmseg_block_dilations(strides, dilations, blocks)
    for stage, (layer, want) in enumerate(zip([getattr(backbone.body, f"layer{i}") for i in range(1, 5)], expected,
                                              strict=True)):  # fmt: skip
        for block, (s, d) in zip(layer, want, strict=True):
            if expansion == 1:  # mmsegmentation's BasicBlock: the first 3×3 dilated, the second never
                assert _geometry(block.conv1) == ((s, s), (d, d), (d, d)), (stage, d)
                assert _geometry(block.conv2) == ((1, 1), (1, 1), (1, 1)), stage
            else:
                assert _geometry(block.conv2) == ((s, s), (d, d), (d, d)), (stage, d)
                assert {_geometry(c) for c in (block.conv1, block.conv3)} == {((1, 1), (1, 1), (0, 0))}
        if layer[0].downsample is not None:
            assert layer[0].downsample[0].stride == (strides[stage],) * 2
    with torch.no_grad():
        maps = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert maps["out"].shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert backbone.feature_info["out"].reduction == output_stride


def test_v1c_models_under_the_heads_and_their_labels() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18c", "ppm", num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"out": (2, 5, 64, 64), "aux": (2, 5, 64, 64)}
    assert catalog.display_name("resnet50c-aspp_deeplabv3") == "ResNet50-V1c-ASPP (1,2,3,6) deeplabv3"
    assert catalog.short_name("resnet101c-fcn") == "R101c FCN"


def _mmseg_layout(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """timm's keys in mmsegmentation's layout (its _make_stem_layer: nn.Sequential of conv, BN, ReLU × 3 as
    ``stem.0`` ... ``stem.8``; the layers' names are the same), as an mmsegmentation checkpoint holds them."""
    stem = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4.",
            "conv1.6.": "stem.6.", "bn1.": "stem.7."}  # fmt: skip
    out = {}
    for key, value in state.items():
        for ours, theirs in stem.items():
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        out[prefix + key] = value
    return out


def _classifier_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    network = resnet_v1c._network(name)
    for bn in (m for m in network.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics worth comparing
        bn.running_mean.normal_()
    return network.state_dict()


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_a_file_in_mmsegs_layout_loads(tmp_path: Path, prefix: str) -> None:
    saved = _classifier_state("resnet18c")
    path = tmp_path / "resnet18_v1c.pth"
    extra = {"decode_head.conv_seg.weight": torch.zeros(19, 128, 1, 1)} if prefix else {}
    torch.save({"state_dict": {**_mmseg_layout(saved, prefix), **extra}}, path)
    body = build_backbone("resnet18c", pretrained=path).body
    assert torch.equal(body.conv1[3].weight, saved["conv1.3.weight"])
    assert torch.equal(body.bn1.running_mean, saved["bn1.running_mean"])
    assert torch.equal(body.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    timm_file = tmp_path / "timm.pth"
    torch.save(saved, timm_file)  # timm's own layout loads as it is
    assert torch.equal(build_backbone("resnet18c", pretrained=timm_file).body.bn1.running_mean, saved["bn1.running_mean"])


def test_a_file_of_another_network_is_refused_by_key(tmp_path: Path) -> None:
    path = tmp_path / "v1b.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)  # V1b: one 7×7 stem conv
    with pytest.raises(ValueError, match=rf"{path}: keys do not match timm's \(or mmsegmentation's\) ResNet .*"
                                         r"missing \(e.g. conv1.0.weight"):  # fmt: skip
        build_backbone("resnet18c", pretrained=path)


def test_resnet18c_imagenet_is_mmsegs_file_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / "resnet18_v1c-b5776b93.pth"  # open-mmlab://resnet18_v1c's file name
    cached.parent.mkdir()
    saved = _classifier_state("resnet18c", seed=1)
    torch.save(_mmseg_layout(saved), cached)
    body = build_backbone("resnet18c", pretrained="imagenet").body
    assert torch.equal(body.conv1[0].weight, saved["conv1.0.weight"])
    assert torch.equal(body.layer3[0].downsample[1].running_mean, saved["layer3.0.downsample.1.running_mean"])


def test_resnet18c_imagenet_offline_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    # The real file name behind a closed local port: the download fails at once, online or not.
    monkeypatch.setitem(resnet_v1c.MMSEG_IMAGENET, "resnet18c", "http://127.0.0.1:9/pretrain/resnet18_v1c-b5776b93.pth")
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=rf"ImageNet weights for resnet18c \(mmsegmentation's "
                                                rf"resnet18_v1c-b5776b93.pth\) .* into {folder}/"):  # fmt: skip
        build_backbone("resnet18c", pretrained="imagenet")


# Builds resnet50c with ImageNet weights against a Hub that refuses connections (a closed local port), first with
# an empty cache, then with argv[1] in it; prints what came of each.
_IMAGENET = """
import sys, shutil
from pathlib import Path
import torch
from safetensors.torch import load_file
from segmodels.models.backbones import build_backbone
try:
    build_backbone("resnet50c", pretrained="imagenet")
except FileNotFoundError as exc:
    print(str(exc).replace("\\n", " "))
staged, cached = Path(sys.argv[1]), Path(sys.argv[2])
cached.parent.mkdir(parents=True)
shutil.move(staged, cached)
body = build_backbone("resnet50c", pretrained="imagenet").body
saved = load_file(cached)
print(all(torch.equal(body.state_dict()[k], saved[k]) for k in body.state_dict()))
"""


def test_resnet50c_imagenet_is_timms_with_its_offline_handling(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cfg = timm.models.get_pretrained_cfg("resnet50c")
    assert cfg.hf_hub_id == "timm/resnet50c.gluon_in1k"  # GluonCV's ResNet-V1c weights
    commit = "0" * 40
    folder = tmp_path / "hub" / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    staged = tmp_path / "model.safetensors"
    save_file(_classifier_state("resnet50c"), str(staged))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub"),
            "TORCH_HOME": str(tmp_path / "torch")}  # fmt: skip
    cached = folder / "snapshots" / commit / "model.safetensors"
    done = subprocess.run([sys.executable, "-c", _IMAGENET, str(staged), str(cached)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    message, same = done.stdout.strip().splitlines()[-2:]
    assert message.startswith("ImageNet weights of timm model 'resnet50c' could not be loaded"), message
    assert "timm/resnet50c.gluon_in1k" in message and "set model.pretrained to its path" in message
    assert same == "True"
