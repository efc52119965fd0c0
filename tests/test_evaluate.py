"""Evaluation: sliding windows and test-time augmentation, the files of a run, MLflow, and clear mismatch errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from segmodels.cli import main
from segmodels.data.labels import ID_TO_TRAINID, colorize
from segmodels.data.loader import normalize
from segmodels.data.pack import prepare
from segmodels.engine.checkpoint import save_atomic
from segmodels.engine.evaluate import evaluate
from segmodels.engine.inference import forward_logits, predict_scores, slide_windows
from segmodels.metrics import batch_confusion, compute_metrics
from segmodels.models import build_model
from segmodels.study.config import EvaluateConfig, StudyConfig, config_to_dict


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny inputs gain nothing from intra-op threads, and on a busy machine waiting threads cost seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LABEL_IDS = np.array([0, 7, 8, 11, 21, 23, 24, 26], dtype=np.uint8)  # unlabeled, road, sidewalk, building, …


class Asymmetric(nn.Module):
    """A model whose output depends on position, so a flip that is not undone shows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(0, 1, x.shape[-1]).expand_as(x[:, :1])
        return {"out": self.conv(x) * ramp}


def test_slide_windows():
    boxes = slide_windows(50, 100, (32, 48), (20, 30))
    cover = np.zeros((50, 100), int)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (32, 48)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and boxes[-1][1] == 50 and boxes[-1][3] == 100
    assert slide_windows(40, 60, (64, 128), (10, 10)) == [(0, 40, 0, 60)]  # window larger than the image


def test_sliding_window_inference():
    torch.manual_seed(0)
    model = build_model("mobilenetv3", "fcn", num_classes=5, pretrained=None).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.inference_mode():
        whole = forward_logits(model, x)
        one = forward_logits(model, x, sliding=True, window=(48, 80), stride=(16, 16))
        many = forward_logits(model, x, sliding=True, window=(32, 48), stride=(16, 32))
    assert torch.equal(whole, one)  # one window covering the image is whole-image inference
    assert many.shape == whole.shape == (2, 5, 48, 80) and torch.isfinite(many).all()
    # Two overlapping windows of a position-dependent model: their logits are averaged where they overlap.
    tiny = Asymmetric().eval()
    x = torch.randn(1, 3, 24, 40)
    with torch.inference_mode():
        slid = forward_logits(tiny, x, sliding=True, window=(24, 24), stride=(24, 16))
        left, right = tiny(x[..., :24])["out"], tiny(x[..., 16:])["out"]
    expected = torch.cat([left[..., :16], (left[..., 16:] + right[..., :8]) / 2, right[..., 8:]], dim=-1)
    assert torch.allclose(slid, expected, atol=1e-6)


def test_tta_shapes_and_flip_orientation():
    torch.manual_seed(0)
    model = Asymmetric().eval()
    x = torch.randn(2, 3, 24, 40)
    single = predict_scores(model, x)
    assert torch.equal(single, model(x)["out"].detach())  # one view: the logits themselves
    probs = predict_scores(model, x, scales=(0.75, 1.0, 1.25), flip=True, out_size=(48, 80))
    assert probs.shape == (2, 4, 48, 80)
    assert torch.allclose(probs.sum(1), torch.ones(2, 48, 80), atol=1e-5)
    flipped = predict_scores(model, x, flip=True)
    with torch.no_grad():
        expected = (model(x)["out"].softmax(1) + model(x.flip(-1))["out"].flip(-1).softmax(1)) / 2
    assert torch.allclose(flipped, expected, atol=1e-6)
    with pytest.raises(ValueError, match="scales"):
        predict_scores(model, x, scales=(0.0,))


# --- a tiny dataset, packed by the real `prepare`, and checkpoints --------------------------------------


