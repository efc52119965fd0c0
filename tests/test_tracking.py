"""MLflow tracking against real stores: a SQLite file, concurrent writers, an unreachable server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from segmodels.cli import main
from segmodels.tracking import (
    HTTP_DEFAULTS,
    OFFLINE_FILE,
    RUN_ID_FILE,
    RunLogger,
    ensure_experiment,
    log_to_run,
    read_run_id,
    sync_offline,
    tracking_uri,
)


def test_tracking_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == "sqlite:///results/mlflow.db"
    assert tracking_uri("http://example:5000") == "http://example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri("http://example:5000") == "sqlite:///elsewhere.db"


def test_experiment_created_once_with_artifacts_beside_the_database(mlflow_uri):
    first = ensure_experiment("study-a", mlflow_uri)
    assert ensure_experiment("study-a", mlflow_uri) == first
    exp = MlflowClient(mlflow_uri).get_experiment(first)
    db_dir = Path(mlflow_uri.removeprefix("sqlite:///")).parent
    assert exp.artifact_location == (db_dir / "mlartifacts" / "study-a").as_uri()


def test_resumed_logger_continues_the_same_run_without_duplicates(tmp_path, mlflow_uri):
    run_dir = tmp_path / "run"
    logger = RunLogger(run_dir, experiment="exp", uri=mlflow_uri, run_name="m-seed0", tags={"model": "m"}).start()
    logger.log_params({"train.lr": 0.01, "train.log_every": 10})
    for step in (1, 2, 3, 4):
        logger.log_metrics({"train/loss": 1.0 / step}, step=step)
    logger.flush()
    run_id = read_run_id(run_dir)
    assert run_id == logger.run_id
    # Killed here: no end(). The next job picks the run up again.
    again = RunLogger(run_dir, experiment="exp", uri=mlflow_uri, run_name="m-seed0").start()
    assert again.run_id == run_id
    with pytest.warns(UserWarning, match="train.log_every"):
        again.log_params({"train.lr": 0.01, "train.log_every": 5, "model.params": 123})
    for step in (3, 4, 5, 6):  # 3 and 4 were logged before the kill
        again.log_metrics({"train/loss": 1.0 / step}, step=step)
    again.end()

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([ensure_experiment("exp", mlflow_uri)])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.01", "train.log_every": "10", "model.params": "123"}
    assert run.data.tags["model"] == "m" and run.info.run_name == "m-seed0"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4, 5, 6]


def test_log_to_run_adds_to_the_training_run_and_warns_without_one(tmp_path, mlflow_uri):
    with pytest.warns(RuntimeWarning, match=RUN_ID_FILE):
        log_to_run(tmp_path / "nothing", metrics={"val_miou": 0.5})
    run_dir = tmp_path / "run"
    RunLogger(run_dir, experiment="exp", uri=mlflow_uri).start().end()
    report = tmp_path / "metrics.json"
    report.write_text("{}")
    log_to_run(run_dir, metrics={"val_miou": 0.625}, params={"evaluate.flip": True}, tags={"evaluated": "yes"},
               artifacts=[report], step=40, uri=mlflow_uri)  # fmt: skip
    client = MlflowClient(mlflow_uri)
    run = client.get_run(read_run_id(run_dir))
    assert run.info.status == "FINISHED"  # a later job does not reopen the run
    assert run.data.metrics["val_miou"] == 0.625
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [40]
    assert run.data.params["evaluate.flip"] == "True" and run.data.tags["evaluated"] == "yes"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["metrics.json"]


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segmodels.tracking import RunLogger
    run_dir, uri, go, steps = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    (run_dir.parent / (run_dir.name + ".ready")).touch()
    while not go.exists():
        time.sleep(0.01)
    logger = RunLogger(run_dir, experiment="concurrent", uri=uri, run_name=run_dir.name, flush_seconds=1e9).start()
    logger.log_params({"job": run_dir.name})
    for step in range(steps):
        logger.log_metrics({"a": step, "b": 2.0 * step, "c": -step}, step=step)
        if step % 5 == 4:
            logger.flush()  # one log_batch per 5 steps, as training does per log interval
    logger.end()
    print("offline" if logger.offline else "online")
    """
)


