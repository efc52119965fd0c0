"""model.norm: BatchNorm, SyncBatchNorm under DDP, or GroupNorm in place of every BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import small_config, write_config
from torch import nn

from segmodels.engine.checkpoint import config_differences, load_model_from_checkpoint
from segmodels.engine.step import Stepper, build_optimizer
from segmodels.models import build_model
from segmodels.models.norms import NORMS, GroupNormAct, group_count, to_group_norm
from segmodels.study.config import ConfigError, TrainConfig, study_from_dict
from segmodels.study.schema import ModelConfig, StudyConfig, effective_norm, json_schema


def _norms(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    modules = list(model.modules())
    return ([m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)],
            [m for m in modules if isinstance(m, nn.GroupNorm)])  # fmt: skip


def test_the_schema_offers_the_norms_the_builder_takes():
    assert json_schema(StudyConfig)["properties"]["model"]["properties"]["norm"]["enum"] == list(NORMS)
    assert ModelConfig().norm == "batch"


def test_group_counts():
    assert [group_count(c) for c in (64, 256, 960, 96, 24, 40, 16, 3)] == [32, 32, 32, 32, 8, 8, 16, 1]


@pytest.mark.parametrize(("backbone", "head", "stride"), [
    ("resnet18", "ppm", 8), ("mobilenetv3", "aspp", 8), ("mobilenetv2", "ocr", 8), ("mitb0", "segformer", 32),
])  # fmt: skip
def test_group_replaces_every_batchnorm_and_keeps_the_shapes(backbone, head, stride):
    torch.manual_seed(0)
    batch = build_model(backbone, head, num_classes=5, pretrained=None, output_stride=stride)
    torch.manual_seed(0)
    group = build_model(backbone, head, num_classes=5, pretrained=None, output_stride=stride, norm="group")
    bns, gns = _norms(group)
    assert not bns and len(gns) == len(_norms(batch)[0]) > 0
    for gn in gns:
        assert gn.num_channels % gn.num_groups == 0 and gn.num_groups == group_count(gn.num_channels)
    # the same parameters (a GroupNorm's weight and bias are the BatchNorm's), no running statistics
    assert [n for n, _ in group.named_parameters()] == [n for n, _ in batch.named_parameters()]
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in group.state_dict())
    x = torch.randn(2, 3, 64, 64)
    group.train()
    out = group(x)
    assert out["out"].shape == (2, 5, 64, 64) and torch.isfinite(out["out"]).all()


def test_group_carries_the_pretrained_affine_weights(tmp_path):
    """The file's BatchNorm weight and bias land in the GroupNorm (as mmsegmentation loads a BN checkpoint into
    a GN model); the convolutions are the file's too."""
    reference = torchvision.models.resnet18()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    saved = reference.state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    body = build_model("resnet18", "fcn", pretrained=path, norm="group").backbone.body
    assert isinstance(body.layer3[1].bn2, nn.GroupNorm) and body.layer3[1].bn2.num_groups == 32
    assert torch.equal(body.layer3[1].bn2.weight, saved["layer3.1.bn2.weight"])
    assert torch.equal(body.bn1.bias, saved["bn1.bias"])
    assert torch.equal(body.layer3[0].conv1.weight, saved["layer3.0.conv1.weight"])


def test_a_norm_and_activation_module_keeps_its_activation():
    """timm's BatchNormAct2d holds its activation: the GroupNorm that replaces it applies it too."""
    from timm.layers import BatchNormAct2d

    bn = BatchNormAct2d(64, act_layer=nn.ReLU)
    nn.init.uniform_(bn.bias, -1.0, 1.0)
    model = to_group_norm(nn.Sequential(nn.Conv2d(3, 64, 1), bn))
    assert isinstance(model[1], GroupNormAct) and isinstance(model[1].act, nn.ReLU)
    x = torch.randn(2, 3, 8, 8)
    expected = torch.relu(nn.functional.group_norm(model[0](x), 32, model[1].weight, model[1].bias, bn.eps))
    torch.testing.assert_close(model(x), expected)
    assert (model(x) >= 0).all()


def test_timm_encoders_take_group_norm():
    model = build_model("timm:efficientnet_b0", "fcn", num_classes=3, pretrained=None, norm="group")
    bns, gns = _norms(model)
    assert not bns and any(isinstance(m, GroupNormAct) for m in gns)
    assert model.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_a_batchnorm_of_its_own_kind_is_refused_by_name():
    class Renorm(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(nn.ReLU(), Renorm(8)))
    with pytest.raises(ValueError, match=r"model.norm: group cannot replace 1\.1 \(.*Renorm\).*model.norm: batch"):
        to_group_norm(model)
    with pytest.raises(ValueError, match="norm must be one of batch, sync, group, got 'layer'"):
        build_model("resnet18", "fcn", pretrained=None, norm="layer")


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, 3, (n, 32, 32), generator=g)
    labels[0, :20] = 255  # the images have different numbers of labelled pixels
    return images, labels


