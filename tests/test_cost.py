"""Cost of a job: wall and CPU time, GPU-hours, energy from sampled power, snapshots and resumed segments."""

from __future__ import annotations

import json
import time

import pytest

from segmodels.engine.cost import CostMeter, cost_metrics, integrate_power, read_cost


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_integrate_power_trapezoid():
    assert integrate_power([(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)]) == pytest.approx((150 + 400) / 3600)
    assert integrate_power([(0.0, 300.0)]) == 0.0


def test_cpu_job_records_wall_and_cpu_time(tmp_path):
    with CostMeter("evaluate", device="cpu") as meter:
        _busy(0.25)
        meter.images = 12
    r = meter.result()
    assert r["job"] == "evaluate" and r["device_type"] == "cpu" and r["device"] and r["gpus"] == 0
    assert 0.25 <= r["wall_s"] < 5 and r["wall_hours"] == pytest.approx(r["wall_s"] / 3600)
    assert r["cpu_hours"] * 3600 > 0.1  # the busy loop is CPU time of this process
    assert r["gpu_hours"] is None and r["energy_wh"] is None and r["energy_source"] is None
    assert r["images"] == 12 and r["complete"] and len(r["segments"]) == 1
    with pytest.raises(RuntimeError, match="with-block"):
        CostMeter("x").result()


def test_gpu_job_without_nvml_counts_gpu_hours_only():
    # No pynvml in this environment: the meter must carry on without energy, never fail the job.
    with CostMeter("train", device="cuda:0", gpus=2) as meter:
        time.sleep(0.05)
    r = meter.result()
    assert r["gpu_hours"] == pytest.approx(r["wall_s"] * 2 / 3600) and r["gpus"] == 2
    assert r["energy_wh"] is None


def test_sampled_power_is_integrated():
    with CostMeter("train", device="cuda:0", sample_seconds=0.01, power=lambda: 250.0) as meter:
        time.sleep(0.3)
    r = meter.result()
    assert r["energy_source"] == "given power samples"
    assert r["energy_wh"] == pytest.approx(250.0 * r["wall_s"] / 3600, rel=0.1)
    segment = r["segments"][0]
    assert segment["power_samples"] >= 5 and segment["mean_power_w"] == pytest.approx(250.0)


def test_energy_counter_preferred_and_scaled_by_gpus():
    t0 = time.monotonic()

    def counter() -> float:  # a cumulative counter of a board drawing 100 W
        return 100.0 * (time.monotonic() - t0) / 3600

    with CostMeter("train", device="cuda:0", gpus=4, sample_seconds=0.02, power=lambda: 1.0,
                   energy_counter=counter) as meter:  # fmt: skip
        time.sleep(0.2)
    r = meter.result()
    assert r["energy_source"] == "given energy counter, one GPU × 4"
    assert r["energy_wh"] == pytest.approx(4 * 100.0 * r["wall_s"] / 3600, rel=0.1)  # not the 1 W samples


def test_failing_power_reading_leaves_the_job_alone():
    calls = []

    def flaky() -> float:
        calls.append(1)
        if len(calls) > 2:
            raise OSError("board gone")
        return 80.0

    with (
        pytest.warns(RuntimeWarning, match="power reading failed"),
        CostMeter("train", device="cuda:0", sample_seconds=0.01, power=flaky) as meter,
    ):
        time.sleep(0.1)
    r = meter.result()
    assert r["wall_s"] > 0.09 and len(calls) == 3  # no reading after the failure
    assert r["energy_wh"] is None  # an integral over part of the job would understate it


def test_snapshots_and_resumed_segments(tmp_path):
    path = tmp_path / "cost.json"
    with pytest.raises(KeyboardInterrupt), CostMeter("train", path=path, snapshot_seconds=0.05) as meter:
        time.sleep(0.25)
        snapshot = json.loads(path.read_text())  # written by the background thread while the job runs
        assert snapshot["complete"] is False and snapshot["wall_s"] > 0
        raise KeyboardInterrupt  # a killed job leaves its cost behind
    killed = read_cost(path)
    assert killed["complete"] is False and killed["wall_s"] >= 0.25

    with CostMeter("train", path=path, resume=True) as meter:
        time.sleep(0.05)
        meter.images = 800
    total = read_cost(path)
    assert total == json.loads(json.dumps(meter.result()))
    assert len(total["segments"]) == 2 and total["complete"] and total["images"] == 800
    assert total["wall_s"] == pytest.approx(sum(s["wall_s"] for s in total["segments"]))
    assert total["wall_s"] >= 0.3

    with CostMeter("train", path=path, resume=False):  # a fresh start forgets the earlier segments
        pass
    assert len(read_cost(path)["segments"]) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_and_unreadable_files(tmp_path):
    record = {"wall_hours": 0.5, "cpu_hours": 1.0, "gpu_hours": None, "energy_wh": float("nan"), "images": 10}
    assert cost_metrics(record, "cost/train_") == {
        "cost/train_hours": 0.5, "cost/train_cpu_hours": 1.0, "cost/train_images": 10.0,
    }  # fmt: skip
    assert cost_metrics(None, "x") == {}
    bad = tmp_path / "cost.json"
    bad.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="cost.json: not readable"):
        assert read_cost(bad) is None
    with pytest.raises(ValueError, match="sample_seconds"):
        CostMeter("x", sample_seconds=0)


