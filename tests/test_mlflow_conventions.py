"""What a model's MLflow run holds for the UI: short score keys, grouping tags, its data, system metrics."""

from __future__ import annotations

import math

import pytest
from conftest import small_config
from mlflow import MlflowClient

from segmodels.data.pack import data_identity
from segmodels.engine.evaluate import logged_scores
from segmodels.engine.run import PLAIN_VARIANT, run_tags
from segmodels.study.runs import RunFolder
from segmodels.tracking import OFFLINE_FILE, RunLogger, packed_inputs, read_run_id, sync_offline


def _inputs(client: MlflowClient, run_id: str) -> list[tuple[str, str, str]]:
    """(name, digest, context) of each dataset input of a run, sorted."""
    inputs = client.get_run(run_id).inputs.dataset_inputs
    return sorted((i.dataset.name, i.dataset.digest, *(t.value for t in i.tags if t.key == "mlflow.data.context"))
                  for i in inputs)  # fmt: skip


def test_a_trained_evaluated_and_benchmarked_run_reads_well_in_the_ui(tmp_path, packed_data, mlflow_uri, one_thread,
                                                                    monkeypatch):  # fmt: skip
    from segmodels.engine.benchmark import benchmark_run
    from segmodels.engine.evaluate import evaluate
    from segmodels.engine.train import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = small_config(train={"iterations": 4, "log_every": 2, "ckpt_every": 2},
                       evaluate={"samples": [0]}, benchmark={"size": [64, 64], "modes": ["fp32"]})  # fmt: skip
    folder = RunFolder(tmp_path / "results" / "test" / "mobilenetv2-fcn" / "seed0")
    train(cfg, "mobilenetv2-fcn", out=folder.path, data_dir=packed_data)
    scores = evaluate(cfg, folder.path, data=packed_data, progress=False)
    latency = benchmark_run(cfg, folder.path, repeats=2, warmup=0, device="cpu")

    client = MlflowClient(mlflow_uri)
    run_id = read_run_id(folder.path)
    run = client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    # The columns a user sorts by, under short keys; scores in percent as in the summary and the report.
    assert {"miou", "macc", "allacc", "latency_ms", "fps", "params_m", "gflops"} <= set(metrics)
    for key in ("miou", "macc", "allacc"):
        assert metrics[key] == pytest.approx(scores[key] * 100) and 0 <= metrics[key] <= 100, key
    assert metrics["latency_ms"] == pytest.approx(latency["latency_ms"])
    assert metrics["params_m"] == pytest.approx(latency["params_m"]) and metrics["gflops"] > 0
    assert not any(k.startswith("val_") for k in metrics)  # the old final-score keys are gone
    assert "train/val_miou" in metrics  # the curve stays, step-wise, beside the final score
    # Tags to group by.
    assert (tags["backbone"], tags["head"], tags["variant"]) == ("mobilenetv2", "fcn", PLAIN_VARIANT)
    assert tags["model"] == "mobilenetv2-fcn" and tags["seed"] == "0"
    # The data the model saw: both splits, named, with the packed data's digest and their contexts.
    digest = data_identity(packed_data)
    expected = [("tiny-train", digest, "training"), ("tiny-val", digest, "validation")]
    assert _inputs(client, run_id) == expected
    profiles = {i.dataset.name: i.dataset.profile for i in run.inputs.dataset_inputs}
    assert '"features_shape": [4, 64, 64, 3]' in profiles["tiny-train"]
    assert '"features_shape": [2, 64, 64, 3]' in profiles["tiny-val"]
    assert str(packed_data / "train") in next(i.dataset.source for i in run.inputs.dataset_inputs
                                              if i.dataset.name == "tiny-train")  # fmt: skip
    # MLflow's own system metrics, sampled while the training ran.
    system = sorted(k for k in metrics if k.startswith("system/"))
    if run.info.end_time - run.info.start_time >= 1000:  # five sampling intervals
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(system), system
    steps = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]

    # Starting the finished run again resumes it: no second copy of its datasets, system metrics go on.
    train(cfg, "mobilenetv2-fcn", out=folder.path, data_dir=packed_data)
    assert read_run_id(folder.path) == run_id
    assert _inputs(client, run_id) == expected
    later = [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert later[: len(steps)] == steps and len(set(later)) == len(later)  # no step logged twice
    assert client.get_run(run_id).info.status == "FINISHED"


def test_dataset_inputs_kept_offline_are_pushed_once(tmp_path, packed_data, unreachable_mlflow, _empty_mlflow_db):
    run_dir = tmp_path / "run"
    inputs = packed_inputs(packed_data)
    with pytest.warns(RuntimeWarning, match="not reachable"):
        logger = RunLogger(run_dir, experiment="offline-exp", run_name="m-seed0").start()
        logger.log_inputs(inputs)
        logger.monitor_system()  # offline: nothing to sample into
        logger.end()
    assert logger.offline and (run_dir / OFFLINE_FILE).is_file()

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(_empty_mlflow_db.read_bytes())
    uri = f"sqlite:///{db}"
    run_id = sync_offline(run_dir, uri)
    digest = data_identity(packed_data)
    client = MlflowClient(uri)
    assert _inputs(client, run_id) == [("tiny-train", digest, "training"), ("tiny-val", digest, "validation")]
    again = RunLogger(run_dir, experiment="offline-exp", uri=uri).start()  # a resumed job logs them again
    again.log_inputs(inputs)
    again.end()
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 2


def test_packed_data_without_a_manifest_records_no_dataset(tmp_path):
    import numpy as np

    (tmp_path / "train").mkdir()
    np.save(tmp_path / "train" / "images.npy", np.zeros((1, 4, 4, 3), np.uint8))
    np.save(tmp_path / "train" / "labels.npy", np.zeros((1, 4, 4), np.uint8))
    with pytest.warns(RuntimeWarning, match="no manifest.json"):
        assert packed_inputs(tmp_path) == []


def test_score_keys_and_variant_tags():
    metrics = {"miou": 0.5, "macc": math.nan, "allacc": 0.75}
    assert logged_scores(metrics) == {"miou": 50.0, "allacc": 75.0}  # undefined scores are left out
    assert logged_scores(metrics, "flip", {"miou": 0.25}) == {"miou_flip": 50.0, "allacc_flip": 75.0,
                                                             "miou_flip_packed": 25.0}  # fmt: skip
    assert logged_scores(metrics, "", {"miou": 0.25})["miou_packed"] == 25.0
    tags = run_tags("mobilenetv2-fcn_os16_crop32x64", 1, "study")
    assert (tags["backbone"], tags["head"], tags["variant"], tags["seed"]) == ("mobilenetv2", "fcn", "os16_crop32x64",
                                                                               "1")  # fmt: skip
    assert run_tags("mobilenetv2-fcn", 0, "study")["variant"] == PLAIN_VARIANT
