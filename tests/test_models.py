"""The model zoo: every backbone × head, dilation, parameter parity with torchvision, weights, complexity, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._api import Weights, WeightsEnum

from segmodels.models import (
    build_model,
    catalog,
    count_flops,
    count_parameters,
    list_models,
    parse_model_name,
)
from segmodels.models.backbones import BACKBONE_SPECS, build_backbone, imagenet_file
from segmodels.models.backbones.weights import load_pretrained
from segmodels.models.heads import DEEPLABV3_OPTIONS, HEAD_BUILDERS

SIZE = 64  # input height and width
BATCH = 2  # BatchNorm in the pooled branches needs more than one value per channel in training


pytestmark = pytest.mark.usefixtures("one_thread")


def _nparams(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _image(batch: int = BATCH, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def check_model(model: nn.Module, x: torch.Tensor) -> None:
    """The shared tester: output contract in eval and train mode, features as declared, gradients everywhere."""
    n, _, h, w = x.shape
    expected = (n, model.num_classes, h, w)

    model.eval()
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
    assert set(out) == {"out"}
    assert out["out"].shape == expected
    info = model.backbone.feature_info
    assert {"out", "aux"} <= set(info) == set(features)  # and the other stages the backbone declares
    assert info["out"].reduction == model.output_stride
    for key, feature in features.items():
        assert feature.shape == (n, info[key].channels, h // info[key].reduction, w // info[key].reduction), key

    model.train()
    out = model(x)
    assert set(out) == {"out", "aux"}
    target = torch.randint(0, model.num_classes, (n, h, w), generator=torch.Generator().manual_seed(1))
    sum(F.cross_entropy(logits, target) for logits in out.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    assert all(v.shape == expected for v in out.values())


def _stride(backbone: str) -> int:
    """The study's output stride 8, or the one stride of a backbone without a dilated form (MiT: 32)."""
    strides = catalog.backbone(backbone).output_strides
    return 8 if 8 in strides else strides[0]


@pytest.mark.parametrize("name", list_models())
def test_every_model(name: str) -> None:
    torch.manual_seed(0)
    backbone, head = parse_model_name(name)
    model = build_model(backbone, head, output_stride=_stride(backbone))
    assert (model.backbone_name, model.head_name, model.num_classes) == (backbone, head, 19)
    assert model.output_stride == _stride(backbone)
    check_model(model, _image())


def test_output_stride_16_and_no_aux() -> None:
    model = build_model("mobilenetv3", "ppm", output_stride=16, aux=False, num_classes=5)
    assert model.aux_head is None
    assert model.backbone.feature_info["out"].reduction == 16
    model.train()
    assert set(model(_image())) == {"out"}


def test_ocr_needs_the_aux_head() -> None:
    assert catalog.cascade_heads() == ("ocr",)
    with pytest.raises(ValueError, match="head 'ocr' needs aux=True: its soft object regions are the auxiliary"):
        build_model("resnet18", "ocr", aux=False)


@pytest.mark.parametrize("training", [True, False])
def test_ocr_regions_are_the_aux_logits(training: bool) -> None:
    """The cascade of OCR's ResNet variant: one auxiliary FCN head, whose logits OCR gathers over, in both modes."""
    model = build_model("resnet18", "ocr", num_classes=7).train(training)
    aux_logits, gathered = [], []
    model.aux_head.register_forward_hook(lambda module, args, out: aux_logits.append(out["out"]))
    model.head.gather.register_forward_hook(lambda module, args, out: gathered.append(args[1]))
    with torch.set_grad_enabled(training):
        out = model(_image())
    assert len(aux_logits) == len(gathered) == 1 and gathered[0] is aux_logits[0]
    assert set(out) == ({"out", "aux"} if training else {"out"})
    assert not any("region" in name for name, _ in model.named_modules())


def test_ocr_at_output_stride_32() -> None:
    # The aux stage stays at stride 16 while layer4 reaches 32: the regions are resized to the pixels' grid.
    model = build_model("mobilenetv2", "ocr", output_stride=32).eval()
    with torch.no_grad():
        assert model(_image())["out"].shape == (BATCH, 19, SIZE, SIZE)


def _conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + 2 * cout  # no conv bias before a BatchNorm; BN weight and bias