@pytest.mark.slow  # two real (tiny) training runs with MLflow: about 10 s on 2 cores
def test_training_records_its_cost_and_a_rerun_adds_a_segment(tmp_path, packed_data, mlflow_uri):
    from conftest import small_config
    from mlflow import MlflowClient

    from segmodels.engine.train import train
    from segmodels.tracking import read_run_id

    cfg = small_config(train={"iterations": 2, "log_every": 1, "ckpt_every": 2})
    out = tmp_path / "run"
    train(cfg, "mobilenetv2-fcn", seed=0, out=out, data_dir=packed_data)
    first = read_cost(out / "cost.json")
    assert first["job"] == "train" and first["complete"] and first["device_type"] == "cpu"
    assert first["images"] == 2 * 2 and first["gpu_hours"] is None and len(first["segments"]) == 1
    assert first["wall_s"] > 0 and first["cpu_hours"] > 0
    logged = MlflowClient(mlflow_uri).get_run(read_run_id(out)).data
    assert logged.metrics["cost/train_hours"] == pytest.approx(first["wall_hours"])
    assert logged.metrics["cost/train_images"] == 4 and "cost/train_gpu_hours" not in logged.metrics
    assert logged.tags["cost.train_device"] == first["device"]

    train(cfg, "mobilenetv2-fcn", seed=0, out=out, data_dir=packed_data)  # resumes a finished run: validation only
    second = read_cost(out / "cost.json")
    assert len(second["segments"]) == 2 and second["segments"][0] == first["segments"][0]
    assert second["wall_s"] == pytest.approx(first["wall_s"] + second["segments"][1]["wall_s"])


def test_checkpoint_writes_the_partial_record_at_once(tmp_path):
    path = tmp_path / "cost.json"
    meter = CostMeter("train", path=path, snapshot_seconds=3600)
    meter.checkpoint()  # outside the with-block: nothing to record yet
    assert not path.exists()
    with meter:
        _busy(0.1)
        meter.checkpoint()  # long before the first periodic snapshot
        partial = read_cost(path)
        assert partial["complete"] is False and len(partial["segments"]) == 1
        assert 0.1 <= partial["wall_s"] < 5 and partial["segments"][0]["complete"] is False
    meter.checkpoint()  # after the block: the final record stays
    assert read_cost(path)["complete"] is True and not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_on_a_full_disk_warns_and_the_job_goes_on(tmp_path, monkeypatch):
    import errno

    import segmodels.atomic

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    with (
        CostMeter("train", path=tmp_path / "cost.json", snapshot_seconds=3600) as meter,
        monkeypatch.context() as m,  # undone before the meter's final write
        pytest.warns(RuntimeWarning, match="cost snapshot not written.*No space"),
    ):
        m.setattr(segmodels.atomic, "write_text_atomic", full)
        meter.checkpoint()
    assert read_cost(tmp_path / "cost.json")["complete"] is True


_KILLED_JOB = """
import sys, time
from segmodels.engine.cost import CostMeter
meter = CostMeter("train", path=sys.argv[1], snapshot_seconds=3600).__enter__()
end = time.monotonic() + 0.3
while time.monotonic() < end:
    sum(range(1000))
meter.checkpoint()
print("checkpointed", flush=True)
time.sleep(600)
"""


def test_a_job_killed_after_a_checkpoint_keeps_its_cost(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "cost.json"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "checkpointed\n"
        os.kill(proc.pid, signal.SIGKILL)  # no __exit__, no final write: only the checkpoint remains
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    killed = read_cost(path)
    assert killed["complete"] is False and killed["wall_s"] >= 0.3

    with CostMeter("train", path=path, resume=True) as meter:
        time.sleep(0.05)
    total = meter.result()
    assert [s["complete"] for s in total["segments"]] == [False, True]
    assert total["segments"][0] == killed["segments"][0]
    assert total["wall_s"] == pytest.approx(killed["wall_s"] + total["segments"][1]["wall_s"]) and total["complete"]


@pytest.mark.slow  # a training process SIGKILLed after its first last.pt, then resumed: about 30 s on 2 cores
def test_killed_training_keeps_the_cost_of_its_last_checkpoint(tmp_path, packed_data, mlflow_uri):
    import os
    import signal
    import subprocess
    import sys

    from conftest import small_config, write_config

    from segmodels.engine.train import train

    cfg = small_config(train={"iterations": 12, "crop_size": [48, 48], "log_every": 2, "ckpt_every": 2})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segmodels", "train", "--config", str(write_config(tmp_path / "c.yaml", cfg)),
               "--model", "mobilenetv2-fcn", "--out", str(out), "--data", str(packed_data)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():  # cost.json is written just before last.pt
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no last.pt within 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # long before the meter's first 60 s snapshot
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stderr.close()
    killed = read_cost(out / "cost.json")
    assert killed is not None and killed["complete"] is False and len(killed["segments"]) == 1
    assert killed["wall_s"] > 0

    train(cfg, "mobilenetv2-fcn", seed=0, out=out, data_dir=packed_data)
    total = read_cost(out / "cost.json")
    assert total["complete"] and len(total["segments"]) == 2 and total["segments"][0] == killed["segments"][0]
    assert total["wall_s"] == pytest.approx(killed["wall_s"] + total["segments"][1]["wall_s"])
