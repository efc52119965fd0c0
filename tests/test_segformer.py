"""SegFormer: the Mix Transformer encoders MiT-B0/B1/B2 and the all-MLP decoder, their sizes against the paper, the
stage contract, the other heads on MiT and the decoder on the CNNs, the weights' key layouts, and ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segmodels.models import build_model, catalog, count_flops, count_parameters
from segmodels.models.backbones import build_backbone, mit_weights
from segmodels.models.backbones.mit import MIT_CONFIGS, MixVisionTransformer
from segmodels.models.backbones.mit_weights import from_nvlabs, from_transformers, to_transformers

pytestmark = pytest.mark.usefixtures("one_thread")

# SegFormer's Table 1 (and its released ADE20K configs): ADE20K, 150 classes, 512×512 input.
PAPER = {"mitb0": (3.8, 8.4), "mitb1": (13.7, 15.9), "mitb2": (27.5, 62.4)}  # (params M, GFLOPs)


def _image(n: int = 2, h: int = 64, w: int = 96) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backbone", list(PAPER))
def test_sizes_are_the_papers(backbone: str) -> None:
    """Parameters and GFLOPs of SegFormer-B0/B1/B2 (the inference model: encoder and MLP decoder, no auxiliary
    head) for 150 classes at 512×512 against the paper's Table 1, within 5 % (the paper rounds to 0.1).

    What is counted: every parameter; ``count_flops`` counts the multiply-adds of convolutions, linear layers and
    both attention products as two FLOPs each and no element-wise op (LayerNorm, GELU, softmax, interpolation).
    The paper's "FLOPs" are multiply-adds (mmcv's counter), so half our count is what it reports."""
    params_m, gflops = PAPER[backbone]
    with torch.device("meta"):
        model = build_model(backbone, "segformer", num_classes=150, output_stride=32, aux=False)
    assert model.head.classifier.in_channels == (768 if backbone == "mitb2" else 256)  # the paper's decoder widths
    assert count_parameters(model) / 1e6 == pytest.approx(params_m, rel=0.05)
    assert count_flops(model, (512, 512)) / 2e9 == pytest.approx(gflops, rel=0.05)


def test_mit_layers_and_stages() -> None:
    """MiT-B0's hyper-parameters (the paper's Table 6) and the backbone's stage contract."""
    backbone = build_backbone("mitb0", output_stride=32).eval()
    encoder = backbone.body
    assert isinstance(encoder, MixVisionTransformer)
    assert [len(getattr(encoder, f"block{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert [encoder.block1[0].attn.sr.kernel_size, encoder.block3[0].attn.sr.stride] == [(8, 8), (2, 2)]
    assert not hasattr(encoder.block4[0].attn, "sr")  # reduction ratio 1 in the last stage
    assert [getattr(encoder, f"block{i}")[0].attn.num_heads for i in range(1, 5)] == [1, 2, 5, 8]
    assert encoder.block2[0].mlp.fc1.out_features == 4 * 64  # Mix-FFN expansion 4
    assert encoder.block2[0].mlp.dwconv.dwconv.groups == 4 * 64  # depth-wise 3×3
    assert encoder.patch_embed1.proj.kernel_size == (7, 7) and encoder.patch_embed2.proj.stride == (2, 2)
    rates = [block.drop_path.p for i in range(1, 5) for block in getattr(encoder, f"block{i}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    assert backbone.stages == ("stage1", "stage2", "aux", "out")
    assert backbone.stage_channels == (32, 64, 160, 256) and backbone.stage_strides == (4, 8, 16, 32)
    with torch.no_grad():
        maps = backbone(_image())
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "stage1": (2, 32, 16, 24), "stage2": (2, 64, 8, 12), "aux": (2, 160, 4, 6), "out": (2, 256, 2, 3)}  # fmt: skip
    assert build_backbone("mitb2", output_stride=32).stage_channels == MIT_CONFIGS["mitb2"].embed_dims


def test_mit_has_output_stride_32_only() -> None:
    with pytest.raises(ValueError, match=r"backbone 'mitb0' \(MiT-B0\) can be built at output stride 32 only, got "
                                         r"8: set model.output_stride: 32"):  # fmt: skip
        build_model("mitb0", "segformer")
    from segmodels.study.config import ConfigError, study_from_dict

    with pytest.raises(ConfigError, match="run 'mitb1-ppm': backbone MiT-B1 can be built at output stride 32 only"):
        study_from_dict({"experiment": "x", "models": ["resnet18-ppm", "mitb1-ppm"]})
    cfg = study_from_dict({"experiment": "x", "models": [{"mitb1-ppm": {"model.output_stride": 32}}]})
    assert cfg.models == [{"mitb1-ppm": {"model.output_stride": 32}}]


@pytest.mark.parametrize(("backbone", "head"), [("mitb0", "segformer"), ("mitb0", "ppm"), ("mitb0", "ocr"),
                                                ("mitb1", "aspp"), ("resnet18", "segformer")])  # fmt: skip
def test_train_and_eval_forward(backbone: str, head: str) -> None:
    """The MLP decoder on MiT and on a CNN, the context heads on MiT: logits at the input size, the auxiliary
    head on the stage before the last, a gradient for every parameter."""
    torch.manual_seed(0)
    stride = catalog.backbone(backbone).output_strides[0]
    model = build_model(backbone, head, num_classes=5, output_stride=stride)
    x = _image()
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and all(v.shape == (2, 5, 64, 96) for v in out.values())
    target = torch.randint(0, 5, (2, 64, 96), generator=torch.Generator().manual_seed(1))
    sum(F.cross_entropy(v, target) for v in out.values()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    with torch.no_grad():
        assert set(model.eval()(x)) == {"out"}


def test_the_decoder_fuses_whatever_stages_the_backbone_gives() -> None:
    model = build_model("mobilenetv2", "segformer", num_classes=3)
    assert model.head_stages == ("stage1", "stage2", "aux", "out") and len(model.head.linear_c) == 4
    assert [mlp.proj.in_features for mlp in model.head.linear_c] == [24, 32, 96, 320]
    assert model.head.classifier.in_channels == 256  # the paper's MiT-B2 width is MiT-B2's alone
    narrow = build_model("mitb2", "segformer", output_stride=32, head_options={"channels": 64})
    assert narrow.head.classifier.in_channels == 64  # a config's option wins over the per-backbone default
    assert catalog.head_label("segformer", {"channels": 64}) == "SegFormer (MLP) channels=64"
    # A backbone that declares no stages gives two, "aux" and "out".
    from toys import toy_backbone

    from segmodels.models import register_backbone

    with catalog.registered():
        register_backbone("toy", toy_backbone, label="ToyNet")
        toy = build_model("toy", "segformer", num_classes=3).eval()
        assert toy.head_stages == ("aux", "out")
        with torch.no_grad():
            assert toy(_image())["out"].shape == (2, 3, 64, 96)


# --- weights ----------------------------------------------------------------------------------------------------


def _randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


def test_our_keys_are_the_released_codes() -> None:
    """The encoder's keys are NVlabs/SegFormer's (mmsegmentation 0.x's) ``mix_transformer.py`` names."""
    keys = set(MixVisionTransformer(MIT_CONFIGS["mitb0"]).state_dict())
    assert {"patch_embed1.proj.weight", "patch_embed1.norm.weight", "block1.0.norm1.weight", "block1.0.attn.q.weight",
            "block1.0.attn.kv.weight", "block1.0.attn.sr.weight", "block1.0.attn.norm.bias", "block1.0.attn.proj.weight",
            "block1.0.mlp.fc1.weight", "block1.0.mlp.dwconv.dwconv.weight", "block1.0.mlp.fc2.bias",
            "block4.1.norm2.weight", "norm1.weight", "norm4.bias"} <= keys  # fmt: skip
    assert all(k.startswith(("patch_embed", "block", "norm")) for k in keys)
    model = build_model("mitb0", "segformer", output_stride=32, aux=False)
    assert "backbone.body.block1.0.attn.kv.weight" in model.state_dict()


def test_transformers_layout_round_trip() -> None:
    """Our whole model and our encoder → Hugging Face's key layout → ours, loaded with strict=True."""
    model = _randomised(build_model("mitb0", "segformer", num_classes=150, output_stride=32, aux=False))
    ours = model.state_dict()
    theirs = to_transformers(ours)
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in theirs
    assert theirs["segformer.encoder.block.0.0.attention.self.query.weight"].shape == (32, 32)
    assert {"decode_head.linear_c.3.proj.weight", "decode_head.linear_fuse.weight", "decode_head.batch_norm.running_var",
            "decode_head.classifier.bias"} <= set(theirs)  # fmt: skip
    assert len(theirs) == len(ours) + sum(k.endswith("attn.kv.weight") or k.endswith("attn.kv.bias") for k in ours)
    back = from_transformers(theirs)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    fresh = build_model("mitb0", "segformer", num_classes=150, output_stride=32, aux=False)
    fresh.load_state_dict(back, strict=True)
    encoder = model.backbone.body.state_dict()
    hub_encoder = to_transformers(encoder)
    assert next(iter(hub_encoder)).startswith("encoder.")  # SegformerModel's keys
    MixVisionTransformer(MIT_CONFIGS["mitb0"]).load_state_dict(from_transformers(hub_encoder), strict=True)


def test_nvlabs_checkpoint_converts() -> None:
    """A whole SegFormer checkpoint of the released code (its decoder names written out here) loads strictly."""
    model = _randomised(build_model("mitb0", "segformer", num_classes=19, output_stride=32, aux=False))
    names = {"linear_fuse.0.": "linear_fuse.conv.", "linear_fuse.1.": "linear_fuse.bn.", "classifier.": "linear_pred."}
    released = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.body."):
            released["backbone." + key.removeprefix("backbone.body.")] = value
            continue
        rest = key.removeprefix("head.")
        if rest.startswith("linear_c."):
            index, tail = rest.removeprefix("linear_c.").split(".", 1)
            rest = f"linear_c{int(index) + 1}.{tail}"
        for ours, theirs in names.items():
            rest = rest.replace(ours, theirs) if rest.startswith(ours) else rest
        released["decode_head." + rest] = value
    assert "decode_head.linear_c4.proj.weight" in released and "decode_head.linear_pred.weight" in released
    build_model("mitb0", "segformer", num_classes=19, output_stride=32, aux=False).load_state_dict(
        from_nvlabs(released), strict=True
    )


def test_hugging_face_logits_shipped_with_the_tests_are_ours() -> None:
    """The tiny SegFormer of tests/mit_reference.py (fixed weights and input, float64) gives the logits Hugging
    Face's SegformerForSemanticSegmentation computed for them (tests/data/mit_reference.npz, written by
    tests/data/make_mit_reference.py): the check against the reference that runs without transformers."""
    from mit_reference import REFERENCE, checksum, decoder_logits, fixed_input, tiny_segformer

    reference = np.load(REFERENCE)
    model, x = tiny_segformer(), fixed_input()
    assert checksum(model, x) == pytest.approx(float(reference["checksum"]), rel=1e-12), (
        "the fixed weights or input differ from those the reference was computed for")  # fmt: skip
    expected = torch.from_numpy(reference["logits"])
    got = decoder_logits(model, x)
    assert got.shape == expected.shape == (1, 3, 16, 24) and expected.std() > 1
    assert (got - expected).abs().max().item() < 1e-9


def test_transformers_segformer_gives_the_same_logits() -> None:
    """Hugging Face's SegformerForSemanticSegmentation (random init, B0 sizes), converted, computes our logits."""
    import transformers  # a dev dependency: this reference check runs in make test
    torch.manual_seed(0)
    theirs = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=7)).eval()
    ours = build_model("mitb0", "segformer", num_classes=7, output_stride=32, aux=False).eval()
    ours.load_state_dict(from_transformers(theirs.state_dict()), strict=True)
    x = _image()
    with torch.no_grad():
        expected = theirs(pixel_values=x).logits  # at 1/4 of the input
        maps = ours.backbone(x)
        got = ours.head([maps[k] for k in ours.head_stages])["out"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_pretrained_files_in_either_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImageNet file of NVlabs (with its classifier ``head.*``) or Hugging Face (``segformer.encoder.*`` and
    ``classifier.*``), as model.pretrained or as the hub cache's mit_b0.pth for "imagenet"."""
    source = _randomised(MixVisionTransformer(MIT_CONFIGS["mitb0"])).state_dict()
    nvlabs = {**source, "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    hub = {"segformer." + k: v for k, v in to_transformers(source).items()} | {"classifier.weight": torch.zeros(1000, 256)}
    for name, state in (("nvlabs.pth", nvlabs), ("hub.bin", hub)):
        torch.save(state, tmp_path / name)
        encoder = build_backbone("mitb0", output_stride=32, pretrained=tmp_path / name).body
        assert all(torch.equal(v, source[k]) for k, v in encoder.state_dict().items()), name
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = mit_weights.imagenet_mit_file("mitb0")
    assert cached == tmp_path / "hub" / "checkpoints" / "mit_b0.pth"
    cached.parent.mkdir(parents=True)
    torch.save(hub, cached)
    encoder = build_model("mitb0", "segformer", output_stride=32, pretrained="imagenet").backbone.body
    assert torch.equal(encoder.block2[1].attn.kv.weight, source["block2.1.attn.kv.weight"])
    wrong = tmp_path / "wrong.pth"
    torch.save({"layers.0.0.projection.weight": torch.zeros(32, 3, 7, 7)}, wrong)  # mmsegmentation 1.x's layout
    with pytest.raises(ValueError, match=rf"{wrong}: keys do not match the released code's \(NVlabs/SegFormer\) "
                                         r"MixVisionTransformer state-dict layout"):  # fmt: skip
        build_backbone("mitb0", output_stride=32, pretrained=wrong)


def test_imagenet_offline_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(mit_weights, "IMAGENET_URL", "http://127.0.0.1:9/{repo}/pytorch_model.bin")  # refused at once
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError, match=rf"ImageNet weights for mitb1 .*nvidia/mit-b1.* are not in the torch "
                                                rf"hub cache and cannot be downloaded .* put mit_b1.pth .* into {folder}/"):  # fmt: skip
        build_model("mitb1", "segformer", output_stride=32, pretrained="imagenet")


# --- in the study -----------------------------------------------------------------------------------------------


def test_models_cli_counts_segformer(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from segmodels.cli import main

    assert main(["models", "--json", "--output-stride", "32", "--num-classes", "150", "--flops", "512", "512",
                 "--models", "mitb0-segformer", "mitb0-ppm"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params_m"] == pytest.approx(3.75, abs=0.01) and rows[0]["gflops"] == pytest.approx(16.8, abs=0.1)
    assert rows[1]["params_m"] > 0


def test_segformer_exports_to_onnx(tmp_path: Path) -> None:
    """The transformer needs nothing special: torch.export traces the attention's reshapes at the fixed size."""
    pytest.importorskip("onnxruntime")
    from segmodels.engine.export import export_onnx, verify_onnx

    torch.manual_seed(0)
    model = build_model("mitb0", "segformer", num_classes=5, output_stride=32).eval()
    path = export_onnx(model, tmp_path / "segformer.onnx", size=(64, 128))
    check = verify_onnx(model, path, size=(64, 128))
    assert check["max_abs_diff"] < 1e-4 and check["argmax_agreement"] == 1.0


def test_the_commented_block_of_the_study_config_validates(tmp_path: Path) -> None:
    """Uncommenting the SegFormer and timm lines of config/config.yaml gives a valid study with those runs."""
    import re

    import jsonschema
    import yaml

    from segmodels.study.config import load_config
    from segmodels.study.matrix import run_config, run_names

    root = Path(__file__).resolve().parents[1]
    text = (root / "config" / "config.yaml").read_text()
    block = re.compile(r"^(\s*)# ((- (mitb\d|convnextt|effb0)\b.*)|( {4}train\..*)|(backbones:.*)|( {2}(convnextt|effb0):.*))$")
    lines = [block.sub(r"\1\2", line) for line in text.splitlines()]
    assert sum(a != b for a, b in zip(lines, text.splitlines(), strict=True)) == 10
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    jsonschema.validate(yaml.safe_load(path.read_text()), yaml.safe_load((root / "config" / "schema.yaml").read_text()))
    with catalog.registered():
        cfg = load_config(path)
        names = run_names(cfg)
        assert names[-5:] == ["mitb0-segformer", "mitb1-segformer", "mitb2-segformer", "convnextt-ppm", "effb0-ppm"]
        for name in names[-5:-2]:
            run = run_config(cfg, name)
            assert (run.model.output_stride, run.model.aux, run.train.optimizer, run.train.lr) == (32, False, "adamw", 6e-5)
            assert (run.train.weight_decay, run.train.head_lr_mult, run.train.warmup_ratio) == (0.01, 10.0, 1e-6)
        plain = run_config(cfg, "convnextt-ppm")
        assert (plain.model.output_stride, plain.train.optimizer) == (8, "sgd") and catalog.backbone("effb0").short == "EB0"


def test_segformer_trains_with_its_recipe(tmp_path: Path, packed_data, mlflow_uri) -> None:
    """A few AdamW steps of mitb0-segformer through the training loop, its checkpoint loaded back."""
    from conftest import small_config

    from segmodels.engine.checkpoint import load_model_from_checkpoint
    from segmodels.engine.train import train

    cfg = small_config(models=["mitb0-segformer"], model={"output_stride": 32, "aux": False},
                       train={"iterations": 3, "log_every": 1, "ckpt_every": 3, "optimizer": "adamw", "lr": 6e-5,
                              "weight_decay": 0.01, "head_lr_mult": 10.0, "warmup_iters": 2, "warmup_ratio": 1e-6})  # fmt: skip
    result = train(cfg, "mitb0-segformer", seed=0, out=tmp_path / "run", data_dir=packed_data)
    loaded = load_model_from_checkpoint(tmp_path / "run")
    assert loaded.name == "mitb0-segformer" and loaded.output_stride == 32 and loaded.aux_head is None
    for key, value in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