def _classifier(cin: int, classes: int) -> int:
    return cin * classes + classes


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenetv3"])
def test_ocr_parameters_are_mmsegs_cascade(backbone: str) -> None:
    """Layer list of mmsegmentation's configs/_base_/models/ocrnet_r50-d8.py (``decode_head`` is a cascade:
    FCNHead(in_channels=1024, channels=256, num_convs=1, concat_input=False, loss_weight=0.4), then
    OCRHead(in_channels=2048, channels=512, ocr_channels=256)) at our widths: aux 256, mid 512, key 256, the
    input channels the backbone's. A separate soft-region head would add parameters and fail this."""
    with torch.device("meta"):
        model = build_model(backbone, "ocr", num_classes=19)
    c_aux, c_out = (model.backbone.feature_info[k].channels for k in ("aux", "out"))
    if backbone == "resnet50":
        assert (c_aux, c_out) == (1024, 2048)  # exactly mmseg's r50-d8 heads
    k, mid, key = 19, 512, 256
    fcn_head = _conv_bn(c_aux, 256, 3) + _classifier(256, k)  # convs.0 (3×3), conv_seg
    ocr_head = (
        _conv_bn(c_out, mid, 3)  # bottleneck (3×3): pixel representations
        + _conv_bn(mid, key, 1) + _conv_bn(key, key, 1)  # object_context_block.query_project
        + _conv_bn(mid, key, 1) + _conv_bn(key, key, 1)  # key_project
        + _conv_bn(mid, key, 1)  # value_project
        + _conv_bn(key, mid, 1)  # out_project
        + _conv_bn(2 * mid, mid, 1)  # object_context_block.bottleneck (fuse)
        + _classifier(mid, k)  # conv_seg; spatial_gather_module has no parameters
    )  # fmt: skip
    assert count_parameters(model) - count_parameters(model.backbone) == fcn_head + ocr_head
    assert (count_parameters(model.aux_head), count_parameters(model.head)) == (fcn_head, ocr_head)


def test_head_options_table_is_the_heads_signatures() -> None:
    """The catalog's head options (what a config is checked against without torch) name each head's keyword
    options with their defaults, and every default passes the option's config type."""
    import inspect

    from segmodels.study.typed import check_value

    for head, cls in HEAD_BUILDERS.items():
        params = {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY}
        options = catalog.head(head).options
        assert {n: default for n, (_, default) in options.items()} == params, head
        for name, (tp, default) in options.items():
            check_value(list(default) if isinstance(default, tuple) else default, tp, name, "table")


# The backbones with a dilated form (the CNNs); MiT's single stride is tested in test_segformer.py.
_DILATED = [b for b in catalog.backbones() if catalog.backbone(b).output_strides == (8, 16, 32)]


@pytest.mark.parametrize("backbone", _DILATED)
@pytest.mark.parametrize("output_stride", [16, 32])
def test_backbone_output_stride(backbone: str, output_stride: int) -> None:
    features = build_backbone(backbone, output_stride=output_stride).eval()
    with torch.no_grad():
        maps = features(_image(batch=1))
    assert maps["out"].shape[-1] == SIZE // output_stride
    assert maps["aux"].shape[-1] == SIZE // 16  # the aux stage reaches stride 16 on its own
    assert features.feature_info["out"].reduction == output_stride


# Parts of torchvision's classification networks the segmentation backbones drop.
_DROPPED = {
    "resnet18": lambda m: [m.fc],
    "resnet50": lambda m: [m.fc],
    "resnet101": lambda m: [m.fc],
    "mobilenetv2": lambda m: [m.classifier, m.features[18]],
    "mobilenetv3": lambda m: [m.classifier],
}


@pytest.mark.parametrize("backbone", list(_DROPPED))
def test_dilation_adds_and_drops_no_weight(backbone: str) -> None:
    reference = BACKBONE_SPECS[backbone].constructor(weights=None)
    expected = _nparams(reference) - sum(_nparams(part) for part in _DROPPED[backbone](reference))
    assert count_parameters(build_backbone(backbone)) == expected


def _geometry(conv: nn.Conv2d) -> tuple:
    return conv.stride, conv.dilation, conv.padding


def test_resnet18_dilation() -> None:
    body = build_backbone("resnet18").body
    for layer, d in ((body.layer3, 2), (body.layer4, 4)):
        for block in layer:
            assert _geometry(block.conv1) == _geometry(block.conv2) == ((1, 1), (d, d), (d, d))
        assert layer[0].downsample[0].stride == (1, 1)
    assert _geometry(body.layer2[0].conv1) == ((2, 2), (1, 1), (1, 1))  # stride 8 is reached in layer2