def _trained_with(norm: str, accumulate: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", num_classes=3, pretrained=None, norm=norm).train()
    for module in model.modules():  # dropout draws its masks per forward pass: not the same for 4 passes of 1
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    tcfg = TrainConfig(amp=False, momentum=0.9, weight_decay=1e-4)
    step = Stepper(model, build_optimizer(model, tcfg), torch.amp.GradScaler("cpu", enabled=False), tcfg,
                   amp_dtype=None, device_type="cpu", accumulate=accumulate)  # fmt: skip
    for _ in range(2):
        step(*_batch(), lr=0.05)
    return model


def test_group_norm_makes_accumulation_equal_the_full_batch():
    """With GroupNorm a real model's step on 4 micro-batches of 1 is the step on the batch of 4 (to fp32
    rounding); with BatchNorm it is not: each micro-batch is normalised on its own."""
    full, accumulated = _trained_with("group", 1), _trained_with("group", 4)
    for (name, a), b in zip(full.named_parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    full, accumulated = _trained_with("batch", 1), _trained_with("batch", 4)
    assert not torch.allclose(full.head.conv[0].weight, accumulated.head.conv[0].weight, rtol=1e-3, atol=1e-4)


def test_sync_bn_is_the_earlier_spelling_of_norm_sync():
    old = small_config(train={"sync_bn": True})
    assert effective_norm(old) == "sync" and effective_norm(small_config(model={"norm": "sync"})) == "sync"
    assert effective_norm(small_config()) == "batch" and effective_norm(small_config(model={"norm": "group"})) == "group"
    with pytest.raises(ConfigError, match=r"x.yaml: 'train.sync_bn' is true but 'model.norm' is group"):
        study_from_dict({"train": {"sync_bn": True}, "model": {"norm": "group"}}, where="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: .*'model.norm'.* be one of batch, sync, group"):
        study_from_dict({"model": {"norm": "instance"}}, where="x.yaml")


def test_a_resume_state_of_either_spelling_resumes_under_the_other():
    """last.pt written with train.sync_bn: true (model.norm absent then) resumes under model.norm: sync, and a
    state of batch does not resume as group."""
    old = {"train.sync_bn": True, "train.lr": 0.01}
    assert config_differences(old, {"train.sync_bn": False, "model.norm": "sync", "train.lr": 0.01}) == []
    assert config_differences({"train.lr": 0.01}, {"model.norm": "batch", "train.lr": 0.01}) == []
    assert config_differences({"train.lr": 0.01}, {"model.norm": "group", "train.lr": 0.01}) == [
        "model.norm: 'batch' -> 'group'"]


def test_a_group_norm_run_trains_saves_and_loads(tmp_path, packed_data, mlflow_uri):
    """The run is built, checkpointed and rebuilt with GroupNorm; its checkpoint names the norm; its inference copy
    and ONNX graph (INT8 too) compute what the model does."""
    import numpy as np
    import onnxruntime as ort

    from segmodels.engine.export import export_onnx
    from segmodels.engine.quantize import quantize_on_inputs
    from segmodels.engine.train import train

    cfg = small_config(model={"norm": "group"}, train={"iterations": 2, "ckpt_every": 2})
    cfg.tracking.uri = mlflow_uri
    train(cfg, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=packed_data)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["norm"] == "group" and saved["config"]["model"]["norm"] == "group"
    model = load_model_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    bns, gns = _norms(model)
    assert not bns and gns
    x = torch.randn(1, 3, 64, 64)
    path = export_onnx(model, tmp_path / "model.onnx", size=(64, 64))
    (logits,) = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    np.testing.assert_allclose(logits, model(x)["out"].detach().numpy(), rtol=1e-4, atol=1e-4)
    record = quantize_on_inputs(path, tmp_path / "model.int8.onnx", [torch.randn(1, 3, 64, 64).numpy()] * 2)
    (int8,) = ort.InferenceSession(record["path"]).run(None, {"images": x.numpy()})
    assert int8.shape == logits.shape and np.isfinite(int8).all()
    # A checkpoint that names no norm (written before model.norm) is BatchNorm's.
    del saved["norm"]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="weights do not fit"):
        load_model_from_checkpoint(tmp_path / "old.pt")


def test_norm_sync_on_one_process_trains_as_batch(tmp_path, packed_data, mlflow_uri):
    """SyncBatchNorm needs DDP on CUDA; one CPU process keeps BatchNorm and the same weights as batch."""
    from segmodels.engine.train import train

    weights = []
    for norm in ("batch", "sync"):
        cfg = small_config(model={"norm": norm}, train={"iterations": 2, "ckpt_every": 2})
        cfg.tracking.uri = mlflow_uri
        train(cfg, "mobilenetv2-fcn", out=tmp_path / norm, data_dir=packed_data)
        weights.append(torch.load(tmp_path / norm / "checkpoint.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)



def test_an_axis_compares_the_norms():
    from segmodels.study.matrix import run_config, run_names

    cfg = study_from_dict({"models": ["resnet18-ppm"], "axes": {"model.norm": ["batch", "group"]}})
    assert run_names(cfg) == ["resnet18-ppm_normbatch", "resnet18-ppm_normgroup"]
    assert [effective_norm(run_config(cfg, name)) for name in run_names(cfg)] == ["batch", "group"]


@pytest.mark.parametrize(("backbone", "head", "options"), [
    ("resnet18", "ppm", {}), ("resnet18", "aspp", {"image_pool": True}), ("resnet18", "aspp", {}),
    ("mobilenetv2", "ocr", {}), ("resnet18", "fcn", {}), ("timm:efficientnet_b0", "ppm", {}),
])  # fmt: skip
def test_the_batchnorms_that_cannot_take_one_image_are_found(backbone, head, options):
    """Listed exactly where a training forward pass of one image fails; none once the norm is group."""
    from segmodels.models.norms import pooled_batchnorms

    model = build_model(backbone, head, num_classes=3, pretrained=None, head_options=options).train()
    try:
        model(torch.randn(1, 3, 64, 64))
        fails = False
    except ValueError as exc:
        assert "Expected more than 1 value per channel" in str(exc)
        fails = True
    assert bool(pooled_batchnorms(model)) == fails
    group = build_model(backbone, head, num_classes=3, pretrained=None, head_options=options, norm="group").train()
    assert pooled_batchnorms(group) == [] and group(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_the_search_does_not_offer_one_image_to_a_pooled_batchnorm():
    from segmodels.engine.micro_batch import Accumulation, OutOfMemory, find_micro_batch

    tried = []

    def probe(m, micro, crop, device, amp_dtype, channels_last):
        tried.append(micro)
        if micro > 1:  # the card: one crop fits, two do not
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    batch = build_model("resnet18", "ppm", num_classes=3, pretrained=None)
    with pytest.raises(OutOfMemory, match=r"not even 2 64×64 crops fit .*tried 4: out of memory, 2: out of memory\) "
                                          r"and one image is not enough: .*head\.stages\.0\.1\.1.*model.norm: group"):
        find_micro_batch(batch, 4, (64, 64), torch.device("cpu"), probe=probe)
    assert tried == [4, 2]
    group = build_model("resnet18", "ppm", num_classes=3, pretrained=None, norm="group")
    assert find_micro_batch(group, 4, (64, 64), torch.device("cpu"), probe=probe) == Accumulation(1, 4, searched=True)


def test_training_at_one_image_per_micro_batch_is_refused_before_the_first_step(tmp_path, packed_data, mlflow_uri,
                                                                                capsys):
    from segmodels.cli import main

    cfg = small_config(train={"iterations": 2, "batch_size": 2, "accumulate": 2})
    config = tmp_path / "study.yaml"
    write_config(config, cfg)
    # FCN has no global pooling: it trains on single images
    assert main(["train", "--config", str(config), "--model", "mobilenetv2-fcn", "--out", str(tmp_path / "fcn"),
                 "--data", str(packed_data)]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "ppm"
    code = main(["train", "--config", str(config), "--model", "mobilenetv2-ppm", "--out", str(out),
                 "--data", str(packed_data)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"segmodels train: error: {out}: a micro-batch of 1 image cannot train it: the BatchNorm " in err
    assert "model.norm: group" in err and "train.accumulate" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "train_log.csv").exists()
    # the same study at micro-batches of 2, or under GroupNorm, trains
    write_config(config, small_config(model={"norm": "group"}, train={"iterations": 2, "batch_size": 2,
                                                                       "accumulate": 2}))  # fmt: skip
    assert main(["train", "--config", str(config), "--model", "mobilenetv2-ppm", "--out", str(out),
                 "--data", str(packed_data)]) == 0  # fmt: skip


def test_the_plan_refuses_what_training_would(tmp_path, capsys, monkeypatch):
    from segmodels.cli import main
    from segmodels.engine.calibrate import calibrate_run

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "study.yaml", small_config(models=["mobilenetv2-fcn", "mobilenetv2-ppm"],
                                                                train={"batch_size": 2, "accumulate": 2}))
    # without calibrating (recorded costs only): the model is still built for its size, and refused
    assert main(["plan", "--config", str(config), "--calibrate", "0", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "segmodels plan: error: mobilenetv2-ppm: a micro-batch of 1 image cannot train it" in err, err

    cfg = small_config(models=["mobilenetv2-ppm"], train={"batch_size": 2, "accumulate": 2})
    with pytest.raises(ValueError, match=r"^mobilenetv2-ppm: a micro-batch of 1 image cannot train it"):
        calibrate_run(cfg, "mobilenetv2-ppm", torch.device("cpu"), steps=1, warmup=0)
    group = small_config(models=["mobilenetv2-ppm"], model={"norm": "group"}, train={"batch_size": 2, "accumulate": 2})
    assert calibrate_run(group, "mobilenetv2-ppm", torch.device("cpu"), steps=1, warmup=0)["micro_batch"] == 1
