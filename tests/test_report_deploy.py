"""The report's CPU deployment table: cells from summary.csv's deployment columns, and its section in the PDF."""

from __future__ import annotations

import re

import pandas as pd
from pypdf import PdfReader
from test_figures import fabricate_results

from segmodels.report.deployment import DEPLOY_TITLE, deployment_table
from segmodels.report.results import Study
from segmodels.report.typeset import write_report
from segmodels.study.config import StudyConfig
from segmodels.study.deploy import deploy_columns

DEPLOYED = {
    "resnet18-ppm": {
        "deploy_cpu": "Fake Xeon 8000", "deploy_threads": 4, "deploy_eager_ms": 120.0, "deploy_fp32_ms": 80.04,
        "deploy_onnx_ms": 60.0, "deploy_int8_ms": 30.0, "deploy_fp32_mode": "fp32+fold+channels_last",
        "deploy_fastest": "onnx-int8", "deploy_speedup": 4.0, "deploy_miou_fp32": 62.5, "deploy_miou_bf16": 62.45,
        "deploy_miou_onnx": 62.5, "deploy_miou_int8": 61.9, "deploy_bf16_diff": -0.05, "deploy_bf16_lo": -0.2,
        "deploy_bf16_hi": 0.1, "deploy_onnx_diff": 0.0, "deploy_onnx_lo": -0.01, "deploy_onnx_hi": 0.01,
        "deploy_int8_diff": -0.6, "deploy_int8_lo": -0.9, "deploy_int8_hi": -0.3,
    },
    "mobilenetv2-ppm": {
        "deploy_cpu": "Fake Xeon 8000", "deploy_threads": 4, "deploy_eager_ms": 40.0, "deploy_fp32_ms": 25.0,
        "deploy_onnx_ms": 20.0, "deploy_int8_ms": 21.0, "deploy_fp32_mode": "fp32+fold+channels_last",
        "deploy_fastest": "onnx", "deploy_speedup": 2.0, "deploy_miou_fp32": 55.25, "deploy_miou_bf16": 55.3,
        "deploy_miou_onnx": 55.25, "deploy_miou_int8": 54.0, "deploy_bf16_diff": 0.05, "deploy_bf16_lo": -0.1,
        "deploy_bf16_hi": 0.2, "deploy_onnx_diff": 0.0, "deploy_onnx_lo": 0.0, "deploy_onnx_hi": 0.0,
        "deploy_int8_diff": -1.25, "deploy_int8_lo": -1.5, "deploy_int8_hi": -1.0,
    },
}  # fmt: skip


def _study(tmp_path, deploy: dict[str, dict], models: list[str], columns: bool = True) -> Study:
    """A Study whose summary holds ``models``, the deployment columns (when ``columns``) filled from ``deploy``."""
    summary = pd.DataFrame({"status": "complete", "seeds": 1, "miou": 60.0, "latency_ms": 30.0}, index=models)
    if columns:
        deployed = pd.DataFrame.from_dict(deploy, orient="index").reindex(index=models, columns=deploy_columns())
        summary = summary.join(deployed)
    cfg = StudyConfig(experiment="dep", models=models)
    return Study(cfg=cfg, root=tmp_path, summary=summary)


def _cells(table: dict) -> dict[str, dict[str, dict]]:
    """Model → header under its group (``Latency (ms) fp32``, ``mIoU (%) Δ INT8``) → cell, spaces plain."""
    groups = [g for g, n in table["groups"] for _ in range(n)]
    header = [f"{g} {h}".strip() for g, h in zip(groups, table["header"], strict=True)]
    return {row[0]["t"]: {h: {**c, "t": c["t"].replace("\u00a0", " ")} for h, c in zip(header, row, strict=True)}
            for row in table["rows"]}  # fmt: skip


def test_cells_of_a_deployed_model_and_columns_without_values_left_out(tmp_path):
    study = _study(tmp_path, {"resnet18-ppm": DEPLOYED["resnet18-ppm"]}, ["resnet18-ppm", "resnet50-ppm"])
    table = deployment_table(study)
    assert table["title"] == DEPLOY_TITLE == "Deployment on the CPU"
    # No bf16 latency (no native bf16 on this CPU): its column is left out, its difference from fp32 is kept.
    assert table["header"] == ["Model", "fp32", "ONNX", "INT8", "Fastest", "fp32", "Δ bf16", "Δ ONNX", "Δ INT8"]
    assert table["groups"] == [["", 1], ["Latency (ms)", 3], ["", 1], ["mIoU (%)", 4]]
    assert table["align"] == "lrrrlrrrr"
    cells = _cells(table)
    assert list(cells) == ["ResNet18-PPM"]  # the model not deployed has no row
    row = {h: c["t"] for h, c in cells["ResNet18-PPM"].items()}
    assert row == {"Model": "ResNet18-PPM", "Latency (ms) fp32": "80.0", "Latency (ms) ONNX": "60.0",
                   "Latency (ms) INT8": "30.0", "Fastest": "INT8, 4.0×", "mIoU (%) fp32": "62.50",
                   "mIoU (%) Δ bf16": "-0.05 (-0.20 to +0.10)", "mIoU (%) Δ ONNX": "+0.00 (-0.01 to +0.01)",
                   "mIoU (%) Δ INT8": "-0.60 (-0.90 to -0.30)"}  # fmt: skip
    bold = [h for h, c in cells["ResNet18-PPM"].items() if c["b"]]
    assert bold == ["Latency (ms) INT8"]  # the row's fastest; one model: no best mIoU
    note = table["note"]
    assert "Fake Xeon 8000, 4 threads" in note and "fp32+fold+channels_last" in note and "batch 1" in note
    assert "eager fp32 PyTorch" in note and "95% interval" in note
    assert "native bf16 (AVX512-BF16 or AMX)" in note