@pytest.mark.slow
def test_concurrent_jobs_into_a_fresh_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # no file yet: the first job creates it, under the lock
    jobs, steps = 4, 30
    go = tmp_path / "go"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path / f"job{i}"), uri, str(go), str(steps)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(jobs)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"job{i}.ready").exists() for i in range(jobs)):
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.05)
        go.touch()  # all start at once
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "online", err[-2000:]

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("concurrent").experiment_id
    runs = client.search_runs([exp_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(jobs)]
    assert client.search_runs(["0"]) == []  # nothing landed in "Default"
    for run in runs:
        assert run.info.status == "FINISHED"
        for key, factor in (("a", 1.0), ("b", 2.0), ("c", -1.0)):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [(s, factor * s) for s in range(steps)]


def test_a_down_server_is_given_up_on_with_bounded_retries(tmp_path, monkeypatch):
    """MLflow's own defaults retry for about 4 minutes; the job goes offline after the bounded ones instead,
    and a value the user exported is left as it is."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for key in HTTP_DEFAULTS:
        monkeypatch.setenv(key, "unset")  # recorded, so the teardown restores the original environment
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.warns(RuntimeWarning, match="not reachable"):
        logger = RunLogger(tmp_path / "run", experiment="down", run_name="m-seed0").start()
    assert logger.offline
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"


def test_unreachable_server_goes_offline_and_sync_pushes_everything(tmp_path, unreachable_mlflow, _empty_mlflow_db):
    run_dir = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="not reachable") as caught:
        logger = RunLogger(run_dir, experiment="offline-exp", run_name="m-seed1", tags={"seed": 1}).start()
        logger.log_params({"train.lr": 0.02})
        for step in range(1, 6):
            logger.log_metrics({"train/loss": 10.0 - step}, step=step)
        (run_dir / "config.yaml").write_text("train: {}\n")
        logger.log_artifact(run_dir / "config.yaml")
        logger.end("FINISHED")
    assert sum("not reachable" in str(w.message) for w in caught) == 1  # warned once
    assert logger.offline and read_run_id(run_dir) is None and (run_dir / OFFLINE_FILE).is_file()
    with pytest.warns(RuntimeWarning, match="not reachable"):  # a later job, server still down: kept too
        log_to_run(run_dir, metrics={"val_miou": 0.75}, step=5)

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(_empty_mlflow_db.read_bytes())
    uri = f"sqlite:///{db}"
    assert main(["mlflow-sync", str(run_dir), "--uri", uri]) == 0
    assert not (run_dir / OFFLINE_FILE).exists()
    client = MlflowClient(uri)
    run = client.get_run(read_run_id(run_dir))
    assert run.info.run_name == "m-seed1" and run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.02"} and run.data.tags["seed"] == "1"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")) == [
        (s, 10.0 - s) for s in range(1, 6)
    ]
    assert run.data.metrics["val_miou"] == 0.75
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    assert sync_offline(run_dir, uri) == run.info.run_id  # nothing left: a second push adds nothing
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 5


def test_training_survives_an_unreachable_server_and_its_metrics_are_pushed_later(
    tmp_path, packed_data, unreachable_mlflow, _empty_mlflow_db, monkeypatch
):
    from conftest import small_config

    from segmodels.engine.train import train

    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="mlflow-sync` logs it"), pytest.warns(RuntimeWarning, match="not reachable"):
        result = train(small_config(train={"iterations": 4, "log_every": 2}), "mobilenetv2-fcn", out=out,
                       data_dir=packed_data)  # fmt: skip
    assert result.run_id is None and (out / "checkpoint.pt").is_file() and (out / OFFLINE_FILE).is_file()

    # The server is back: the next job that logs into the run (an evaluation) pushes the records first.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "mlflow.db").write_bytes(_empty_mlflow_db.read_bytes())
    log_to_run(out, metrics={"val_miou": 0.5}, step=4, uri=uri)
    assert not (out / OFFLINE_FILE).exists()
    client = MlflowClient(uri)
    run = client.get_run(read_run_id(out))
    assert run.info.status == "FINISHED" and run.info.run_name == "mobilenetv2-fcn-seed0"
    assert run.data.params["train.iterations"] == "4" and run.data.tags["device"] == "cpu"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [2, 4]
    assert run.data.metrics["val_miou"] == 0.5
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "train_log.csv"}

    # mlflow-sync then gives the run the MLflow model that training could not log.
    from segmodels.cli import main

    assert main(["mlflow-sync", str(out), "--uri", uri]) == 0
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 19, 32, 32)