def _raw_dataset(root, n=3, size=(64, 128)):
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"testcity_000000_{i:06d}"
        img_dir, lab_dir = root / "leftImg8bit" / "val" / "testcity", root / "gtFine" / "val" / "testcity"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(img_dir / f"{name}_leftImg8bit.png")
        ids = np.repeat(rng.choice(LABEL_IDS, size=(size[0] // 4, size[1])), 4, axis=0)
        Image.fromarray(ids).save(lab_dir / f"{name}_gtFine_labelIds.png")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    _raw_dataset(base / "raw")
    prepare(root=base / "raw", out=base / "packed", size=(32, 64), source="synthetic", splits=("val",),
            workers=1, progress=False)  # fmt: skip
    return base


def _config(**evaluate) -> StudyConfig:
    cfg = StudyConfig()
    cfg.evaluate.amp = False  # fp32 on every CPU: the scores are compared with an fp32 forward pass
    cfg.evaluate.batch_size = 2
    cfg.evaluate.samples = [0, 2]
    for key, value in evaluate.items():
        setattr(cfg.evaluate, key, value)
    return cfg


def _checkpoint(run, backbone="mobilenetv3", head="fcn", num_classes=19, seed=0):
    torch.manual_seed(seed)
    model = build_model(backbone, head, num_classes=num_classes, pretrained=None)
    ckpt = {"format": 1, "model": model.state_dict(), "backbone": backbone, "head": head,
            "num_classes": num_classes, "output_stride": 8, "aux": True,
            "config": config_to_dict(StudyConfig()), "iteration": 42}  # fmt: skip
    save_atomic(ckpt, run / "checkpoint.pt")
    return model.eval()


def test_evaluate_run_writes_everything_and_logs_to_mlflow(tmp_path, packed, monkeypatch):
    from mlflow.tracking import MlflowClient

    from segmodels.engine.benchmark import benchmark_run
    from segmodels.tracking import RunLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "results" / "t" / "mobilenetv3-fcn" / "seed0"
    model = _checkpoint(run)
    RunLogger(run, experiment="segbench-test", uri=uri).start().end()
    cfg = _config()
    cfg.tracking.uri = uri

    metrics = evaluate(cfg, run, data=packed / "packed", progress=False)

    saved = json.loads((run / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(metrics["miou"]) and saved["iteration"] == 42
    assert saved["model"] == "mobilenetv3-fcn" and saved["num_images"] == 3
    assert saved["settings"]["flip"] is False and saved["settings"]["resolution"] == [32, 64]
    assert saved["device"]["type"] == "cpu"
    cost = saved["cost"]  # what the evaluation cost: on the CPU, time only
    assert cost["job"] == "evaluate" and cost["images"] == 3 and cost["device_type"] == "cpu"
    assert cost["wall_s"] > 0 and cost["gpu_hours"] is None and cost["energy_wh"] is None
    # The confusion matrix is what an independent forward pass gives.
    split_labels = np.load(packed / "packed" / "val" / "labels.npy")
    images = torch.from_numpy(np.load(packed / "packed" / "val" / "images.npy"))
    with torch.inference_mode():
        pred = model(normalize(images))["out"].argmax(1)
    expected = batch_confusion(pred, torch.from_numpy(split_labels).long(), 19)
    confusion = np.load(run / "confusion.npy")
    per_image = np.load(run / "confusion_per_image.npy")
    assert per_image.shape == (3, 19, 19)
    np.testing.assert_array_equal(per_image, expected.numpy())
    np.testing.assert_array_equal(confusion, expected.sum(0).numpy())
    assert confusion.sum() == (split_labels != 255).sum()
    assert saved["label_set"]["label_set"] == "cityscapes" and saved["label_set"]["classes"][:2] == ["road", "sidewalk"]
    assert list(saved["per_class"]) == saved["label_set"]["classes"]  # the packed manifest's classes
    recomputed = compute_metrics(confusion, saved["label_set"]["classes"])
    assert compute_metrics(per_image.sum(0))["miou"] == pytest.approx(saved["miou"])  # what the bootstrap resamples
    assert saved["miou"] == pytest.approx(recomputed["miou"]) and saved["absent"] == recomputed["absent"]
    nan_iou = [name for name, v in saved["per_class"].items() if v["iou"] is None]
    assert nan_iou == saved["absent"] and len(saved["absent"]) >= 10  # only 7 classes occur in these labels
    with (run / "per_class.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 19 and rows[0]["class"] == "road"
    assert [r["class"] for r in rows if r["iou"] == ""] == saved["absent"]
    # Samples: the configured images, named by index and image id, with the input and the ground truth.
    names = json.loads((packed / "packed" / "manifest.json").read_text())["splits"]["val"]["names"]
    for i in (0, 2):
        stem = run / "samples" / f"{i:04d}_{names[i]}"
        colour = np.asarray(Image.open(f"{stem}.png"))
        np.testing.assert_array_equal(colour, colorize(pred[i].numpy()))
        np.testing.assert_array_equal(np.asarray(Image.open(f"{stem}_gt.png")), colorize(split_labels[i]))
        assert np.asarray(Image.open(f"{stem}_input.png")).shape == (32, 64, 3)
    assert len(list((run / "samples").glob("0001_*"))) == 0

    # The benchmark reads metrics.json for the mIoU/Speed column and logs to the same run.
    cfg.benchmark.size, cfg.benchmark.modes = [32, 64], ["fp32"]
    latency = benchmark_run(cfg, run, repeats=2, warmup=0, device="cpu")
    run_id = (run / "mlflow_run_id").read_text().strip()
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    assert logged["miou"] == pytest.approx(saved["miou"] * 100)  # in percent, as the summary shows it
    assert logged["cost/eval_hours"] == pytest.approx(cost["wall_hours"]) and logged["cost/eval_images"] == 3
    assert "cost/eval_gpu_hours" not in logged  # nothing logged for what was not measured
    assert logged["latency_ms"] == pytest.approx(latency["latency_ms"])
    assert logged["miou_per_speed"] == pytest.approx(saved["miou"] * 100 / latency["latency_ms"] * 10)

    # Scored by the benchmark's protocol (full resolution), the run's own evaluation is still its headline: miou
    # and its files, the protocol named in a tag, the packed-size score beside it.
    cfg.evaluate.full_resolution = True
    full = evaluate(cfg, run, data=packed / "packed", progress=False)
    client = MlflowClient(uri)
    data = client.get_run(run_id).data
    history = client.get_metric_history(run_id, "miou")
    assert history[-1].value == pytest.approx(full["miou"] * 100)
    assert data.metrics["miou_packed"] == pytest.approx(full["packed"]["miou"] * 100)
    assert data.tags["protocol"] == full["protocol"]["label"] and "raw labels" in data.tags["protocol"]
    assert not any("fullres" in k for k in data.metrics)
    assert {"metrics.json", "per_class.csv"} <= {a.path for a in client.list_artifacts(run_id)}


def _write_config(tmp_path, **evaluate):
    data = {"experiment": "t", "models": ["mobilenetv3-fcn"], "evaluate": {"batch_size": 2, "samples": [1], **evaluate}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_evaluate_cli_tta_sliding_full_resolution(tmp_path, packed, capsys):
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    _checkpoint(run)
    config = _write_config(tmp_path, window=[32, 48], stride=[16, 32])
    out = run / "tta"
    code = main(["evaluate", "--config", str(config), "--run", str(run), "--data", str(packed / "packed" / "val"),
                 "--flip", "--scales", "0.75", "1.0", "--sliding", "--full-resolution", "--out", str(out),
                 "--no-mlflow", "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "mIoU" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    s = saved["settings"]
    assert s["flip"] and s["sliding"] and s["full_resolution"] and s["scales"] == [0.75, 1.0]
    assert s["tag"] == "slide_flip_ms0.75-1_fullres"
    # Scored against the raw 64×128 labels, not the packed 32×64 ones.
    raw = [np.asarray(Image.open(p)) for p in sorted((packed / "raw" / "gtFine").rglob("*_labelIds.png"))]
    assert np.load(out / "confusion.npy").sum() == sum(int((ID_TO_TRAINID[r] != 255).sum()) for r in raw)
    sample = next((out / "samples").glob("0001_*[0-9].png"))
    assert Image.open(sample).size == (128, 64)
    assert not (run / "metrics.json").exists()  # --out kept the run folder's own files apart


def test_full_resolution_also_scores_the_same_predictions_at_the_packed_size(tmp_path, packed):
    """The benchmark's protocol (raw labels) and the earlier study's (packed size) from one forward pass, each
    labelled with what it is."""
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    _checkpoint(run)
    packed_only = evaluate(_config(), run, data=packed / "packed", out=tmp_path / "p", log_mlflow=False,
                           progress=False)  # fmt: skip
    both = evaluate(_config(full_resolution=True), run, data=packed / "packed", out=tmp_path / "f",
                    log_mlflow=False, progress=False)  # fmt: skip
    assert both["packed"]["miou"] == pytest.approx(packed_only["miou"], abs=1e-12)
    assert both["packed"]["allacc"] == pytest.approx(packed_only["allacc"], abs=1e-12)
    assert both["labelled_pixels"] > packed_only["labelled_pixels"]  # scored on the raw labels' 4× more pixels
    assert both["protocol"]["scoring"] == "full" and both["protocol"]["resolution"] == "64x128"
    assert both["protocol"]["label"] == "64×128 raw labels, fp32, whole image, no TTA"
    assert both["packed"]["protocol"]["label"] == "32×64 packed labels, fp32, whole image, no TTA"
    assert packed_only["packed"] is None and packed_only["protocol"]["scoring"] == "packed"
    written = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert written["protocol"] == both["protocol"] and written["packed"]["miou"] == both["packed"]["miou"]


def test_protocol_label_names_precision_inference_and_tta():
    from segmodels.engine.evaluate import protocol

    ev = EvaluateConfig(flip=True, scales=[0.75, 1.0, 1.25], sliding=True, window=[512, 1024])
    label = protocol(ev, precision="amp bfloat16", resolution="512x1024")["label"]
    assert label == "512×1024 packed labels, amp bfloat16, sliding 512×1024, scales 0.75/1/1.25 + flip"


def test_full_resolution_needs_the_raw_dataset(tmp_path, packed):
    import shutil

    moved = tmp_path / "packed"
    shutil.copytree(packed / "packed", moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["root"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    _checkpoint(run)
    with pytest.raises(FileNotFoundError, match="gone"):
        evaluate(_config(full_resolution=True), run, data=moved, log_mlflow=False, progress=False)


def test_mismatched_checkpoints_fail_clearly(tmp_path, packed, capsys):
    run = tmp_path / "results" / "t" / "resnet50-ppm" / "seed0"
    _checkpoint(run, backbone="resnet18", head="ppm")
    with pytest.raises(ValueError, match=r"backbone='resnet18', expected 'resnet50'"):
        evaluate(_config(), run, data=packed / "packed", log_mlflow=False, progress=False)
    config = _write_config(tmp_path)
    code = main(["evaluate", "--config", str(config), "--run", str(run), "--data", str(packed / "packed")])
    err = capsys.readouterr().err
    assert code == 2 and "resnet50" in err and "Traceback" not in err

    run5 = tmp_path / "results" / "t" / "resnet18-ppm" / "seed0"
    _checkpoint(run5, backbone="resnet18", head="ppm", num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5, expected 19"):
        evaluate(_config(), run5, data=packed / "packed", log_mlflow=False, progress=False)
    assert not (run5 / "metrics.json").exists()


def test_bad_inputs_are_named_before_work(tmp_path, packed):
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        evaluate(_config(), run, data=packed / "packed", log_mlflow=False)
    _checkpoint(run)
    with pytest.raises(ValueError, match="evaluate.samples: index 7"):
        evaluate(_config(samples=[0, 7]), run, data=packed / "packed", log_mlflow=False)
    with pytest.raises(FileNotFoundError, match="images.npy"):
        evaluate(_config(), run, data=tmp_path / "nowhere", log_mlflow=False)
    five = _config()
    five.model.num_classes = 5
    with pytest.raises(ValueError, match="'model.num_classes' is 5, but the packed data in .* has 19 classes"):
        evaluate(five, run, data=packed / "packed", log_mlflow=False)
    assert math.isfinite(evaluate(_config(), run, data=packed / "packed", log_mlflow=False, progress=False)["allacc"])