def test_resnet50_dilation() -> None:
    body = build_backbone("resnet50").body
    for layer, d in ((body.layer3, 2), (body.layer4, 4)):
        for block in layer:
            assert _geometry(block.conv2) == ((1, 1), (d, d), (d, d))
            assert block.conv1.kernel_size == block.conv3.kernel_size == (1, 1)
        assert layer[0].downsample[0].stride == (1, 1)


def _depthwise(block: nn.Module) -> nn.Conv2d:
    (conv,) = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    return conv


def test_mobilenetv3_os8() -> None:
    features = build_backbone("mobilenetv3")
    body = features.body
    for index in range(1, 7):  # up to the 40-channel stride-8 stage: untouched
        assert _depthwise(body[str(index)]).dilation == (1, 1)
    for index, (k, d) in {**{i: (3, 2) for i in range(7, 13)}, **{i: (5, 4) for i in range(13, 16)}}.items():
        conv = _depthwise(body[str(index)])
        assert conv.kernel_size == (k, k)
        assert _geometry(conv) == ((1, 1), (d, d), (d * (k - 1) // 2,) * 2), index
    # SE and hardswish stay; the 960-channel expansion is "out", the 112-channel stage "aux", both at stride 8.
    assert any(isinstance(m, torchvision.ops.SqueezeExcitation) for m in body.modules())
    assert any(isinstance(m, nn.Hardswish) for m in body["16"].modules())
    with torch.no_grad():
        maps = features.eval()(_image(batch=1, size=96))
    assert maps["out"].shape == (1, 960, 12, 12)
    assert maps["aux"].shape == (1, 112, 12, 12)


def test_mobilenetv3_os16_is_torchvisions_dilated_network() -> None:
    ours = build_backbone("mobilenetv3", output_stride=16).body
    reference = torchvision.models.mobilenet_v3_large(weights=None, dilated=True).features
    convs = [_geometry(m) for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [_geometry(m) for m in reference.modules() if isinstance(m, nn.Conv2d)]


def test_aspp_deeplabv3_matches_torchvision() -> None:
    ours = build_model("resnet50", "aspp", num_classes=21, head_options=DEEPLABV3_OPTIONS)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    shapes = [[p.shape for p in m.parameters()] for m in (ours.head, ours.aux_head, ours.backbone)]
    assert shapes == [
        [p.shape for p in m.parameters()] for m in (theirs.classifier, theirs.aux_classifier, theirs.backbone)
    ]
    assert count_parameters(ours) == count_parameters(theirs)
    ours.aux_head, theirs.aux_classifier = None, None  # not part of an eval-mode forward in either
    with torch.device("meta"):
        assert count_flops(ours.to("meta"), (128, 256)) == count_flops(theirs.to("meta"), (128, 256))


def test_head_options_reach_the_head() -> None:
    model = build_model("mobilenetv2", "ppm", head_options={"bins": (1, 2), "channels": 64})
    assert len(model.head.stages) == 2 and model.head.classifier.in_channels == 64
    with pytest.raises(ValueError, match="unknown option 'rates' for head 'ppm'; valid: bins"):
        build_model("mobilenetv2", "ppm", head_options={"rates": (1, 2)})


def test_bn_momentum_reaches_every_batchnorm() -> None:
    def momenta(model: torch.nn.Module) -> set[float]:
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    assert 0.01 in momenta(build_model("mobilenetv3", "fcn"))  # torchvision's own, kept when not asked
    assert momenta(build_model("mobilenetv3", "ppm", bn_momentum=0.1)) == {0.1}
    assert momenta(build_model("resnet18", "ocr", bn_momentum=0.05)) == {0.05}


def test_registry() -> None:
    assert set(BACKBONE_SPECS) == set(catalog.backbones()) and set(HEAD_BUILDERS) == set(catalog.heads())
    names = list_models()
    assert len(names) == len(set(names)) == 11 * 5  # 8 CNN and 3 MiT backbones × ppm, aspp, ocr, fcn, segformer
    assert all(f"{parse_model_name(n)[0]}-{parse_model_name(n)[1]}" == n for n in names)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet34"}, "unknown backbone 'resnet34'; valid: resnet18, resnet50, resnet101, resnet18c"),
        ({"head": "unet"}, "unknown head 'unet'; valid: ppm, aspp, ocr, fcn"),
        ({"output_stride": 4}, "output_stride must be one of 8, 16, 32, got 4"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"bn_momentum": 0.0}, r"bn_momentum must lie in \(0, 1\] or be None, got 0.0"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"backbone": "resnet18", "head": "fcn", **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(args.pop("backbone"), args.pop("head"), **args)


def test_bad_model_name_and_input() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet18ppm': expected {backbone}-{head}"):
        parse_model_name("resnet18ppm")
    model = build_model("mobilenetv2", "fcn", aux=False)
    with pytest.raises(
        ValueError,
        match=r"expects a float image batch of shape \(N, 3, H, W\), "
        r"got a torch.float32 tensor of shape \(2, 1, 64, 64\)",
    ):
        model(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="got a torch.uint8 tensor"):
        model(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8))
    logits = model.predict(_image())
    assert logits.shape == (BATCH, 19, SIZE, SIZE) and not logits.requires_grad and not model.training


def test_pretrained_from_local_file(tmp_path: Path) -> None:
    saved = torchvision.models.resnet18().state_dict()
    for i, wrapped in enumerate((saved, {"state_dict": saved}, {"model": saved, "iteration": 3})):
        path = tmp_path / f"weights{i}.pt"
        torch.save(wrapped, path)
        body = build_model("resnet18", "fcn", pretrained=path).backbone.body
        assert torch.equal(body.layer3[0].conv1.weight, saved["layer3.0.conv1.weight"])
        assert torch.equal(body.bn1.running_mean, saved["bn1.running_mean"])
    # A MobileNetV2 file without the dropped parts loads too, with "features." mapped onto the body.
    mobile = {
        k: v for k, v in torchvision.models.mobilenet_v2().state_dict().items() if not k.startswith("classifier.")
    }
    torch.save(mobile, tmp_path / "mobile.pt")
    body = build_backbone("mobilenetv2", pretrained=tmp_path / "mobile.pt").body
    assert torch.equal(body["17"].conv[1][0].weight, mobile["features.17.conv.1.0.weight"])


def test_pretrained_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=f"pretrained weights file not found: {missing}"):
        build_model("resnet18", "fcn", pretrained=missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=f"{corrupt}: not a readable PyTorch state dict"):
        build_model("resnet18", "fcn", pretrained=corrupt)
    wrong_keys = tmp_path / "wrong_keys.pt"
    torch.save({"encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong_keys)
    with pytest.raises(
        ValueError,
        match=rf"{wrong_keys}: keys do not match torchvision's ResNet state-dict layout: "
        r"\d+ missing \(e.g. bn1.bias, .*\); 1 unexpected \(e.g. encoder.conv1.weight\)",
    ):
        build_model("resnet18", "fcn", pretrained=wrong_keys)
    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save({**torchvision.models.resnet18().state_dict(), "conv1.weight": torch.zeros(64, 1, 7, 7)}, wrong_shape)
    with pytest.raises(ValueError, match=r"'conv1.weight' is \(64, 1, 7, 7\), the model expects \(64, 3, 7, 7\)"):
        build_model("resnet18", "fcn", pretrained=wrong_shape)
    not_tensors = tmp_path / "not_tensors.pt"
    torch.save({"conv1.weight": [1, 2]}, not_tensors)
    with pytest.raises(ValueError, match="expected a state dict"):
        build_model("resnet18", "fcn", pretrained=not_tensors)


def test_imagenet_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = imagenet_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert cached == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    saved = torchvision.models.resnet18().state_dict()
    torch.save(saved, cached)
    body = build_backbone("resnet18", pretrained="imagenet").body
    assert torch.equal(body.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


class _Unreachable(WeightsEnum):
    # The real file name behind a closed local port: the download fails at once, online or not.
    RESNET18 = Weights(url="http://127.0.0.1:9/models/resnet18-f37072fd.pth", transforms=lambda: None, meta={})


def test_imagenet_offline_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    folder = tmp_path / "hub" / "checkpoints"
    message = (
        rf"ImageNet weights for resnet18 are not in the torch hub cache .* put resnet18-f37072fd.pth .* into {folder}/"
    )
    with pytest.raises(FileNotFoundError, match=message):
        load_pretrained(
            torchvision.models.resnet18(),
            name="resnet18",
            weights=_Unreachable.RESNET18,
            dropped=("fc.",),
            pretrained="imagenet",
        )
    assert not folder.exists() or not any(folder.iterdir())  # nothing half-written left behind


def test_count_flops_and_parameters() -> None:
    small = build_model("resnet18", "fcn", aux=False)
    assert count_parameters(small) == sum(p.numel() for p in small.parameters())
    for p in small.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(small, trainable_only=True) == _nparams(small.head)
    flops = count_flops(small.train(), (SIZE, SIZE))
    assert flops > 0 and small.training  # counted in eval mode, training mode restored
    assert count_flops(small, (SIZE, SIZE), batch_size=2) == 2 * flops
    with torch.device("meta"):
        meta18, meta50 = build_model("resnet18", "fcn", aux=False), build_model("resnet50", "fcn", aux=False)
    assert count_flops(meta18, (SIZE, SIZE)) == flops  # the meta device counts the same
    assert count_flops(meta50, (SIZE, SIZE)) > flops


def test_cli_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    from segmodels.cli import main

    # Every model; the CNNs at the default output stride 8, MiT (32 only) at its own, which the table shows.
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == list_models()
    strides = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    assert strides["mitb0-segformer"] == 32 and strides["resnet18-ppm"] == 8
    assert main(["models", "--json", "--flops", "32", "32", "--models", "resnet18-ocr", "mobilenetv3-fcn"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["resnet18-ocr", "mobilenetv3-fcn"]
    assert all(r["params_m"] > 0 and r["gflops"] > 0 for r in rows)
    with torch.device("meta"):
        ocr = build_model("resnet18", "ocr")  # its inference model includes the aux head: the regions
    assert rows[0]["params_m"] == round(count_parameters(ocr) / 1e6, 3)
    assert main(["models", "--models", "resnet18-unet"]) == 2
    assert "segmodels models: error: unknown model 'resnet18-unet'" in capsys.readouterr().err


def test_registry_module_is_light() -> None:
    code = "import sys, segmodels.models, segmodels.cli.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ocr_exports_to_onnx(tmp_path: Path) -> None:
    """The eval-mode graph keeps the aux head: it computes the regions the OCR head gathers over."""
    pytest.importorskip("onnxruntime")
    from segmodels.engine.export import export_onnx, verify_onnx

    torch.manual_seed(0)
    model = build_model("resnet18", "ocr", num_classes=5).eval()
    path = export_onnx(model, tmp_path / "ocr.onnx", size=(32, 64))
    check = verify_onnx(model, path, size=(32, 64))
    assert check["max_abs_diff"] < 1e-4 and check["argmax_agreement"] == 1.0


def test_checkpoints_record_head_options(tmp_path: Path) -> None:
    from segmodels.engine.checkpoint import load_model_from_checkpoint, save_atomic
    from segmodels.engine.inference import load_model

    def save(model: nn.Module, path: Path, **extra: object) -> Path:
        save_atomic({"format": 1, "model": model.state_dict(), "backbone": model.backbone_name,
                     "head": model.head_name, "num_classes": 19, "output_stride": 8, "aux": True, **extra}, path)  # fmt: skip
        return path

    deeplab = build_model("resnet18", "aspp", head_options=DEEPLABV3_OPTIONS)
    path = save(deeplab, tmp_path / "deeplab.pt", head_options=dict(DEEPLABV3_OPTIONS))
    for loaded in (load_model_from_checkpoint(path), load_model(path, device=torch.device("cpu"))[0]):
        assert len(loaded.head.branches) == 5 and loaded.head.dropout.p == 0.0
        theirs = deeplab.state_dict()
        assert loaded.state_dict().keys() == theirs.keys()
        assert all(torch.equal(value, theirs[key]) for key, value in loaded.state_dict().items())
    # A checkpoint written before heads had options builds the default head.
    old = save(build_model("resnet18", "aspp"), tmp_path / "old.pt")
    assert len(load_model_from_checkpoint(old).head.branches) == 4
    # Weights of another head's options do not fit the recorded ones: refused, naming the file.
    wrong = save(deeplab, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=f"{wrong}: weights do not fit resnet18-aspp"):
        load_model_from_checkpoint(wrong)
