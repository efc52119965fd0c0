"""A training SIGKILLed after it wrote last.pt, run again with the same command, ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import small_config, write_config
from mlflow import MlflowClient

from segmodels.tracking import read_run_id


def _rows(path):
    with path.open() as fh:
        timing = ("images_per_s", "data_wait_ms", "elapsed_s")  # the clock's, not the run's
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, packed_data, mlflow_uri):
    # Random scale, crop and flip, dropout in the head: the resumed run must restore every generator. Two
    # micro-batches per step (train.accumulate): checkpoints fall on step boundaries.
    cfg = small_config(train={"iterations": 12, "batch_size": 2, "accumulate": 2, "crop_size": [48, 48],
                              "scale_range": [0.75, 1.5], "log_every": 2, "ckpt_every": 4, "deterministic": True,
                              "warmup_iters": 3})  # fmt: skip
    config = write_config(tmp_path / "c.yaml", cfg)

    def command(out):
        return [sys.executable, "-m", "segmodels", "train", "--config", str(config), "--model", "mobilenetv2-fcn",
                "--seed", "3", "--out", str(out), "--data", str(packed_data)]  # fmt: skip

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no last.pt within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / "last.pt", weights_only=True)["iteration"]
    assert 4 <= killed_at < 12 and not (out / "checkpoint.pt").exists()
    run_id = read_run_id(out)
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "RUNNING"  # as a SIGKILL leaves it

    # The same command again, and an uninterrupted run beside it (also a fresh process: same conditions).
    for folder in (out, tmp_path / "reference"):
        done = subprocess.run(command(folder), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    final = torch.load(out / "checkpoint.pt", weights_only=True)
    assert final["iteration"] == 12
    expected = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)["model"]
    assert final["model"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(final["model"][key], value), key
    assert _rows(out / "train_log.csv") == _rows(tmp_path / "reference" / "train_log.csv")

    client = MlflowClient(mlflow_uri)
    assert read_run_id(out) == run_id  # the same MLflow run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    named = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_name == run.info.run_name]
    assert len(named) == 2  # this one and the reference run; no duplicate of the resumed one
    for key in ("train/loss", "train/lr"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(2, 13, 2)), key  # every logged iteration exactly once
