"""INT8 export through ONNX Runtime: the quantized graph, its agreement with fp32, and the errors on bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from segmodels.cli import main
from segmodels.data.loader import normalize
from segmodels.engine.export import export_onnx, record_path
from segmodels.engine.quantize import agreement, calibration_count, int8_path, quantize_onnx
from segmodels.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (64, 64)
MODEL = "mobilenetv2-fcn"  # the quickest of the study's models to export


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """An exported fp32 graph of a random-weight model, shared read-only by the tests below."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2", "fcn", num_classes=19, pretrained=None)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", size=SIZE)


def _op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_export_command_writes_an_int8_model_beside_the_fp32_one(tmp_path, packed_data, capsys):
    out = tmp_path / "model.onnx"
    code = main(["export", "--model", MODEL, "--size", *map(str, SIZE), "--out", str(out), "--int8",
                 "--calibration", "3", "--data", str(packed_data)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    quantized = tmp_path / "model.int8.onnx"
    assert out.is_file() and quantized.is_file() and int8_path(out) == quantized
    assert "folded model:" in printed and "BatchNorms folded, 0 left" in printed
    assert "INT8 vs fp32 argmax agreement" in printed and "calibrated on 3 images" in printed
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left

    record = json.loads(record_path(out).read_text())
    assert record["folded"] is True and record["fold"]["batchnorm_left"] == 0 and record["fold"]["folded"] > 0
    assert record["verify"]["max_abs_diff"] <= record["verify"]["atol"]
    int8 = record["int8"]
    assert int8["path"] == str(quantized) and int8["calibration"]["count"] == 3
    assert len(set(int8["calibration"]["indices"])) == 3
    assert 0.0 <= int8["agreement"] <= 1.0 and int8["agreement_images"]["count"] == 2
    assert int8["int8_bytes"] < int8["fp32_bytes"] / 2  # int8 weights: a quarter of the size, plus scales

    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    (logits,) = session.run(None, {"images": np.random.default_rng(0).standard_normal((1, 3, *SIZE), np.float32)})
    assert logits.shape == (1, 19, *SIZE) and logits.dtype == np.float32 and np.isfinite(logits).all()

    # Exporting again without --int8 removes the INT8 model of the replaced graph with its record.
    assert main(["export", "--model", MODEL, "--size", *map(str, SIZE), "--out", str(out), "--no-verify"]) == 0
    assert not quantized.exists() and json.loads(record_path(out).read_text())["int8"] is None


def test_the_quantized_graph_holds_int8_weights_and_qdq_pairs(tmp_path, fp32, packed_data):
    out = tmp_path / "q.onnx"
    info = quantize_onnx(fp32, out, calibration_dir=packed_data, count=2, seed=1)
    assert info["path"] == str(out) and info["input"] == {"name": "images", "shape": [1, 3, *SIZE]}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _op_types(out)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer]
    conv_weights = [w for w in weights if w.ndim == 4]
    assert conv_weights and all(w.dtype == np.int8 for w in conv_weights)  # per-channel int8 convolution weights
    assert not any(w.dtype == np.float32 and w.ndim == 4 for w in weights)
    # Calibration sets each activation's range; the input's is the calibration images' as the graph reads them
    # (normalised): ONNX Runtime's MinMax, uint8 with a zero point over [min(x, 0), max(x, 0)].
    graph = onnx.load(str(out)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    (first,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images"]
    x = normalize(torch.from_numpy(np.load(packed_data / "train" / "images.npy")[info["calibration"]["indices"]]))
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert float(initializers[first.input[1]]) == pytest.approx((high - low) / 255, rel=1e-6)
    assert int(initializers[first.input[2]]) == round(-low / ((high - low) / 255))
    # The same seed draws the same calibration images; another seed may not.
    again = quantize_onnx(fp32, tmp_path / "q2.onnx", calibration_dir=packed_data, count=2, seed=1)
    assert again["calibration"]["indices"] == info["calibration"]["indices"]
    # A graph agrees with itself everywhere; with its INT8 version the agreement is a fraction.
    assert agreement(fp32, fp32, packed_data / "val") == 1.0
    value = agreement(fp32, out, packed_data / "val")
    assert isinstance(value, float) and 0.0 <= value <= 1.0
    images = np.load(packed_data / "val" / "images.npy")
    assert agreement(fp32, out, images[:1]) == agreement(fp32, out, packed_data / "val", limit=1)


def test_bad_calibration_counts_name_the_split_and_its_size(tmp_path, fp32, packed_data):
    out = tmp_path / "q.onnx"
    with pytest.raises(ValueError, match=r"calibration count 5 is larger than the 4 images in .*tiny.train"):
        quantize_onnx(fp32, out, calibration_dir=packed_data, count=5)
    for bad in (0, -1, True, None):
        with pytest.raises(ValueError, match="positive number of images"):
            quantize_onnx(fp32, out, calibration_dir=packed_data, count=bad)
    with pytest.raises(ValueError, match="positive number of images"):
        calibration_count(packed_data, 0)
    assert calibration_count(packed_data, None) == 4  # the default, capped at the split's size
    with pytest.raises(FileNotFoundError, match="nowhere.train.images.npy"):
        quantize_onnx(fp32, out, calibration_dir=tmp_path / "nowhere", count=1)
    assert not out.exists()


def test_a_missing_fp32_model_is_named(tmp_path, packed_data):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(FileNotFoundError, match="fp32 ONNX model not found: .*absent.onnx"):
        quantize_onnx(missing, tmp_path / "q.onnx", calibration_dir=packed_data, count=1)
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        agreement(missing, missing, packed_data / "val")


def test_missing_onnxruntime_says_what_to_install(tmp_path, fp32, packed_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r"needs onnxruntime.*pip install"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration_dir=packed_data, count=1)
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    monkeypatch.delattr(ort, "quantization", raising=False)
    with pytest.raises(ImportError, match=r"needs onnxruntime.quantization.*pip install"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration_dir=packed_data, count=1)


def test_a_failed_quantization_leaves_no_file(tmp_path, fp32, packed_data, monkeypatch):
    from onnxruntime import quantization

    def broken(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as fh:
            fh.write(b"half a model")
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(quantization, "quantize_static", broken)
    out = tmp_path / "q.onnx"
    with pytest.raises(RuntimeError, match="calibration failed"):
        quantize_onnx(fp32, out, calibration_dir=packed_data, count=1)
    assert list(tmp_path.iterdir()) == []


def test_export_command_rejects_bad_int8_settings_before_exporting(tmp_path, packed_data, capsys):
    out = tmp_path / "m.onnx"
    base = ["export", "--model", MODEL, "--size", *map(str, SIZE), "--out", str(out)]
    cases = [
        (["--int8", "--data", str(tmp_path / "nowhere")], "nowhere/train holds none: give --data"),
        (["--int8", "--data", str(packed_data), "--calibration", "9"], "calibration count 9 is larger than the 4"),
        (["--int8", "--data", str(packed_data), "--calibration", "0"], "positive number of images"),
        (["--calibration", "3"], "for --int8 only"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    assert not out.exists()
