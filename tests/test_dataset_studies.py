"""Studies on other datasets through the whole DAG: generated Pascal VOC layout (21 classes) up to the report, and
a generated ADE20K layout whose 150 classes keep the report readable."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, snakemake

pytestmark = pytest.mark.slow


def _study(tmp_path: Path, layout: str, experiment: str, models: list[str]) -> Path:
    """config/test.yaml on a generated dataset in ``layout``; the classes come from the packed manifest."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config.update(experiment=experiment, models=models)
    config["data"].update(dataset=f"synthetic-{layout}")
    config["data"]["synthetic"]["layout"] = layout
    config["tracking"]["log_model"] = False
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_voc_layout_study_runs_end_to_end(tmp_path):
    path = _study(tmp_path, "voc", "voc-test", ["mobilenetv2-fcn", "resnet18-ppm"])
    start = time.monotonic()
    result = snakemake(tmp_path, "--cores", "2", "--resources=gpu=1", config=path)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    print(f"VOC-layout study: {time.monotonic() - start:.0f} s")
    manifest = json.loads((tmp_path / "data" / "packed" / "synthetic-voc" / "manifest.json").read_text())
    assert manifest["label_set"] == "voc" and len(manifest["classes"]) == 21
    assert manifest["classes"][:2] == ["background", "aeroplane"]
    summary = pd.read_csv(tmp_path / "results" / "voc-test" / "summary.csv")
    assert (summary["status"] == "complete").all()
    run = tmp_path / "results" / "voc-test" / "mobilenetv2-fcn" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["per_class"]) == manifest["classes"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["num_classes"] == 21  # resolved from the manifest, recorded with the run
    assert (tmp_path / "reports" / "report.pdf").stat().st_size > 10_000
    from pypdf import PdfReader

    words = "\n".join(page.extract_text() for page in PdfReader(tmp_path / "reports" / "report.pdf").pages)
    flat = " ".join(words.split())  # line breaks of the typeset text as spaces
    subtitle = next(line for line in words.splitlines() if "Semantic segmentation on" in line)
    assert "Pascal VOC (21 classes)" in subtitle and "Cityscapes" not in subtitle, subtitle
    assert "Comparison with the earlier study" not in flat and "The earlier study ranked" not in flat
    assert "differs by" not in flat and "62.89" not in flat and "mmsegmentation's published results" not in flat
    assert ("This study is on Pascal VOC (21 classes); the earlier study and mmsegmentation's published numbers are "
            "on Cityscapes, so they are not compared.") in flat, flat[:3000]


def test_a_150_class_study_builds_a_readable_report(tmp_path):
    from pypdf import PdfReader

    path = _study(tmp_path, "ade20k", "ade-test", ["mobilenetv2-fcn"])
    config = yaml.safe_load(path.read_text())
    config["data"]["synthetic"].update(train=8, val=6)
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", "--resources=gpu=1", config=path)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    manifest = json.loads((tmp_path / "data" / "packed" / "synthetic-ade20k" / "manifest.json").read_text())
    assert len(manifest["classes"]) == 150
    pdf = PdfReader(tmp_path / "reports" / "report.pdf")
    words = "\n".join(page.extract_text() for page in pdf.pages)
    assert re.search(r"150 classes: the \d+ with the highest and the \d+ with the lowest mean IoU", words), words[-3000:]
    figures = json.loads((tmp_path / "reports" / "figures" / "figures.json").read_text())
    captions = {f["name"]: f["caption"] for f in figures["figures"]}
    assert "the 25 with the most true pixels" in captions["confusion"]
