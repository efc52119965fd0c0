"""The summary table: means over seeds, the mIoU/speed column computed, missing models listed as missing."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest

from segmodels.cli import main
from segmodels.study.config import StudyConfig
from segmodels.study.summary import run_dir, summarize


def _write_run(results, cfg, model, seed, miou, latency_ms, run_id, batch=2):
    folder = run_dir(results, cfg, model, seed)
    folder.mkdir(parents=True)
    protocol = {"label": "64×128 raw labels, fp32, whole image, no TTA"}
    (folder / "metrics.json").write_text(json.dumps({"miou": miou, "macc": miou + 0.1, "allacc": 0.9,
                                                     "protocol": protocol, "packed": {"miou": miou - 0.01}}))
    ok = {"status": "ok", "p90_ms": latency_ms * 1.1, "fps": batch * 1000 / latency_ms}
    modes = {"fp32": {**ok, "median_ms": latency_ms}, "amp": {**ok, "median_ms": latency_ms / 2}}
    modes["compile"] = {"status": "skipped", "reason": "not asked"}
    latency = {"modes": modes, "primary_mode": "fp32", "batch_size": batch, "params_m": 12.5, "gflops": 50.0,
               "device": {"name": "cpu"}}
    (folder / "latency.json").write_text(json.dumps(latency))
    (folder / "mlflow_run_id").write_text(run_id + "\n")


def test_seeds_are_averaged_and_speed_column_follows_its_formula(tmp_path):
    cfg = StudyConfig(experiment="x", models=["resnet18-ppm", "resnet50-ppm", "mobilenetv2-ppm"], seeds=[0, 1])
    _write_run(tmp_path, cfg, "resnet18-ppm", 0, 0.6289, 34.0, "a")
    _write_run(tmp_path, cfg, "resnet18-ppm", 1, 0.6489, 36.0, "b")
    _write_run(tmp_path, cfg, "resnet50-ppm", 0, 0.6897, 79.0, "c")
    out = tmp_path / "x" / "summary.csv"
    with pytest.warns(RuntimeWarning, match="no interval"):  # evaluated without per-image matrices
        table = summarize(cfg, tmp_path, out).set_index("model")

    r18 = table.loc["resnet18-ppm"]
    assert r18["status"] == "complete" and r18["seeds"] == 2
    assert math.isclose(r18["miou"], 63.89, abs_tol=1e-9)
    assert math.isclose(r18["miou_std"], 1.4142135, abs_tol=1e-6)  # stdev of 62.89 and 64.89
    assert r18["latency_ms"] == 35.0 and r18["latency_mode"] == "fp32"  # the benchmark's choice, not amp's 17.5
    assert math.isclose(r18["fps"], (2000 / 34 + 2000 / 36) / 2)  # images per second: a batch of 2 per latency
    assert math.isclose(r18["miou_packed"], 62.89)  # the packed-size scores, averaged over seeds as the mIoU
    assert r18["miou_protocol"] == "64×128 raw labels, fp32, whole image, no TTA"
    assert math.isclose(r18["miou_per_speed"], 63.89 / 35.0 * 10)
    assert r18["mlflow_run_ids"] == "a b"

    r50 = table.loc["resnet50-ppm"]
    assert r50["status"] == "partial" and r50["seeds"] == 1
    assert all(math.isnan(r50[f"{k}_std"]) for k in ("miou", "macc", "allacc"))  # one seed: undefined, not 0
    assert round(r50["miou_per_speed"], 1) == 8.7  # the earlier study's 68.97 / 79 × 10
    assert table.loc["mobilenetv2-ppm", "status"] == "missing"
    assert math.isnan(table.loc["mobilenetv2-ppm", "miou"])

    written = pd.read_csv(out)
    assert list(written["model"]) == cfg.models
    header, _, r50_line = list(csv.reader(out.read_text().splitlines()))[:3]
    cells = dict(zip(header, r50_line, strict=True))
    assert cells["model"] == "resnet50-ppm" and cells["miou_std"] == cells["macc_std"] == "" != cells["miou"]


def test_summarize_command(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("experiment: y\nmodels: [resnet18-fcn]\n")
    cfg = StudyConfig(experiment="y", models=["resnet18-fcn"])
    _write_run(tmp_path / "results", cfg, "resnet18-fcn", 0, 0.5, 10.0, "r")
    with pytest.warns(RuntimeWarning, match="no interval"):
        assert main(["summarize", "--config", str(config), "--results", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "y" / "summary.csv").is_file()
    assert "resnet18-fcn" in capsys.readouterr().out


def test_intervals_and_cost_columns(tmp_path):
    from segmodels.metrics import compute_metrics

    cfg = StudyConfig(experiment="z", models=["resnet18-ppm", "mobilenetv2-ppm"], seeds=[0, 1])
    rng = np.random.default_rng(0)
    for model in cfg.models:
        for seed in cfg.seeds:
            _write_run(tmp_path, cfg, model, seed, 0.5, 20.0, f"{model}{seed}")
            folder = run_dir(tmp_path, cfg, model, seed)
            per_image = rng.integers(0, 50, size=(10, 19, 19)) + np.eye(19, dtype=int) * 400
            np.save(folder / "confusion_per_image.npy", per_image.astype(np.int32))
            m = compute_metrics(per_image.sum(0))
            metrics = {"miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"],
                       "cost": {"wall_hours": 0.01 * (seed + 1)}}  # fmt: skip
            (folder / "metrics.json").write_text(json.dumps(metrics))
            if model == "resnet18-ppm":  # trained on a GPU; the other model on the CPU, with no GPU-hours
                cost = {"wall_hours": 2.0 + seed, "gpu_hours": 2.0 + seed, "cpu_hours": 2.5, "images": 3200,
                        "energy_wh": 500.0, "device": "Fake GPU"}  # fmt: skip
            else:
                cost = {"wall_hours": 4.0, "gpu_hours": None, "cpu_hours": 7.0, "images": 3200, "energy_wh": None,
                        "device": "Some CPU"}  # fmt: skip
            (folder / "cost.json").write_text(json.dumps(cost))
    out = tmp_path / "z" / "summary.csv"
    table = summarize(cfg, tmp_path, out).set_index("model")
    r18 = table.loc["resnet18-ppm"]
    assert r18["miou_lo"] < r18["miou"] < r18["miou_hi"] and r18["macc_lo"] < r18["macc_hi"]
    assert r18["allacc_lo"] <= r18["allacc"] <= r18["allacc_hi"] and r18["miou_boot_std"] > 0
    assert r18["train_hours"] == 2.5 and r18["train_gpu_hours"] == 2.5 and r18["energy_wh"] == 500.0
    assert r18["train_device"] == "Fake GPU" and r18["train_images"] == 3200
    assert r18["eval_hours"] == pytest.approx(0.015)
    mv2 = table.loc["mobilenetv2-ppm"]
    assert mv2["train_cpu_hours"] == 7.0 and pd.isna(mv2["train_gpu_hours"]) and pd.isna(mv2["energy_wh"])
    written = pd.read_csv(out).set_index("model")
    assert written.loc["resnet18-ppm", "miou_lo"] == pytest.approx(r18["miou_lo"], abs=1e-4)
