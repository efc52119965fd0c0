"""The benchmark's four numbers and Boundary IoU through `segmodels evaluate`: generated Cityscapes scenes with
instance ids, scored at the packed and the full resolution, against cityscapesScripts on the same predictions;
a dataset without instance ids leaves the instance-level scores blank."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segmodels.data.labels import TRAINID_TO_ID
from segmodels.data.layouts import generate_layout
from segmodels.data.loader import normalize
from segmodels.data.pack import prepare
from segmodels.data.synthetic import SynthParams, generate
from segmodels.engine.checkpoint import save_atomic
from segmodels.engine.evaluate import evaluate
from segmodels.models import build_model
from segmodels.study.config import StudyConfig, config_to_dict

BENCHMARK = ("iiou", "miou_category", "iiou_category")


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    base = tmp_path_factory.mktemp("city")
    generate(base / "raw", SynthParams(train=0, val=3, size=(64, 128), color=False), workers=1, progress=False)
    prepare(root=base / "raw", out=base / "packed", size=(32, 64), source="synthetic", splits=("val",), workers=1,
            progress=False)  # fmt: skip
    return base


def _checkpoint(run, num_classes=19):
    torch.manual_seed(3)
    model = build_model("mobilenetv3", "fcn", num_classes=num_classes, pretrained=None)
    with torch.no_grad():  # a few classes, person and car among them, share the image: the scores are not of zeros
        model.head.classifier.bias.fill_(-1e3)
        model.head.classifier.bias[[0, 2, 11, 13]] = 0.0
    ckpt = {"format": 1, "model": model.state_dict(), "backbone": "mobilenetv3", "head": "fcn",
            "num_classes": num_classes, "output_stride": 8, "aux": True, "config": config_to_dict(StudyConfig()),
            "iteration": 1}  # fmt: skip
    save_atomic(ckpt, run / "checkpoint.pt")
    return model.eval()


def _config(**evaluate) -> StudyConfig:
    cfg = StudyConfig()
    cfg.evaluate.amp, cfg.evaluate.batch_size, cfg.evaluate.samples = False, 2, []
    for key, value in evaluate.items():
        setattr(cfg.evaluate, key, value)
    return cfg


def test_full_resolution_equals_cityscapes_scripts_on_the_same_predictions(tmp_path, city, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # cityscapesScripts calls np.in1d (gone in numpy 2.4)
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    model = _checkpoint(run)
    full = evaluate(_config(full_resolution=True), run, data=city / "packed", log_mlflow=False, progress=False)
    packed = evaluate(_config(), run, data=city / "packed", out=tmp_path / "packed", log_mlflow=False,
                      progress=False)  # fmt: skip

    # The same predictions, made here: the packed image's scores upsampled to the raw labels' size.
    images = torch.from_numpy(np.load(city / "packed" / "val" / "images.npy"))
    with torch.inference_mode():
        scores = model(normalize(images))["out"]
    gts = sorted((city / "raw" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    names = json.loads((city / "packed" / "manifest.json").read_text())["splits"]["val"]["names"]
    assert [p.name.removesuffix("_gtFine_labelIds.png") for p in gts] == names
    preds = []
    for i, gt in enumerate(gts):
        size = np.asarray(Image.open(gt)).shape
        pred = F.interpolate(scores[i : i + 1], size=size, mode="bilinear", align_corners=False).argmax(1)[0]
        path = tmp_path / f"pred{i}.png"
        Image.fromarray(TRAINID_TO_ID[pred.numpy()]).save(path)
        preds.append(str(path))
    args = cs.args
    args.evalInstLevelScore, args.evalPixelAccuracy, args.quiet, args.JSONOutput = True, False, True, False
    args.evalLabels = [label.id for label in cs.labels if label.id >= 0]
    theirs = cs.evaluateImgLists(preds, [str(g) for g in gts], args)

    assert full["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-9)
    assert full["iiou"] == pytest.approx(theirs["averageScoreInstClasses"], abs=1e-9)
    assert full["miou_category"] == pytest.approx(theirs["averageScoreCategories"], abs=1e-9)
    assert full["iiou_category"] == pytest.approx(theirs["averageScoreInstCategories"], abs=1e-9)
    assert full["iiou"] > 0 and full["iiou_category"] > 0  # the check is not of zeros
    for name, scores_of in full["per_class"].items():
        if "iiou" in scores_of:
            assert scores_of["iiou"] == pytest.approx(theirs["classInstScores"][name], abs=1e-9, nan_ok=True)
    assert {name for name, v in full["per_class"].items() if "iiou" in v} == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}  # fmt: skip
    assert full["categories"]["human"]["iiou"] == pytest.approx(theirs["categoryInstScores"]["human"], abs=1e-9)
    assert 0 <= full["biou"] <= 1

    # Every metric at the packed size too: the same numbers as an evaluation at the packed size.
    for key in ("miou", *BENCHMARK, "biou"):
        assert full["packed"][key] == pytest.approx(packed[key], abs=1e-12), key
    saved = json.loads((run / "metrics.json").read_text())
    assert all(saved[key] == pytest.approx(full[key]) for key in (*BENCHMARK, "biou"))
    with np.load(run / "statistics_per_image.npz") as stats:
        assert stats["instances"].shape == (3, 8, 3) and stats["boundary"].shape == (3, 19, 2)
        assert list(stats["instance_class_names"])[:2] == ["person", "rider"]
    with (run / "per_class.csv").open() as fh:
        rows = {r["class"]: r for r in csv.DictReader(fh)}
    assert rows["road"]["iiou"] == "" and rows["person"]["iiou"] != "" and rows["road"]["biou"] != ""


def test_instance_ids_reach_the_packed_scores(tmp_path, city):
    """Scores at the packed size use the packed instance ids: dropping them blanks the instance-level scores."""
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    _checkpoint(run)
    with_ids = evaluate(_config(), run, data=city / "packed", log_mlflow=False, progress=False)
    assert all(math.isfinite(with_ids[key]) for key in (*BENCHMARK, "biou"))


def test_a_dataset_without_instances_leaves_them_blank(tmp_path):
    generate_layout(tmp_path / "raw", "voc", SynthParams(train=0, val=2, size=(48, 64), color=False), workers=1,
                    progress=False)  # fmt: skip
    prepare(root=tmp_path / "raw", out=tmp_path / "packed", size=(32, 48), source="voc", splits=("val",), workers=1,
            progress=False)  # fmt: skip
    assert not (tmp_path / "packed" / "val" / "instances.npy").exists()
    run = tmp_path / "mobilenetv3-fcn" / "seed0"
    _checkpoint(run, num_classes=21)
    cfg = _config()
    cfg.model.num_classes = 21
    metrics = evaluate(cfg, run, data=tmp_path / "packed", log_mlflow=False, progress=False)
    saved = json.loads((run / "metrics.json").read_text())
    assert all(saved[key] is None for key in BENCHMARK)  # blank, never 0
    assert saved["categories"] is None and 0 <= saved["biou"] <= 1 and math.isfinite(metrics["biou"])
    assert not any("iiou" in v for v in saved["per_class"].values())
    with np.load(run / "statistics_per_image.npz") as stats:
        assert set(stats.files) == {"boundary"}
