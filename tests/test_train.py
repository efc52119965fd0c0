"""Training: the recipe's parts, a small model overfitting real files, NaN handling, resume refusal, distillation."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config, write_config
from mlflow import MlflowClient

from segmodels.cli import main
from segmodels.cli.train import parse_overrides
from segmodels.engine import checkpoint as ckpt
from segmodels.engine.losses import cross_entropy, distillation_loss, segmentation_loss
from segmodels.engine.run import with_data_classes
from segmodels.engine.step import Stepper, build_optimizer, param_groups, poly_lr, speed_settings
from segmodels.engine.train import run_params, train
from segmodels.tracking import read_run_id

# --- the recipe ----------------------------------------------------------------------------------


def test_poly_lr_decays_to_zero_after_a_linear_warmup():
    kw = {"base_lr": 0.01, "total": 100, "power": 0.9}
    assert poly_lr(0, **kw) == pytest.approx(0.01)
    assert poly_lr(50, **kw) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(100, **kw) == 0.0
    warm = [poly_lr(s, warmup_iters=10, warmup_ratio=0.1, **kw) for s in range(12)]
    assert warm[0] == pytest.approx(0.001)
    assert all(a < b for a, b in zip(warm[:10], warm[1:11], strict=True))  # rises through the warm-up
    assert warm[10] == pytest.approx(poly_lr(10, **kw))  # then joins the poly curve


def test_param_groups_skip_decay_on_norms_and_biases_and_scale_the_head():
    from segmodels.models import build_model

    model = build_model("resnet18", "ppm", num_classes=5, pretrained=None)
    groups = param_groups(model, weight_decay=1e-4, head_lr_mult=10.0)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            assert group["weight_decay"] == (1e-4 if p.ndim > 1 else 0.0), names[id(p)]
            assert group["lr_mult"] == (1.0 if names[id(p)].startswith("backbone.") else 10.0), names[id(p)]


def test_losses_ignore_unlabelled_pixels_and_weight_the_extra_heads():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[:, :4] = 255
    keep = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert torch.allclose(cross_entropy(logits, labels), expected)
    assert cross_entropy(logits, torch.full_like(labels, 255)).item() == 0.0  # not 0/0 = NaN
    out = {"out": logits, "aux": logits * 2}
    total, parts = segmentation_loss(out, labels, aux_weight=0.4)
    assert set(parts) == {"main", "aux"}
    assert torch.allclose(total, parts["main"] + 0.4 * parts["aux"])


def test_distillation_is_kl_on_softened_logits_times_t_squared():
    student, teacher = torch.randn(1, 5, 4, 4), torch.randn(1, 5, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert distillation_loss(teacher, teacher, labels, temperature=2.0).abs().item() < 1e-6
    t = 3.0
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="none")
    expected = kl.sum(1).mean() * t * t
    assert torch.allclose(distillation_loss(student, teacher, labels, temperature=t), expected, atol=1e-6)
    labels[0, 0, 0] = 255  # an ignored pixel leaves the mean
    expected = kl.sum(1).flatten()[1:].mean() * t * t
    assert torch.allclose(distillation_loss(student, teacher, labels, temperature=t), expected, atol=1e-6)


def test_gpu_speed_features_run_the_same_step_on_the_cpu(monkeypatch):
    """Autocast (bf16; fp16 with a gradient scaler), channels_last and the fused SGD, exercised on the CPU."""
    from segmodels import devices
    from segmodels.models import build_model
    from segmodels.study.config import TrainConfig

    t = TrainConfig()
    gpu = speed_settings(t, torch.device("cuda"))  # what a GPU run would switch on (no GPU needed to ask)
    assert gpu.amp_dtype in (torch.bfloat16, torch.float16) and gpu.channels_last and gpu.fused_optimizer
    assert gpu.cudnn_benchmark and not gpu.sync_every_step
    for native in (True, False):  # train.amp on a CPU: bf16 autocast only where bf16 is native
        monkeypatch.setattr(devices, "cpu_bf16_support", lambda cpuinfo=None, native=native: (native, "the test's"))
        cpu = speed_settings(t, torch.device("cpu"))
        assert cpu.amp_dtype == (torch.bfloat16 if native else None), native
        assert not cpu.channels_last and not cpu.fused_optimizer
        assert speed_settings(dataclasses.replace(t, amp=False), torch.device("cpu")).amp_dtype is None
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (2, 32, 32))
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        model = build_model("mobilenetv2", "ocr", num_classes=5, pretrained=None).train()
        model.to(memory_format=torch.channels_last)
        before = [p.detach().clone() for p in model.parameters()]
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0, enabled=dtype == torch.float16)
        step = Stepper(model, build_optimizer(model, t, fused=True), scaler, t, amp_dtype=dtype, device_type="cpu")
        loss, parts = step(x, y, 0.01)
        assert torch.isfinite(loss) and set(parts) == {"main", "aux"}  # OCR's regions are the aux head's: one loss
        changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert changed > 0.9 * len(before), dtype
        assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    ckpt.save_atomic({"rng": ckpt.get_rng_state()}, tmp_path / "rng.pt")
    draws = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2:] == again[2:]


def test_set_overrides_are_yaml_scalars():
    assert parse_overrides(["train.lr=0.02", "model.pretrained=null", "train.crop_size=[32, 48]", "x=y"]) == {
        "train.lr": 0.02, "model.pretrained": None, "train.crop_size": [32, 48], "x": "y",
    }  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["train.lr"])


# --- training on real files ------------------------------------------------------------------------


def _pixel_accuracy(model, packed_data) -> float:
    from segmodels.data.loader import PackedSplit, normalize

    split = PackedSplit(packed_data / "train")
    images = normalize(torch.from_numpy(np.array(split.images)))
    labels = torch.from_numpy(np.array(split.labels)).long()
    pred = model.eval()(images)["out"].argmax(1)
    keep = labels != 255
    return (pred[keep] == labels[keep]).float().mean().item()


@pytest.mark.slow
def test_small_model_overfits_and_the_run_is_tracked(tmp_path, packed_data, mlflow_uri):
    cfg = small_config(train={"iterations": 80, "batch_size": 2, "lr": 0.1, "log_every": 10, "ckpt_every": 40,
                              "val_every": 40, "warmup_iters": 5})  # fmt: skip
    out = tmp_path / "run"
    result = train(cfg, "mobilenetv2-fcn", seed=0, out=out, data_dir=packed_data)

    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(10, 81, 10))
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    with torch.no_grad():
        assert _pixel_accuracy(result.model, packed_data) > 0.9
    assert result.val["val_miou"] == pytest.approx(float(rows[-1]["val_miou"]))

    # The files of a run, and which are final.
    assert not (out / "train_log.partial.csv").exists()
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "last.pt", "train_log.csv", "config.yaml",
                                                "mlflow_run_id"}  # fmt: skip
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (saved["format"], saved["backbone"], saved["head"], saved["iteration"]) == (1, "mobilenetv2", "fcn", 80)
    assert saved["config"]["train"]["lr"] == 0.1
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 80
    reloaded = ckpt.load_model_from_checkpoint(out, expect_backbone="mobilenetv2", expect_num_classes=19)
    with torch.no_grad():
        assert _pixel_accuracy(reloaded, packed_data) == _pixel_accuracy(result.model, packed_data)
    with pytest.raises(ValueError, match="head='fcn', expected 'ppm'"):
        ckpt.load_model_from_checkpoint(out / "checkpoint.pt", expect_head="ppm")

    client = MlflowClient(mlflow_uri)
    run = client.get_run(read_run_id(out))
    assert run.info.status == "FINISHED" and run.info.run_name == "mobilenetv2-fcn-seed0"
    assert client.get_experiment(run.info.experiment_id).name == "segbench-test"
    params = run.data.params
    assert cfg.model.num_classes is None and params["model.num_classes"] == "19"  # the data's, as it trained
    for key, value in run_params(with_data_classes(cfg, packed_data), "mobilenetv2-fcn", 0).items():
        assert params[key] == str(value), key
    assert params["model.backbone"] == "mobilenetv2" and params["model.head"] == "fcn"
    assert params["model.head_label"] == "FCN"
    assert int(params["model.params"]) == sum(p.numel() for p in result.model.parameters())
    assert {"git_commit", "device", "torch_version"} <= set(run.data.tags)
    assert run.data.tags["torch_version"] == torch.__version__
    for key in ("loss", "loss_main", "loss_aux", "lr", "images_per_s", "data_wait_ms"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, f"train/{key}")]
        assert sorted(steps) == list(range(10, 81, 10)), key
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/val_miou")) == [40, 80]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "train_log.csv"}


def test_diverging_loss_stops_with_the_iteration_and_keeps_the_last_good_state(tmp_path, packed_data, mlflow_uri,
                                                                             capsys):  # fmt: skip
    cfg = small_config(train={"iterations": 30, "lr": 1e12, "log_every": 5, "ckpt_every": 1})
    out = tmp_path / "run"
    args = ["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--model", "mobilenetv2-fcn",
            "--out", str(out), "--data", str(packed_data)]  # fmt: skip
    assert main(args) == 1
    message = capsys.readouterr().err
    found = [int(w) for w in message.replace(";", " ").split() if w.isdigit()]
    assert "not finite at iteration" in message, message
    bad = found[0]
    state = torch.load(out / "last.pt", weights_only=True)
    assert 0 < state["iteration"] < bad <= 30
    assert f"iteration {state['iteration']})" in message
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "checkpoint.pt").exists() and not (out / "train_log.csv").exists()
    run = MlflowClient(mlflow_uri).get_run(read_run_id(out))
    assert run.info.status == "FAILED"


def test_resume_refuses_a_changed_recipe_unless_restarted(tmp_path, packed_data, mlflow_uri, capsys):
    cfg = small_config(train={"iterations": 2, "log_every": 1, "ckpt_every": 1})
    out = tmp_path / "run"
    base = ["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--model", "mobilenetv2-fcn",
            "--out", str(out), "--data", str(packed_data)]  # fmt: skip
    assert main(base) == 0
    first_run = read_run_id(out)
    assert main([*base, "--set", "train.lr=0.02", "--set", "train.log_every=2"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.01 -> 0.02" in err and "log_every" not in err  # logging cadence is not the recipe
    with pytest.warns(UserWarning, match="write-once"):  # the MLflow param keeps its first value
        assert main([*base, "--set", "train.log_every=2"]) == 0  # resumes the finished run: nothing to redo
    assert read_run_id(out) == first_run
    assert main([*base, "--set", "train.lr=0.02", "--restart"]) == 0
    second_run = read_run_id(out)
    assert second_run != first_run
    client = MlflowClient(mlflow_uri)
    assert client.get_run(second_run).data.params["train.lr"] == "0.02"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["train"]["lr"] == 0.02


def test_resume_refuses_other_data_under_the_same_name_unless_restarted(tmp_path, mlflow_uri, capsys):
    from conftest import make_packed_dataset

    from segmodels.data.pack import data_identity

    data = make_packed_dataset(tmp_path / "tiny", seed=0)
    first = data_identity(data)
    cfg = small_config(train={"iterations": 4, "log_every": 1, "ckpt_every": 2})
    out = tmp_path / "run"
    base = ["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--model", "mobilenetv2-fcn",
            "--out", str(out), "--data", str(data)]  # fmt: skip
    # A run (its last.pt stays in the folder), then the dataset is generated again with other images.
    assert main(base) == 0
    make_packed_dataset(tmp_path / "tiny", seed=1)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["names"] = [f"regenerated_{i}" for i in range(manifest["splits"]["train"]["count"])]
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert data_identity(data) != first
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and first in err and "--restart" in err
    assert main([*base, "--restart"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["params"]["run.data_identity"] == data_identity(data)


def test_distillation_from_a_teacher_run(tmp_path, packed_data, mlflow_uri):
    teacher_cfg = small_config(train={"iterations": 2, "log_every": 1})
    train(teacher_cfg, "mobilenetv2-fcn", out=tmp_path / "teacher", data_dir=packed_data)
    cfg = small_config(train={"iterations": 2, "log_every": 1, "distill_teacher": str(tmp_path / "teacher"),
                              "distill_temperature": 2.0})  # fmt: skip
    train(cfg, "mobilenetv2-fcn", out=tmp_path / "student", data_dir=packed_data)
    with (tmp_path / "student" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(math.isfinite(float(r["loss_distill"])) and float(r["loss_distill"]) > 0 for r in rows)


def test_bad_input_is_refused_before_training(tmp_path, packed_data):
    cfg = small_config()
    with pytest.raises(FileNotFoundError, match="images.npy"):
        train(cfg, "mobilenetv2-fcn", out=tmp_path / "a", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown model"):
        train(cfg, "mobilenetv9-fcn", out=tmp_path / "a", data_dir=packed_data)
    bad = small_config(train={"distill_teacher": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="distill_teacher"):
        train(bad, "mobilenetv2-fcn", out=tmp_path / "a", data_dir=packed_data)
    assert not (tmp_path / "a").exists()


def test_figure_samples_past_the_validation_split_are_refused_before_training(tmp_path, packed_data):
    cfg = small_config(evaluate={"samples": [0, 10]})  # packed_data has 2 validation images
    with pytest.raises(ValueError, match=r"evaluate.samples: index 10 is out of range for the 2 validation images"):
        train(cfg, "mobilenetv2-fcn", out=tmp_path / "a", data_dir=packed_data)
    assert not (tmp_path / "a" / "checkpoint.pt").exists() and not (tmp_path / "a" / "train_log.csv").exists()


def test_classes_of_the_packed_data_are_checked_before_any_model_or_run(tmp_path, mlflow_uri, capsys):
    import json

    from conftest import make_packed_dataset

    data = make_packed_dataset(tmp_path / "three")
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["palette"]
    (data / "manifest.json").write_text(json.dumps({**manifest, "classes": ["road", "sky", "car"]}))
    nineteen = small_config(model={"num_classes": 19})  # set in the config: checked against the data
    with pytest.raises(ValueError, match=r"'model.num_classes' is 19, but the packed data in .*three has 3 classes "
                                         r"\(road, sky, car\); set model.num_classes: 3"):  # fmt: skip
        train(nineteen, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=data)
    assert not (tmp_path / "run").exists()
    assert not MlflowClient(mlflow_uri).search_experiments(filter_string="name = 'segbench-test'")
    config = write_config(tmp_path / "study.yaml", nineteen)
    code = main(["train", "--config", str(config), "--model", "mobilenetv2-fcn", "--out", str(tmp_path / "run"),
                 "--data", str(data)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "has 3 classes" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_train_prints_both_variants_and_the_ratio(capsys):
    args = ["bench-train", "--model", "mobilenetv2-fcn", "--crop", "32", "32", "--batch", "2", "--iters", "2",
            "--warmup", "1", "--rounds", "1", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    on = float(text.split("speed features on :")[1].split()[0])
    off = float(text.split("speed features off:")[1].split()[0])
    ratio = float(text.split("ratio on/off      :")[1].split("x")[0])
    assert on > 0 and off > 0 and ratio == pytest.approx(on / off, rel=0.02, abs=2e-3)


def test_fused_sgd_after_a_skipped_first_step_matches_the_plain_optimizer():
    """fp16 training on a GPU without bf16: GradScaler may skip the very first step (an inf gradient). Fused SGD
    must then not read uninitialised momentum buffers on the next step."""
    t = small_config().train
    torch.manual_seed(0)
    models = [torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)]
    models[1].load_state_dict(models[0].state_dict())
    torch.empty(1 << 20).fill_(1e30)  # leave garbage where the allocator may hand out the buffers
    results = []
    for model, fused in zip(models, (True, False), strict=True):
        optimizer = build_optimizer(model, t, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(3):
            optimizer.zero_grad()
            loss = model(torch.ones(4, 64)).square().mean()
            scaler.scale(loss * (math.inf if step == 0 else 1.0)).backward()
            scaler.step(optimizer)
            scaler.update()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.isfinite(results[0]).all()
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_the_time_a_step_waits_for_its_batch_is_measured():
    import time

    from segmodels.data.loader import WaitClock

    def slow_loader():
        for i in range(4):
            time.sleep(0.05 if i < 2 else 0.0)  # a loader that falls behind, then keeps up
            yield i

    clock = WaitClock(slow_loader())
    assert [next(clock), next(clock)] == [0, 1]
    assert 0.1 <= clock.take() < 0.5
    assert [next(clock), next(clock)] == [2, 3]
    assert clock.take() < 0.01  # the wait since the last take only


def test_the_loader_gets_the_crop_and_contrast_options(packed_data, tmp_path):
    """train.cat_max_ratio and train.contrast_center reach the training batches."""
    from segmodels.data.loader import PackedSplit, TrainLoader
    from segmodels.engine.distributed import DistInfo
    from segmodels.engine.step import SpeedSettings
    from segmodels.engine.train import _data
    from segmodels.study.runs import RunFolder

    cfg = small_config(train={"cat_max_ratio": 0.5, "contrast_center": "zero", "crop_size": [32, 32]})
    model = torch.nn.Conv2d(3, 2, 1)
    state = ckpt.TrainState(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu"),
                            {}, DistInfo(), torch.device("cpu"), RunFolder(tmp_path))  # fmt: skip
    loader, _ = _data(state, packed_data, 3, SpeedSettings())
    split = PackedSplit(packed_data / "train")
    kw = {"batch_size": 2, "crop_size": (32, 32), "scale_range": (1.0, 1.0), "seed": 3}
    want = TrainLoader(split, cat_max_ratio=0.5, contrast_center="zero", **kw).batch(1)
    plain = TrainLoader(split, **kw).batch(1)
    got = loader.batch(1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], plain[0])


def test_the_training_loop_follows_the_schedule_down_to_min_lr(tmp_path, packed_data, mlflow_uri):
    """The logged lr of each step: poly power 1 from 0.01 to train.min_lr 0.004 over 4 iterations."""
    cfg = small_config(train={"iterations": 4, "log_every": 1, "lr": 0.01, "poly_power": 1.0, "min_lr": 0.004})
    train(cfg, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=packed_data)
    with (tmp_path / "run" / "train_log.csv").open() as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert lrs == pytest.approx([0.01, 0.0085, 0.007, 0.0055])
