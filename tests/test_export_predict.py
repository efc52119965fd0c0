"""ONNX export round trip through onnxruntime, and `segmodels predict` on a user's own images."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import random_checkpoint
from onnx import numpy_helper
from PIL import Image

from segmodels.cli import main
from segmodels.data.labels import colorize
from segmodels.data.loader import normalize
from segmodels.engine.export import ONNX_ATOL, OnnxMismatchError, export_onnx, verify_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return path, random_checkpoint(path, num_classes=19, iteration=3)


def test_onnx_round_trip(tmp_path, checkpoint, capsys):
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    code = main(["export", "--format", "onnx", "--checkpoint", str(path), "--size", "32", "64", "--out", str(out)])
    assert code == 0 and out.is_file()
    assert f"<= tolerance {ONNX_ATOL:g}" in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.inference_mode():
        expected = model(x)["out"].numpy()
    assert got.shape == expected.shape == (1, 19, 32, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def _shift_classifier_bias(path, by=0.5):
    """Alter the graph behind the exporter's back: add ``by`` to the classifier's bias initializer."""
    proto = onnx.load(str(path))
    (bias,) = [t for t in proto.graph.initializer if t.name.endswith("classifier.bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(by), bias.name))
    onnx.save(proto, str(path))


def test_verification_fails_on_an_altered_graph(tmp_path, checkpoint):
    _, model = checkpoint
    out = export_onnx(model, tmp_path / "m.onnx", size=(32, 64))
    good = verify_onnx(model, out, size=(32, 64))
    assert good["max_abs_diff"] <= ONNX_ATOL == good["atol"] and good["argmax_agreement"] == 1.0
    _shift_classifier_bias(out, by=0.5)
    with pytest.raises(OnnxMismatchError, match=r"max \|diff\| 5\.0\d*e-01 > tolerance 0\.001") as info:
        verify_onnx(model, out, size=(32, 64))
    assert info.value.report["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)
    assert verify_onnx(model, out, size=(32, 64), atol=0.6)["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)


def test_export_command_exits_non_zero_on_a_mismatch(tmp_path, checkpoint, capsys, monkeypatch):
    import segmodels.engine.export as export_module

    real_export = export_module.export_onnx

    def export_then_alter(*args, **kwargs):
        written = real_export(*args, **kwargs)
        _shift_classifier_bias(written, by=0.01)
        return written

    monkeypatch.setattr(export_module, "export_onnx", export_then_alter)
    path, _ = checkpoint
    base = ["export", "--checkpoint", str(path), "--size", "32", "64", "--out", str(tmp_path / "m.onnx")]
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "max |diff| 1.0" in err and "> tolerance 0.001" in err, err
    assert main([*base, "--atol", "0.02"]) == 0  # a stated, looser tolerance admits it
    assert "<= tolerance 0.02" in capsys.readouterr().out


def _image(path, size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
    return path


def test_predict_writes_masks_at_the_input_size(tmp_path, checkpoint):
    path, model = checkpoint
    a = _image(tmp_path / "street.png", (53, 37), "RGBA", seed=1)
    b = _image(tmp_path / "grey.jpg", (40, 30), "L", seed=2)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(path), str(a), str(b), "--out", str(out), "--device", "cpu",
                 "--no-amp"]) == 0  # fp32 on every CPU: the masks are compared with the fp32 model's below
    for src, (w, h) in ((a, (53, 37)), (b, (40, 30))):
        mask = np.asarray(Image.open(out / f"{src.stem}_trainid.png"))
        color = np.asarray(Image.open(out / f"{src.stem}_color.png"))
        overlay = np.asarray(Image.open(out / f"{src.stem}_overlay.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and mask.max() < 19
        assert color.shape == overlay.shape == (h, w, 3)
        np.testing.assert_array_equal(color, colorize(mask))
    # The mask is the model's own argmax on the image.
    rgb = np.array(Image.open(a).convert("RGB"))
    with torch.inference_mode():
        expected = model(normalize(torch.from_numpy(rgb)))["out"].argmax(1)[0].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "street_trainid.png")), expected)
    # --size resizes for the forward pass only.
    assert main(["predict", "--checkpoint", str(path), str(a), "--out", str(tmp_path / "o2"), "--size", "32", "64",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert Image.open(tmp_path / "o2" / "street_trainid.png").size == (53, 37)


def test_predict_names_an_unreadable_file_before_any_work(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    good = _image(tmp_path / "good.png", (20, 10))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(path), str(good), str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png" in err and "Traceback" not in err
    assert not out.exists()  # nothing was segmented
    code = main(["predict", "--checkpoint", str(path), str(good), str(tmp_path / "missing.jpg"), "--out", str(out)])
    assert code == 2 and "missing.jpg" in capsys.readouterr().err
    other = tmp_path / "sub"
    other.mkdir()
    twin = _image(other / "good.jpg", (20, 10))
    code = main(["predict", "--checkpoint", str(path), str(good), str(twin), "--out", str(out)])
    assert code == 2 and "same output files" in capsys.readouterr().err
