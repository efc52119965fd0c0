"""timm encoders as backbones: their stages from timm's feature_info, dilation through timm's output_stride, the
``backbones:`` aliases of a study config, weights from a local file, and the errors that name the model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from segmodels.models import build_model, catalog
from segmodels.models.backbones import build_backbone
from segmodels.study.config import ConfigError, import_plugins, load_config, study_from_dict
from segmodels.study.matrix import run_config, run_names

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("model", "output_stride", "channels", "strides"),
    [
        ("resnet18", 8, (64, 128, 256, 512), (4, 8, 8, 8)),
        ("mobilenetv3_small_100", 16, (16, 24, 48, 576), (4, 8, 16, 16)),
        ("efficientnet_b0", 32, (24, 40, 112, 320), (4, 8, 16, 32)),
    ],
)
def test_stages_of_a_timm_model(model: str, output_stride: int, channels: tuple, strides: tuple) -> None:
    """The stages are timm's feature levels from stride 4 on (its stride-2 level dropped), dilated by timm."""
    reference = timm.create_model(model, features_only=True, pretrained=False).feature_info
    assert tuple(reference.channels()[1:]) == channels  # the same widths as timm's own levels
    backbone = build_backbone(f"timm:{model}", output_stride=output_stride).eval()
    assert backbone.stages == ("stage1", "stage2", "aux", "out")
    assert backbone.stage_channels == channels and backbone.stage_strides == strides
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 96))
    for key, c, s in zip(backbone.stages, channels, strides, strict=True):
        assert maps[key].shape == (1, c, 64 // s, 96 // s), key


@pytest.mark.parametrize("head", ["ppm", "segformer", "ocr"])
def test_a_timm_model_under_the_heads(head: str) -> None:
    torch.manual_seed(0)
    model = build_model("timm:resnet18", head, num_classes=4)
    assert model.name == f"timm:resnet18-{head}" and model.output_stride == 8
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert set(out) == {"out", "aux"} and all(v.shape == (2, 4, 64, 64) for v in out.values())


def test_unknown_timm_model_says_how_to_find_names() -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_18'; close names: resnet18.*"
                                         r"timm.list_models\('pattern\*'\) lists the names"):  # fmt: skip
        build_model("timm:resnet_18", "ppm")


@pytest.mark.parametrize(("model", "native"), [("vit_tiny_patch16_224", 16), ("swin_tiny_patch4_window7_224", 32)])
def test_a_model_timm_cannot_dilate_is_refused_by_name(model: str, native: int) -> None:
    with pytest.raises(ValueError, match=rf"timm model '{model}' cannot be built at output stride 8: it does not "
                                         rf"dilate .* stride {native}; use model.output_stride: {native} for it"):  # fmt: skip
        build_backbone(f"timm:{model}", output_stride=8)


STUDY = """
experiment: timm
backbones:
  effb0: {timm: efficientnet_b0, label: EfficientNet-B0, short: EB0}
  mnv3s: {timm: mobilenetv3_small_100}
models:
  - effb0-ppm
  - mnv3s-segformer_os16: {model.output_stride: 16}
  - resnet18-ppm
model: {pretrained: null}
data: {size: [64, 128]}
train: {crop_size: [64, 64]}
"""


def test_a_timm_alias_in_a_study_validates_and_plans(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    import jsonschema

    schema = yaml.safe_load(Path("config/schema.yaml").read_text())
    jsonschema.validate(yaml.safe_load(STUDY), schema)  # what the Snakefile checks first
    with catalog.registered():
        cfg = load_config(path)
        assert run_names(cfg) == ["effb0-ppm", "mnv3s-segformer_os16", "resnet18-ppm"]
        assert catalog.backbone("effb0").timm == "efficientnet_b0"
        assert catalog.display_name("effb0-ppm") == "EfficientNet-B0-PPM" and catalog.short_name("effb0-ppm") == "EB0 PPM"
        assert catalog.backbone("mnv3s").label == "mobilenetv3_small_100" and catalog.backbone("mnv3s").short == "mnv3s"
        assert load_config(path).backbones == cfg.backbones  # loading the study again changes nothing
        run = run_config(cfg, "mnv3s-segformer_os16")
        assert run.backbones["mnv3s"] == {"timm": "mobilenetv3_small_100"}  # travels with the run's config
        model = build_model("mnv3s", "segformer", num_classes=3, output_stride=run.model.output_stride)
        assert model.name == "mnv3s-segformer" and model.backbone.stage_strides == (4, 8, 16, 16)
    assert "effb0" not in catalog.backbones()
    # A checkpoint's training config registers its aliases (the checkpoint loader reads it through import_plugins).
    with catalog.registered():
        import_plugins({"backbones": {"effb0": {"timm": "efficientnet_b0"}}}, where="checkpoint.pt")
        assert build_model("effb0", "fcn", num_classes=2).backbone.stage_channels == (24, 40, 112, 320)


@pytest.mark.parametrize(
    ("backbones", "message"),
    [
        ({"conv_next": {"timm": "convnext_tiny"}}, r"'backbones.conv_next': backbone name 'conv_next' must be "
                                                   r"lowercase letters and digits only"),
        ({"resnet18": {"timm": "resnet18"}}, r"'backbones.resnet18': 'resnet18' is already a backbone of the "
                                             r"catalog \(ResNet18\)"),
        ({"cnx": {"model": "convnext_tiny"}}, r"'backbones.cnx' must be a mapping with the timm model's name"),
        ({"cnx": {"timm": "convnext_tiny", "size": "t"}}, r"unknown key 'backbones.cnx.size'"),
        ({"foo": {"timm": "not_a_model"}}, r"^study.yaml: 'backbones.foo.timm': unknown timm model 'not_a_model'"),
        ({"cnx": {"timm": "convnext_tiyn"}}, r"'backbones.cnx.timm': unknown timm model 'convnext_tiyn'; close names: "
                                             r"convnext_tiny"),
    ],
)
def test_bad_aliases_name_the_key(backbones: dict, message: str) -> None:
    with catalog.registered(), pytest.raises(ConfigError, match=message):
        study_from_dict({"experiment": "x", "backbones": backbones, "models": ["resnet18-ppm"]}, where="study.yaml")


def test_an_unknown_timm_model_is_refused_when_the_study_is_loaded(tmp_path: Path) -> None:
    """Before any job runs (the Snakefile loads the study the same way), naming the file and the key."""
    path = tmp_path / "study.yaml"
    path.write_text("experiment: x\nbackbones: {foo: {timm: not_a_model}}\nmodels: [foo-ppm]\n")
    with catalog.registered(), pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 'backbones.foo.timm': "
                                                              r"unknown timm model 'not_a_model'"):  # fmt: skip
        load_config(path)
    assert "foo" not in catalog.backbones()


