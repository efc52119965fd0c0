"""``evaluate --backend onnx|onnx-int8``: the exported and the quantized graph scored by the same metrics code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import small_config

from segmodels.cli import main
from segmodels.engine.evaluate import evaluate
from segmodels.engine.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # set before the training fixture: on a busy CPU, 4× faster

# What INT8 must keep of the fp32 model. Measured on the fixture below (one thread): agreement 0.985 and INT8 mIoU
# 1.6 points above fp32; calibrated on images 1000 times too bright, 0.85 and 16.7 points below.
MIN_AGREEMENT = 0.95
MAX_INT8_DROP = 0.03  # mIoU, either way


@pytest.fixture(scope="module")
def trained(tmp_path_factory, packed_data):
    """A mobilenetv2-fcn trained until its INT8 version predicts what it predicts (120 iterations: at 60, INT8 lost
    4 points of mIoU to a model still unsure of its class boundaries), and its fp32 PyTorch scores in eval-torch/."""
    import os

    folder = tmp_path_factory.mktemp("backends")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        cfg = small_config(train={"iterations": 120, "batch_size": 2, "lr": 0.1, "log_every": 40, "ckpt_every": 120,
                                  "warmup_iters": 5}, evaluate={"samples": [], "amp": False})  # fmt: skip
        run = folder / "results" / "test" / "mobilenetv2-fcn" / "seed0"
        train(cfg, "mobilenetv2-fcn", out=run, data_dir=packed_data)
        fp32 = evaluate(cfg, run, data=packed_data, out=run / "eval-torch", log_mlflow=False, progress=False)
        yield cfg, run, fp32
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_onnx_scores_what_torch_scores_and_int8_is_measured(trained, packed_data):
    cfg, run, torch_metrics = trained
    onnx = evaluate(cfg, run, data=packed_data, backend="onnx", log_mlflow=False, progress=False)
    int8 = evaluate(cfg, run, data=packed_data, backend="onnx-int8", calibration=4, log_mlflow=False,
                    progress=False)  # fmt: skip
    assert torch_metrics["miou"] > 0.5  # a model worth quantizing
    # The folded fp32 graph predicts what PyTorch predicts, up to a few pixels on class boundaries.
    a, b = (np.load(run / folder / "confusion.npy") for folder in ("eval-torch", "eval-onnx"))
    assert a.sum() == b.sum() and np.abs(a - b).sum() <= 0.001 * a.sum()
    assert onnx["miou"] == pytest.approx(torch_metrics["miou"], abs=0.005)
    assert onnx["backend"] == "onnx" and onnx["protocol"]["precision"] == "ONNX Runtime fp32"
    saved = json.loads((run / "eval-onnx-int8" / "metrics.json").read_text())
    assert saved["backend"] == "onnx-int8" and saved["protocol"]["precision"] == "ONNX Runtime int8"
    assert saved["export"]["int8"]["calibration"]["count"] == 4
    assert saved["export"]["int8"]["agreement"] >= MIN_AGREEMENT  # argmax of INT8 vs fp32, pixel by pixel
    assert (run / "eval-onnx-int8" / "onnx" / "model.int8.onnx").is_file()
    assert abs(int8["miou"] - torch_metrics["miou"]) <= MAX_INT8_DROP
    assert not (run / "metrics.json").exists()  # the run's own scores are left to its own evaluation


@pytest.mark.parametrize("native", [True, False])
def test_amp_on_the_cpu_is_bf16_where_the_cpu_has_it(trained, packed_data, monkeypatch, native):
    import dataclasses

    from segmodels import devices

    cfg, run, _ = trained
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda cpuinfo=None: (native, "as the test says"))
    cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, amp=True))
    fp32 = np.load(run / "eval-torch" / "confusion.npy")  # the fixture's own fp32 evaluation
    metrics = evaluate(cfg, run, data=packed_data, out=run / f"eval-amp-{native}", log_mlflow=False, progress=False)
    assert metrics["settings"]["amp"] is native
    assert metrics["protocol"]["precision"] == ("amp bfloat16" if native else "fp32")
    if native:  # bf16 moves a few boundary pixels, not the scores
        matrix = np.load(run / f"eval-amp-{native}" / "confusion.npy")
        assert np.abs(matrix - fp32).sum() <= 0.02 * fp32.sum()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "onnx", "--scales", "0.5", "1.0"], "drop --scales/--sliding"),
        (["--backend", "onnx", "--calibration", "4"], "calibration count is for the onnx-int8 backend only"),
        (["--backend", "onnx-int8", "--calibration", "999"], "999"),
    ],
)
def test_bad_backend_input_is_refused_with_a_message(trained, packed_data, tmp_path, capsys, args, message):
    cfg, run, _ = trained
    from conftest import write_config

    config = write_config(tmp_path / "study.yaml", cfg)
    code = main(["evaluate", "--config", str(config), "--run", str(run), "--data", str(packed_data),
                 "--no-mlflow", "--out", str(tmp_path / "out"), *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "out" / "metrics.json").exists()