def test_two_models_the_best_marked_and_bf16_timed(tmp_path):
    timed = {m: {**v, "deploy_bf16_ms": v["deploy_fp32_ms"] * 0.6} for m, v in DEPLOYED.items()}
    timed["mobilenetv2-ppm"] |= {"deploy_int8_diff": None, "deploy_int8_lo": None, "deploy_int8_hi": None}
    study = _study(tmp_path, timed, list(timed))
    study.cfg.stats.confidence = 0.9
    table = deployment_table(study)
    assert table["header"][1:5] == ["fp32", "bf16", "ONNX", "INT8"]
    cells = _cells(table)
    assert [h for h, c in cells["MobileNetV2-PPM"].items() if c["b"]] == ["Latency (ms) bf16"]  # 15.0 ms
    assert cells["MobileNetV2-PPM"]["Fastest"]["t"] == "ONNX, 2.0×"  # as summary.csv names it
    assert [m for m, r in cells.items() if r["mIoU (%) fp32"]["b"]] == ["ResNet18-PPM"]
    assert cells["ResNet18-PPM"]["mIoU (%) Δ INT8"]["t"] == "-0.60 (-0.90 to -0.30)"
    assert cells["MobileNetV2-PPM"]["mIoU (%) Δ INT8"]["t"] == "-1.25"  # scored, not bootstrapped: no interval
    assert "90% interval" in table["note"] and "native bf16" not in table["note"]


def test_the_notes_give_the_batch_that_was_timed(tmp_path):
    """The batch the latencies were timed at: the run's latency.json where it records one, else the run's
    benchmark.batch_size; per model where they differ."""
    import json

    from segmodels.report.results import timed_batch
    from segmodels.report.tables import result_tables

    study = _study(tmp_path, DEPLOYED, list(DEPLOYED))
    study.cfg.benchmark.batch_size = 4
    note = deployment_table(study)["note"]
    assert "Latency: median at batch 4 and 512×1024" in note and "batch 1" not in note
    assert "latency: median, batch 4;" in result_tables(study)[0]["note"]
    run = tmp_path / "resnet18-ppm" / "seed0"  # evaluated, deployed and timed at batch 2
    (run / "deploy").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"miou": 0.6}))
    (run / "deploy" / "latency.json").write_text(json.dumps({"batch_size": 2}))
    assert timed_batch(study, list(DEPLOYED), deploy=True) == "batch 2 (ResNet18-PPM), 4 (MobileNetV2-PPM)"
    assert timed_batch(study, ["mobilenetv2-ppm"], deploy=True) == "batch 4"
    assert timed_batch(study, list(DEPLOYED)) == "batch 4"  # the benchmark's own latency.json is not there


def test_no_table_without_deployment(tmp_path):
    models = ["resnet18-ppm", "mobilenetv2-ppm"]
    assert deployment_table(_study(tmp_path, {}, models, columns=False)) is None  # deploy.enabled off
    assert deployment_table(_study(tmp_path, {}, models)) is None  # columns present, every one blank


def test_the_report_has_the_deployment_section(tmp_path):
    cfg, results = fabricate_results(tmp_path)
    path = results / cfg.experiment / "summary.csv"
    summary = pd.read_csv(path, dtype={"mlflow_run_ids": str})
    deployed = pd.DataFrame.from_dict(DEPLOYED, orient="index").reindex(columns=deploy_columns())
    summary = summary.join(deployed, on="model")
    summary.to_csv(path, index=False)
    out = tmp_path / "report.pdf"
    write_report(cfg, results, tmp_path / "no-figures", out, data_root=tmp_path / "data" / "packed",
                 log=lambda _: None)  # fmt: skip
    text = re.sub(r"-\s*\n\s*", "-", "\n".join(page.extract_text() for page in PdfReader(out).pages))
    flat = " ".join(text.split())
    assert "Deployment on the CPU" in flat
    sections = ("Uncertainty and cost", "Deployment on the CPU", "Comparison with the earlier study")
    assert [flat.index(s) for s in sections] == sorted(flat.index(s) for s in sections)
    assert "INT8, 4.0×" in flat and "-0.60 (-0.90 to -0.30)" in flat and "Fake Xeon 8000" in flat
