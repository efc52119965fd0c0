"""The deploy section: each run on the CPU path by path (fp32, bf16, ONNX Runtime, INT8), scored and timed, and
the summary's paired differences from fp32."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import small_config, write_config
from test_evaluate_backends import MAX_INT8_DROP, MIN_AGREEMENT

from segmodels.cli import main
from segmodels.study import deploy
from segmodels.study.config import ConfigError, load_config


def test_columns_paths_and_modes():
    columns = deploy.deploy_columns()
    assert len(columns) == len(set(columns))
    for key in ("fp32", "bf16", "onnx", "int8"):
        assert f"deploy_{key}_ms" in columns and f"deploy_miou_{key}" in columns
    assert "deploy_fp32_diff" not in columns and "deploy_int8_lo" in columns  # differences are from fp32
    assert deploy.scored_paths(["onnx-int8", "bf16"]) == ["fp32", "bf16", "onnx-int8"]  # fp32 always, table order
    assert deploy.path_modes(["onnx"]) == ["fp32", "fp32+fold", "fp32+fold+channels_last", "onnx"]


def test_latency_cells_take_each_paths_fastest_mode():
    ok = lambda ms: {"status": "ok", "median_ms": ms}  # noqa: E731
    latency = {
        "device": {"name": "Some CPU", "threads": 2},
        "modes": {
            "fp32": ok(100.0), "fp32+fold": ok(90.0), "fp32+fold+channels_last": ok(95.0),
            "amp+fold": {"status": "skipped", "reason": "no native bf16"},
            "amp+fold+channels_last": {"status": "skipped", "reason": "no native bf16"},
            "onnx": ok(80.0), "onnx-int8": ok(25.0),
        },
    }  # fmt: skip
    row = deploy.latency_cells(latency, ["bf16", "onnx", "onnx-int8"])
    assert row["deploy_cpu"] == "Some CPU" and row["deploy_eager_ms"] == 100.0
    assert row["deploy_fp32_ms"] == 90.0 and row["deploy_fp32_mode"] == "fp32+fold"
    assert "deploy_bf16_ms" not in row  # skipped: blank, never 0
    assert row["deploy_onnx_ms"] == 80.0 and row["deploy_int8_ms"] == 25.0
    assert row["deploy_fastest"] == "onnx-int8" and row["deploy_speedup"] == pytest.approx(4.0)
    # a path left out of deploy.paths is not read even when timed
    assert "deploy_int8_ms" not in deploy.latency_cells(latency, ["onnx"])


def test_bf16_is_scored_folded_as_it_is_timed(monkeypatch, tmp_path):
    import segmodels.engine.evaluate as evaluate_module
    from segmodels.engine.deploy import score_path

    calls = {}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda cfg, run_dir, **kw: calls.setdefault(kw["log_tag"], kw))
    for path in ("fp32", "bf16", "onnx"):
        score_path(small_config(), tmp_path, path)
    assert all("+fold" in mode for mode in deploy.TIMED_MODES["bf16"])  # what its latency times
    assert calls["deploy_bf16"]["fold"] is True and calls["deploy_bf16"]["amp"] is True
    assert calls["deploy_fp32"]["fold"] is False and calls["deploy_onnx"]["backend"] == "onnx"


def test_bad_deploy_settings_are_named(tmp_path):
    cfg = small_config(models=["mobilenetv2-fcn", "resnet18-fcn"])
    path = write_config(tmp_path / "study.yaml", cfg)
    assert load_config(path).deploy.enabled is False  # off unless asked for
    with pytest.raises(ConfigError, match=r"'deploy.models' names 'resnet50-ppm', which is not a run"):
        load_config(path, {"deploy.enabled": True, "deploy.models": ["resnet50-ppm"]})
    with pytest.raises(ConfigError, match=r"'deploy.paths\[0\]' must be one of fp32, bf16, onnx, onnx-int8"):
        load_config(path, {"deploy.paths": ["int8"]})
    with pytest.raises(ConfigError, match=r"'deploy.calibration' must be at least 1"):
        load_config(path, {"deploy.calibration": 0})
    ok = load_config(path, {"deploy.enabled": True, "deploy.models": ["resnet18-fcn"]})
    assert deploy.deployed_runs(ok, ["mobilenetv2-fcn", "resnet18-fcn"]) == ["resnet18-fcn"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, packed_data, one_thread):
    """A mobilenetv2-fcn trained as test_evaluate_backends trains it (long enough for INT8 to keep its predictions),
    then deployed on every path."""
    import os

    from segmodels.engine.train import train

    folder = tmp_path_factory.mktemp("deploy")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        cfg = small_config(
            train={"iterations": 120, "batch_size": 2, "lr": 0.1, "log_every": 40, "ckpt_every": 120, "warmup_iters": 5},
            evaluate={"samples": [], "amp": False},
            benchmark={"size": [64, 64], "cpu_repeats": 2, "cpu_warmup": 1},
            deploy={"enabled": True, "calibration": 50},
        )  # fmt: skip
        run = folder / "results" / "test" / "mobilenetv2-fcn" / "seed0"
        train(cfg, "mobilenetv2-fcn", out=run, data_dir=packed_data)
        config = write_config(folder / "study.yaml", cfg)
        code = main(["deploy", "--config", str(config), "--run", str(run), "--data", str(packed_data), "--repeats", "2"])
        assert code == 0
        yield cfg, folder, run, config
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_every_path_is_scored_and_timed(deployed, packed_data, capsys):
    from segmodels.engine.evaluate import evaluate

    cfg, _, run, _ = deployed
    scores = {p: json.loads((run / "deploy" / p / "metrics.json").read_text()) for p in deploy.PATHS}
    assert scores["fp32"]["protocol"]["precision"] == "fp32"
    assert scores["bf16"]["protocol"]["precision"] == "amp bfloat16"  # measured on every CPU (emulated or native)
    assert scores["onnx"]["protocol"]["precision"] == "ONNX Runtime fp32"
    int8 = scores["onnx-int8"]
    assert int8["protocol"]["precision"] == "ONNX Runtime int8"
    assert int8["export"]["int8"]["calibration"]["count"] == 4  # deploy.calibration 50, capped at the 4 images
    assert int8["export"]["int8"]["agreement"] >= MIN_AGREEMENT
    for path in deploy.PATHS:
        per_image = np.load(run / "deploy" / path / "confusion_per_image.npy")
        assert per_image.shape[0] == 2 and per_image.sum() == scores[path]["labelled_pixels"]
    # fp32 is the evaluation's own fp32 score: the same code, whole images
    reference = evaluate(cfg, run, data=packed_data, out=run / "eval-check", log_mlflow=False, progress=False)
    assert scores["fp32"]["miou"] == pytest.approx(reference["miou"], abs=1e-9)
    assert reference["miou"] > 0.5
    assert abs(scores["bf16"]["miou"] - reference["miou"]) < 0.05
    assert abs(int8["miou"] - reference["miou"]) <= MAX_INT8_DROP
    # bf16 scores the model its latency times, BatchNorm folded; the ONNX graphs are folded by export
    assert [scores[p]["settings"]["folded"] for p in deploy.PATHS] == [False, True, True, True]
    folded = evaluate(cfg, run, data=packed_data, out=run / "eval-folded", log_mlflow=False, progress=False,
                      amp=True, fold=True, device="cpu")  # fmt: skip
    np.testing.assert_array_equal(np.load(run / "deploy" / "bf16" / "confusion_per_image.npy"),
                                  np.load(run / "eval-folded" / "confusion_per_image.npy"))  # fmt: skip
    assert folded["miou"] == scores["bf16"]["miou"] and folded["settings"]["folded"] is True
    latency = json.loads((run / "deploy" / "latency.json").read_text())
    for mode in deploy.path_modes(deploy.PATHS):
        assert mode in latency["modes"]
    for mode in ("fp32", "fp32+fold", "onnx", "onnx-int8"):
        assert latency["modes"][mode]["status"] == "ok" and latency["modes"][mode]["median_ms"] > 0
    assert latency["cpu"]["name"] and "bf16_native" in latency["cpu"]
    # INT8 keeps 7-bit weights where the CPU has no VNNI; the export record and latency.json say which was used
    vnni = latency["cpu"]["int8_vnni"]
    assert int8["export"]["int8"]["vnni"] is vnni and int8["export"]["int8"]["reduce_range"] is (not vnni)
    assert latency["modes"]["onnx-int8"]["reduce_range"] is (not vnni)
    if not latency["cpu"]["bf16_native"]:  # skipped with the reason, never timed emulated
        assert latency["modes"]["amp+fold"]["status"] == "skipped" and latency["modes"]["amp+fold"]["reason"]
    assert not (run / "latency.json").exists() and not (run / "metrics.json").exists()  # the study's files: theirs


def test_the_run_logs_each_path_to_mlflow(deployed):
    from mlflow import MlflowClient

    _, folder, run, _ = deployed
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    metrics = client.get_run((run / "mlflow_run_id").read_text().strip()).data.metrics
    for key in ("miou_deploy_fp32", "miou_deploy_bf16", "miou_deploy_onnx", "miou_deploy_onnx_int8",
                "deploy_latency_ms_fp32", "deploy_latency_ms_onnx-int8"):  # fmt: skip
        assert key in metrics, key
    assert "latency_ms" not in metrics  # the study's latency column stays the benchmark's


def test_summary_pairs_each_path_with_fp32(deployed, tmp_path):
    from segmodels.study.summary import summarize, summary_columns

    cfg, folder, _, _ = deployed
    table = summarize(cfg, folder / "results", out=tmp_path / "summary.csv")
    assert list(table.columns) == summary_columns(deploy=True)
    row = table.iloc[0]
    assert isinstance(row["deploy_cpu"], str) and row["deploy_eager_ms"] > 0
    assert row["deploy_fastest"] in deploy.PATHS and row["deploy_speedup"] > 0
    for key in ("bf16", "onnx", "int8"):
        diff, lo, hi = (row[f"deploy_{key}_{end}"] for end in ("diff", "lo", "hi"))
        assert math.isfinite(diff) and lo <= diff <= hi
        assert diff == pytest.approx(row[f"deploy_miou_{key}"] - row["deploy_miou_fp32"], abs=1e-6)
    # the ONNX fp32 graph predicts what PyTorch predicts: its difference is next to nothing
    assert abs(row["deploy_onnx_diff"]) < 0.5
    assert abs(row["deploy_int8_diff"]) <= 100 * MAX_INT8_DROP  # the summary's differences are in mIoU points
    plain = summarize(small_config(), folder / "results")
    assert not any(c.startswith("deploy_") for c in plain.columns)  # off: no deployment columns


def test_bad_deploy_input_is_refused_before_work(deployed, tmp_path, capsys):
    _, _, run, config = deployed
    assert main(["deploy", "--config", str(config), "--run", str(run), "--no-scores", "--no-latency"]) == 2
    assert "leave nothing to do" in capsys.readouterr().err
    assert main(["deploy", "--config", str(config), "--run", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["deploy", "--config", str(config), "--run", str(run), "--paths", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_missing_onnxruntime_is_named_before_any_path_is_scored(deployed, monkeypatch, capsys):
    import sys

    _, _, run, config = deployed
    before = (run / "deploy" / "fp32" / "metrics.json").stat().st_mtime_ns
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert main(["deploy", "--config", str(config), "--run", str(run), "--no-latency", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "need onnxruntime" in err and "pip install" in err
    assert (run / "deploy" / "fp32" / "metrics.json").stat().st_mtime_ns == before  # fp32 was not scored again


def test_the_shipped_configs_deploy_what_they_say():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "config"
    demo = load_config(root / "demo.yaml")
    assert not demo.deploy.enabled  # `make run` stays within its time; one line turns it on
    assert deploy.deployed_runs(load_config(root / "demo.yaml", {"deploy.enabled": True}), demo.models) == [
        "resnet18-ppm", "mobilenetv2-ppm"]  # fmt: skip
    for name in ("config.yaml", "deploy.yaml"):
        cfg = load_config(root / name)
        assert cfg.deploy.enabled and deploy.scored_paths(cfg.deploy.paths) == list(deploy.PATHS), name