def test_pretrained_from_a_local_file(tmp_path: Path) -> None:
    saved = timm.create_model("resnet18", pretrained=False).state_dict()  # the classification model's layout
    path = tmp_path / "resnet18.pth"
    torch.save(saved, path)
    body = build_backbone("timm:resnet18", pretrained=path).body
    assert torch.equal(body.layer3[0].conv1.weight, saved["layer3.0.conv1.weight"])
    assert torch.equal(body.bn1.running_var, saved["bn1.running_var"])


def test_imagenet_offline_names_the_model_and_the_way_out(tmp_path: Path) -> None:
    """With the Hub unreachable and its cache empty (offline mode: no network attempt), the error names the model
    and how to give the weights as a file."""
    code = ("from segmodels.models import build_model\n"
            "build_model('timm:resnet18', 'fcn', pretrained='imagenet')")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: ImageNet weights of timm model 'resnet18' could not be loaded"), last
    assert "timm/resnet18.a1_in1k" in last and "set model.pretrained to its path" in last


# Builds a timm backbone with ImageNet weights and prints the seconds it took, then what came of it.
_IMAGENET = """
import sys, time
import torch
from segmodels.models.backbones import build_backbone
start = time.monotonic()
try:
    body = build_backbone("timm:mobilenetv3_small_050", pretrained="imagenet").body
except FileNotFoundError as exc:
    print(f"{time.monotonic() - start:.1f}", exc, sep="\\n")
else:
    from safetensors.torch import load_file
    saved = load_file(sys.argv[1])
    print(f"{time.monotonic() - start:.1f}", torch.equal(body.conv_stem.weight, saved["conv_stem.weight"]), sep="\\n")
"""


def _without_network(tmp_path: Path, weights: Path | None = None) -> tuple[float, str]:
    """Run :data:`_IMAGENET` against a Hub that refuses connections (a closed local port: nothing is downloaded
    whatever this machine's network), with empty caches; its seconds and its last line."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub"),
            "TORCH_HOME": str(tmp_path / "torch")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _IMAGENET, str(weights)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seconds, last = done.stdout.strip().splitlines()[-2:]
    return float(seconds), last


def test_imagenet_without_network_is_refused_at_once_with_the_way_out(tmp_path: Path) -> None:
    """One short probe of the Hub, not its client's minute of retries, before the message."""
    seconds, message = _without_network(tmp_path)
    assert message.startswith("ImageNet weights of timm model 'mobilenetv3_small_050' could not be loaded"), message
    assert "timm/mobilenetv3_small_050.lamb_in1k" in message and "set model.pretrained to its path" in message
    assert seconds < 10, seconds


def test_imagenet_without_network_comes_from_the_hub_cache(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg("mobilenetv3_small_050").hf_hub_id
    commit = "0" * 40
    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    weights = folder / "snapshots" / commit / "model.safetensors"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), str(weights))
    seconds, same = _without_network(tmp_path, weights)
    assert same == "True" and seconds < 10, (seconds, same)


def test_an_alias_run_trains_and_its_checkpoint_loads_in_a_fresh_process(tmp_path, packed_data, mlflow_uri) -> None:
    """The alias travels in the checkpoint's training config: a process that never read the study loads it."""
    from conftest import small_config

    from segmodels.engine.checkpoint import load_model_from_checkpoint
    from segmodels.engine.train import train

    with catalog.registered():
        cfg = small_config(backbones={"mnv3s": {"timm": "mobilenetv3_small_100"}}, models=["mnv3s-segformer"],
                           train={"iterations": 2, "log_every": 1, "ckpt_every": 2})  # fmt: skip
        import_plugins({"backbones": cfg.backbones})
        result = train(cfg, "mnv3s-segformer", seed=0, out=tmp_path / "run", data_dir=packed_data)
        assert result.model.backbone.stage_strides == (4, 8, 8, 8)
        loaded = load_model_from_checkpoint(tmp_path / "run")
        assert loaded.name == "mnv3s-segformer"
    code = ("import sys; from segmodels.engine.checkpoint import load_model_from_checkpoint as load\n"
            "print(load(sys.argv[1]).name)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "mnv3s-segformer"
