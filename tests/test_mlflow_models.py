"""The trained model as an MLflow model: logged into its run, loaded back by ``runs:/<id>/model`` and predicting as
the checkpoint does; registered versions and the study's champion alias; the exported ONNX file as a run artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import small_config
from mlflow import MlflowClient

from segmodels.cli import main
from segmodels.engine.checkpoint import load_model_from_checkpoint
from segmodels.engine.train import train
from segmodels.models import build_model
from segmodels.study.config import ConfigError, StudyConfig, from_dict
from segmodels.study.runs import run_dir, write_json
from segmodels.study.summary import publish, summarize
from segmodels.tracking import CHAMPION, RunLogger, log_trained_model, read_run_id, registered_name

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(tmp_path, packed_data, mlflow_uri):
    """A run trained for two iterations into ``tmp_path/run``, tracked in the test's store: (config, folder)."""
    cfg = small_config(train={"iterations": 2, "log_every": 1, "ckpt_every": 2})
    result = train(cfg, "mobilenetv2-fcn", out=tmp_path / "run", data_dir=packed_data)
    return cfg, result


def test_logged_model_loads_back_and_predicts_as_the_checkpoint(trained, mlflow_uri, tmp_path):
    cfg, result = trained
    run_id = read_run_id(result.run_dir)
    logged = log_trained_model(result.run_dir, result.model, cfg)
    assert logged["run_id"] == run_id and logged["model_uri"] == f"runs:/{run_id}/model"
    assert logged["version"] is None  # tracking.register is off
    assert mlflow.get_tracking_uri() == mlflow_uri and "MLFLOW_EXPERIMENT_ID" not in os.environ  # as they were

    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    reference = load_model_from_checkpoint(result.run_dir / "checkpoint.pt")
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # not the example's size
    with torch.inference_mode():
        got, expected = loaded(x), reference(x)["out"]
    assert got.shape == (2, 19, 64, 96)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    (images,), (logits,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (images.type, images.shape) == (np.dtype("float32"), (-1, 3, -1, -1))
    assert (logits.type, logits.shape) == (np.dtype("float32"), (-1, 19, -1, -1))
    assert info.metadata["model"] == "mobilenetv2-fcn" and len(info.metadata["mean"]) == 3
    (tmp_path / "dl").mkdir()
    extra = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/extra_files", dst_path=str(tmp_path / "dl"))
    assert yaml.safe_load(Path(extra, "config.yaml").read_text())["tracking"]["experiment"] == "segbench-test"
    assert json.loads(Path(extra, "class_names.json").read_text())[:2] == ["road", "sidewalk"]
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # the signature is enforced on numpy input
    assert pyfunc.predict(x.numpy()).shape == (2, 19, 64, 96)

    client = MlflowClient(mlflow_uri)
    model = client.get_logged_model(logged["model_id"])
    assert model.experiment_id == client.get_run(run_id).info.experiment_id  # beside its run, not in Default
    # The same weights again, from the checkpoint and its config this time: the run's model is kept, not logged twice.
    assert log_trained_model(result.run_dir)["model_id"] == logged["model_id"]
    assert log_trained_model(result.run_dir, None, small_config(tracking={"log_model": False})) is None


def test_export_logs_the_onnx_file_to_the_run(trained, mlflow_uri):
    cfg, result = trained
    assert main(["export", "--run", str(result.run_dir), "--size", "32", "64"]) == 0
    artifacts = MlflowClient(mlflow_uri).list_artifacts(read_run_id(result.run_dir), "onnx")
    assert sorted(a.path for a in artifacts) == ["onnx/model.export.json", "onnx/model.onnx"]  # the file and its record


def _fake_run(results, cfg, model, miou, seed=0):
    """A run folder with metrics.json and an MLflow run, its model logged (random weights): the folder."""
    folder = run_dir(results, cfg.experiment, model, seed)
    RunLogger(folder, experiment=cfg.tracking.experiment, tags={"model": model, "seed": seed,
                                                                  "study": cfg.experiment}).start().end()  # fmt: skip
    write_json(folder / "metrics.json", {"miou": miou, "macc": miou, "allacc": miou})
    torch.manual_seed(seed)
    logged = log_trained_model(folder, build_model(*model.split("-"), num_classes=19, pretrained=None), cfg)
    assert logged["registered_name"] == registered_name(cfg, model) and logged["version"] is not None
    return folder


@pytest.mark.filterwarnings("ignore:summary. .*confusion_per_image.npy not found:RuntimeWarning")
def test_registered_versions_and_the_champion_alias_of_the_summary(tmp_path, mlflow_uri):
    cfg = from_dict(StudyConfig, {"experiment": "duo", "models": ["mobilenetv2-fcn", "mobilenetv2-ppm"],
                                  "tracking": {"experiment": "segbench-test", "register": True}})  # fmt: skip
    results = tmp_path / "results"
    _fake_run(results, cfg, "mobilenetv2-fcn", 0.40)
    best = _fake_run(results, cfg, "mobilenetv2-ppm", 0.55)
    summarize(cfg, results, out=results / "duo" / "summary.csv")
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    out = results / "duo" / "summary" / "publish.json"
    record = publish(cfg, results, tmp_path / "figures", tmp_path / "report.pdf", out)

    name = "segbench-duo"
    assert record["champion"] == {"name": name, "version": "2", "alias": CHAMPION, "model": "mobilenetv2-ppm",
                                  "model_uri": f"models:/{name}@champion", "run_id": read_run_id(best),
                                  "miou": 0.55}  # fmt: skip
    client = MlflowClient(mlflow_uri)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert [(v.tags["model"], v.run_id) for v in versions] == [
        ("mobilenetv2-fcn", read_run_id(results / "duo" / "mobilenetv2-fcn" / "seed0")),
        ("mobilenetv2-ppm", read_run_id(best))]  # fmt: skip
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "2"
    champion = mlflow.pytorch.load_model(f"models:/{name}@champion")
    assert champion.model.head_name == "ppm"


def test_nothing_is_logged_without_a_run_or_a_store(tmp_path, unreachable_mlflow):
    cfg = small_config()
    model = build_model("mobilenetv2", "fcn", num_classes=19, pretrained=None)
    with pytest.warns(RuntimeWarning, match="mlflow_run_id is missing"):
        assert log_trained_model(tmp_path, model, cfg) is None
    (tmp_path / "mlflow_run_id").write_text("0" * 32 + "\n")
    with pytest.warns(RuntimeWarning, match="MLflow model of run 0+ not logged: http://127.0.0.1:9 failed"):
        assert log_trained_model(tmp_path, model, cfg) is None
    with pytest.raises(ValueError, match="3 class names for a model of 19 classes"):
        log_trained_model(tmp_path, model, cfg, ["a", "b", "c"])


def test_registered_name_templates():
    cfg = StudyConfig(experiment="city")
    assert registered_name(cfg, "resnet18-ppm") == "segbench-city"
    cfg.tracking.registered_name = "{experiment}.{model}"
    assert registered_name(cfg, "resnet18-ppm") == "city.resnet18-ppm"
    with pytest.raises(ConfigError, match="'tracking.registered_name' must be letters.*got 'a-{seed}'"):
        from_dict(StudyConfig, {"tracking": {"registered_name": "a-{seed}"}}, where="study.yaml")
