"""Benchmark modes for CPU deployment: the folded model, ONNX Runtime fp32 and INT8, bf16 autocast on the CPU, and
what latency.json records about the CPU."""

from __future__ import annotations

import json

import pytest
import torch

import segmodels.engine.benchmark as bench
from segmodels.cli import main
from segmodels.devices import CPU_FLAGS
from segmodels.engine.benchmark import benchmark_model, parse_mode
from segmodels.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _native_bf16(monkeypatch, native: bool) -> None:
    reason = "test CPU has AVX512-BF16" if native else "this CPU (test CPU) has no AVX512-BF16 or AMX"
    monkeypatch.setattr(bench, "cpu_bf16_support", lambda: (native, reason))


def test_new_mode_names_parse():
    int8 = parse_mode("onnx-int8")
    assert int8.onnx and int8.int8 and not parse_mode("onnx").int8
    folded = parse_mode("amp+fold+channels_last")
    assert (folded.precision, folded.fold, folded.channels_last, folded.onnx) == ("amp", True, True, False)
    assert not parse_mode("fp32").fold
    for bad in ("onnx+fold", "int8", "onnx-int4"):
        with pytest.raises(ValueError, match="onnx-int8"):
            parse_mode(bad)


def test_cpu_modes_record_folding_int8_and_the_cpu(monkeypatch):
    _native_bf16(monkeypatch, True)
    model = build_model("mobilenetv2", "fcn", num_classes=4, pretrained=None)
    result = benchmark_model(model, size=(32, 32), modes=["fp32", "fp32+fold", "amp", "onnx", "onnx-int8"],
                             warmup=0, repeats=2, device="cpu", log=None)  # fmt: skip
    modes = result["modes"]
    assert all(entry["status"] == "ok" for entry in modes.values()), modes
    assert [modes[m]["folded"] for m in ("fp32", "fp32+fold", "amp", "onnx", "onnx-int8")] == [
        False, True, False, True, True]  # fmt: skip
    assert modes["amp"]["amp_dtype"] == "bfloat16" and modes["fp32"]["amp_dtype"] is None
    assert modes["onnx"]["provider"] == modes["onnx-int8"]["provider"] == "CPUExecutionProvider"
    assert "int8" in modes["onnx-int8"]["quantization"] and "quantization" not in modes["onnx"]
    cpu = result["cpu"]
    assert cpu["name"] and cpu["bf16_native"] is True and cpu["bf16_reason"] == "test CPU has AVX512-BF16"
    assert isinstance(cpu["flags"], list) and set(cpu["flags"]) <= set(CPU_FLAGS)
    assert result["fold"]["folded"] > 0 and result["fold"]["batchnorm_left"] == 0
    assert result["primary_mode"] == "fp32"


def test_amp_on_the_cpu_is_bf16_autocast_or_skipped_with_the_reason(monkeypatch):
    model = build_model("mobilenetv2", "fcn", num_classes=4, pretrained=None).eval()
    x = torch.randn(1, 3, 32, 32)
    forward = bench._torch_forward(model, x, parse_mode("amp"), torch.device("cpu"), torch.float16)
    assert forward().dtype == torch.bfloat16  # bf16 on the CPU whatever benchmark.amp_dtype says (fp16 there)
    assert bench._torch_forward(model, x, parse_mode("fp32"), torch.device("cpu"), torch.float16)().dtype == (
        torch.float32)  # fmt: skip

    _native_bf16(monkeypatch, False)
    result = benchmark_model(model, size=(32, 32), modes=["amp", "fp32"], warmup=0, repeats=1, device="cpu",
                             log=None)  # fmt: skip
    amp = result["modes"]["amp"]
    assert amp["status"] == "skipped"
    assert amp["reason"] == ("amp on the CPU is bf16 autocast, and this CPU (test CPU) has no AVX512-BF16 or AMX")
    assert result["cpu"]["bf16_native"] is False


def test_int8_is_not_timed_on_a_gpu():
    reason = bench._skip_reason(parse_mode("onnx-int8"), torch.device("cuda"), "float16")
    assert reason and "CPU" in reason


def test_latency_json_has_the_cpu_and_folding_fields(tmp_path, monkeypatch):
    _native_bf16(monkeypatch, False)
    code = main(["benchmark", "--model", "mobilenetv2-fcn", "--size", "32", "32", "--repeats", "2", "--warmup", "0",
                 "--modes", "fp32", "fp32+fold", "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["cpu"]["name"] and saved["cpu"]["bf16_reason"] and isinstance(saved["cpu"]["flags"], list)
    assert saved["modes"]["fp32"]["folded"] is False and saved["modes"]["fp32+fold"]["folded"] is True
    assert saved["fold"]["batchnorm_left"] == 0 and saved["fold"]["folded"] > 0
