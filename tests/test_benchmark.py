"""Latency benchmark: mode parsing, the JSON it writes, skipped modes on the CPU, the mIoU/Speed column."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import torch

from segmodels.cli import main
from segmodels.engine.benchmark import benchmark_model, benchmark_run, miou_per_speed, parse_mode, time_fn
from segmodels.engine.checkpoint import save_atomic
from segmodels.models import build_model, count_flops
from segmodels.study.config import StudyConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_mode():
    m = parse_mode("amp+channels_last")
    assert (m.precision, m.channels_last, m.compile, m.cudagraphs) == ("amp", True, False, False)
    assert parse_mode("channels_last").precision == "fp32"
    assert parse_mode("onnx").onnx
    with pytest.raises(ValueError, match="'fp8'"):
        parse_mode("fp8+compile")


def test_miou_per_speed_follows_the_formula():
    # The earlier study's own rows that do follow its formula.
    assert round(miou_per_speed(0.6289, 34), 1) == 18.5
    assert round(miou_per_speed(0.6897, 79), 1) == 8.7
    # Its MobileNetV2 row (59.25 mIoU, 22 ms) printed 25.17; the formula gives 26.9.
    assert round(miou_per_speed(0.5925, 22), 1) == 26.9


def test_time_fn_counts_repeats():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) > 3:  # the timed calls (after 3 warm-up calls) take at least 2 ms each
            time.sleep(0.002)

    times = time_fn(fn, device=torch.device("cpu"), warmup=3, repeats=5)
    assert len(calls) == 8 and len(times) == 5 and all(t >= 2.0 for t in times)


def test_benchmark_fresh_model_json(tmp_path, monkeypatch):
    # A CPU without native bf16: amp is skipped there (with native bf16 it is timed, see test_benchmark_modes).
    monkeypatch.setattr("segmodels.engine.benchmark.cpu_bf16_support", lambda: (False, "no AVX512-BF16 or AMX"))
    out = tmp_path / "bench"
    code = main(
        ["benchmark", "--model", "mobilenetv2-fcn", "--size", "32", "64", "--repeats", "3", "--warmup", "1",
         "--modes", "fp32", "amp", "cudagraphs", "channels_last", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "latency.json").read_text())
    assert data["model"] == "mobilenetv2-fcn" and data["size"] == [32, 64] and data["batch_size"] == 1
    assert data["repeats"] == 3 and data["warmup"] == 1
    fp32 = data["modes"]["fp32"]
    assert fp32["status"] == "ok" and len(fp32["times_ms"]) == 3
    assert fp32["median_ms"] == pytest.approx(statistics.median(fp32["times_ms"]), rel=1e-3)
    assert fp32["min_ms"] <= fp32["median_ms"] <= fp32["p90_ms"] <= fp32["max_ms"]
    assert fp32["fps"] == pytest.approx(1000.0 / fp32["median_ms"])
    assert fp32["memory"] == "cpu_peak_rss_growth"
    assert data["modes"]["channels_last"]["status"] == "ok"
    for skipped in ("amp", "cudagraphs"):
        assert data["modes"][skipped]["status"] == "skipped" and data["modes"][skipped]["reason"]
    assert data["primary_mode"] == "fp32" and data["latency_ms"] == fp32["median_ms"]
    model = build_model("mobilenetv2", "fcn", pretrained=None)
    assert data["gflops"] == pytest.approx(count_flops(model, (32, 64)) / 1e9)
    aux = sum(p.numel() for p in model.aux_head.parameters())
    assert data["params_train_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert data["params_m"] == pytest.approx(data["params_train_m"] - aux / 1e6)
    env = data["device"]
    assert env["type"] == "cpu" and env["torch"] == torch.__version__ and env["name"]


def test_benchmark_run_folder_computes_miou_per_speed(tmp_path):
    run = tmp_path / "results" / "t" / "resnet18-fcn" / "seed0"
    model = build_model("resnet18", "fcn", num_classes=19, pretrained=None)
    cfg = StudyConfig()
    ckpt = {"format": 1, "model": model.state_dict(), "backbone": "resnet18", "head": "fcn", "num_classes": 19,
            "output_stride": 8, "aux": True, "config": {}, "iteration": 11}  # fmt: skip
    save_atomic(ckpt, run / "checkpoint.pt")
    (run / "metrics.json").write_text(json.dumps({"miou": 0.5}))
    cfg.benchmark.size = [32, 32]
    cfg.benchmark.modes = ["fp32"]
    with pytest.warns(RuntimeWarning, match="mlflow_run_id"):  # no training run to log into: warned, not fatal
        result = benchmark_run(cfg, run, repeats=2, warmup=0, device="cpu")
    saved = json.loads((run / "latency.json").read_text())
    assert saved["iteration"] == 11 and saved["model"] == "resnet18-fcn"
    assert saved["miou_per_speed"] == pytest.approx(50.0 / saved["latency_ms"] * 10)
    assert result["latency_ms"] == saved["latency_ms"]
    with pytest.raises(ValueError, match="resnet50"):
        benchmark_run(cfg, run, model_name="resnet50-fcn", repeats=1, warmup=0, device="cpu", log_mlflow=False)


def test_benchmark_rejects_bad_mode_before_work(tmp_path):
    with pytest.raises(ValueError, match="benchmark.modes"):
        benchmark_run(StudyConfig(), None, model_name="resnet18-ppm", out=tmp_path, modes=["fp16"], device="cpu")


def test_fps_is_images_per_second_and_memory_the_peak_rss_growth(tmp_path, monkeypatch):
    import segmodels.engine.benchmark as bench

    model = build_model("mobilenetv2", "fcn", pretrained=None)
    batches = []

    def record(_, args):
        if args[0].device.type == "cpu":  # the FLOP count runs on the meta device and is not a timed pass
            batches.append(args[0].shape[0])

    model.register_forward_pre_hook(record)
    with monkeypatch.context() as patch:
        rss = iter([100.0, 164.5])  # peak RSS before and after the mode's passes, in MiB
        patch.setattr(bench, "_peak_rss_mb", lambda: next(rss))
        result = benchmark_model(model, size=(32, 32), batch_size=2, modes=["fp32"], warmup=1, repeats=3,
                                 device="cpu", log=None)  # fmt: skip
    assert batches == [2] * 4  # one warm-up and three timed passes, each of a batch of 2
    fp32 = result["modes"]["fp32"]
    assert fp32["fps"] == pytest.approx(2 * 1000.0 / fp32["median_ms"]) and result["fps"] == fp32["fps"]
    assert fp32["peak_memory_mb"] == pytest.approx(64.5)

    cfg = StudyConfig()
    cfg.benchmark.batch_size = 2
    benchmark_run(cfg, None, model_name="mobilenetv2-fcn", out=tmp_path, size=[32, 32], modes=["fp32"], repeats=2,
                  warmup=0, device="cpu")  # fmt: skip
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["batch_size"] == 2
    assert saved["fps"] == saved["modes"]["fp32"]["fps"] == pytest.approx(2000.0 / saved["latency_ms"])


def test_the_headline_latency_is_timed_in_the_precision_the_miou_was_measured_in():
    from segmodels.study.runs import primary_mode

    ok, skipped = {"status": "ok", "median_ms": 1.0}, {"status": "skipped", "reason": "no GPU"}
    both = {"modes": {"fp32": ok, "amp": ok, "channels_last": ok}}
    assert primary_mode(both, "amp") == "amp"  # an mIoU evaluated under amp pairs with amp's latency
    assert primary_mode(both, "fp32") == "fp32" and primary_mode(both) == "fp32"
    assert primary_mode({"modes": {"fp32": ok, "amp": skipped}}, "amp") == "fp32"  # not timed: fall back
    assert primary_mode({"modes": {"channels_last": ok}}, "amp") == "channels_last"
    assert primary_mode({"modes": {"amp": skipped}}) is None
