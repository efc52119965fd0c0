"""INT8 on CPUs with and without VNNI: which the CPU is, the weights' range the quantizer uses there, and what the
export record and latency.json say about it."""

from __future__ import annotations

import numpy as np
import pytest
from test_cpu_features import COOPER_LAKE, GRAVITON3, HASWELL, SAPPHIRE_RAPIDS, SKYLAKE, _cpuinfo

import segmodels.devices as devices
import segmodels.engine.benchmark as bench
from segmodels.devices import cpu_int8_vnni
from segmodels.engine.quantize import int8_settings, quantize_on_inputs
from segmodels.models import build_model

ALDER_LAKE = _cpuinfo("12th Gen Intel(R) Core(TM) i7-12700", "sse2 avx avx2 fma avx_vnni")  # AVX-VNNI, no AVX-512


def test_vnni_is_read_from_the_cpu_flags():
    ok, reason = cpu_int8_vnni(SKYLAKE)
    assert ok is False and reason == (
        "this CPU (Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz) has no AVX512-VNNI or AVX-VNNI: pairs of u8×s8 products "
        "are summed in 16 bits, which can saturate")  # fmt: skip
    assert cpu_int8_vnni(HASWELL)[0] is False and cpu_int8_vnni(GRAVITON3)[0] is False
    ok, reason = cpu_int8_vnni(COOPER_LAKE)
    assert ok and "avx512_vnni" in reason and "8353H" in reason
    assert cpu_int8_vnni(SAPPHIRE_RAPIDS)[0] and "avx_vnni" in cpu_int8_vnni(ALDER_LAKE)[1]


def test_without_vnni_the_weights_keep_seven_bits():
    assert int8_settings(SKYLAKE) == {
        "activations": "uint8, per tensor", "weights": "int8 in a 7-bit range (reduce_range), per channel",
        "reduce_range": True, "vnni": False, "vnni_reason": cpu_int8_vnni(SKYLAKE)[1]}  # fmt: skip
    settings = int8_settings(COOPER_LAKE)
    assert settings["reduce_range"] is False and settings["vnni"] is True and settings["weights"] == "int8, per channel"


def _conv_graph(path) -> None:
    """One 3×3 convolution, 3 → 4 channels, on a 1×3×8×8 input, then ReLU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def _int8_weights(path) -> np.ndarray:
    import onnx
    from onnx import TensorProto, numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.data_type == TensorProto.INT8]
    return next(a for a in arrays if a.ndim == 4)


@pytest.mark.parametrize("vnni", [True, False])
def test_the_quantizer_follows_the_cpu_and_says_so(vnni, tmp_path, monkeypatch):
    """Per-channel weights span the whole int8 range (±127) where the CPU has VNNI; without it ±64 (7 bits), so a
    pair of u8×s8 products, 2 × 255 × 64 = 32,640, fits the 16-bit sum of vpmaddubsw (2 × 255 × 127 would not)."""
    pytest.importorskip("onnxruntime.quantization")
    monkeypatch.setattr(devices, "cpu_int8_vnni", lambda cpuinfo=None: (vnni, "test CPU"))
    _conv_graph(tmp_path / "m.onnx")
    inputs = [np.random.default_rng(i).normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for i in range(3)]
    record = quantize_on_inputs(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", inputs)
    assert record["reduce_range"] is (not vnni) and record["vnni"] is vnni and record["vnni_reason"] == "test CPU"
    weights = _int8_weights(tmp_path / "m.int8.onnx")
    assert np.abs(weights.astype(int)).max() == (127 if vnni else 64)
    forced = quantize_on_inputs(tmp_path / "m.onnx", tmp_path / "f.int8.onnx", inputs, reduce_range=vnni)
    assert forced["reduce_range"] is vnni and forced["weights"].startswith("int8 in a 7-bit" if vnni else "int8, per")
    assert np.abs(_int8_weights(tmp_path / "f.int8.onnx").astype(int)).max() == (64 if vnni else 127)


@pytest.mark.usefixtures("one_thread")
def test_latency_json_records_vnni_and_the_quantization(monkeypatch):
    pytest.importorskip("onnxruntime.quantization")
    monkeypatch.setattr(devices, "cpu_int8_vnni", lambda cpuinfo=None: (False, "test CPU has no VNNI"))
    monkeypatch.setattr(bench, "cpu_int8_vnni", lambda cpuinfo=None: (False, "test CPU has no VNNI"))
    model = build_model("mobilenetv2", "fcn", num_classes=4, pretrained=None)
    result = bench.benchmark_model(model, size=(32, 32), modes=["onnx-int8"], warmup=0, repeats=1, device="cpu",
                                   log=None)  # fmt: skip
    entry = result["modes"]["onnx-int8"]
    assert entry["status"] == "ok" and entry["reduce_range"] is True and "7-bit" in entry["quantization"]
    assert result["cpu"]["int8_vnni"] is False and result["cpu"]["int8_vnni_reason"] == "test CPU has no VNNI"
