"""The full-size rehearsal script, run small: generation into zips, packing from them, every figure reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_fullsize.py"


def test_rehearsal_reports_every_figure_from_the_zips(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"experiment": "r", "models": ["mobilenetv2-fcn", "resnet18-ocr"],
                                      "model": {"output_stride": 16, "pretrained": None}}))  # fmt: skip
    args = [sys.executable, str(SCRIPT), "--raw", str(tmp_path / "raw"), "--packed", str(tmp_path / "packed"),
            "--out", str(tmp_path / "out"), "--train", "4", "--val", "2", "--size", "128", "256",
            "--packed-size", "64", "128", "--crop", "64", "128", "--batch", "2", "--batches", "2",
            "--workers", "2", "--config", str(config)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "rehearsal.json").read_text())
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.zip")) == [
        "gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"]  # fmt: skip
    assert report["generate"]["seconds"] > 0 and report["prepare"]["peak_rss_gb"] > 0
    assert report["zips_gb"] > 0 and report["packed_gb"] > 0 and report["loader"]["samples_per_s"] > 0
    assert [r["model"] for r in report["evaluate"]] == ["mobilenetv2-fcn", "resnet18-ocr"]
    assert all(r["scored"] == "128x256" and r["seconds"] > 0 for r in report["evaluate"])  # the raw labels' size
    assert all(r["statistics_seconds"] > 0 for r in report["evaluate"])  # boundary and instance counts timed too
    assert "| packing (`prepare` from the zips) |" in (tmp_path / "out" / "rehearsal.md").read_text()
    # A second run reuses the archives and says so, but packs again (the packing is what it times).
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "archives reused, not timed" in again.stdout


def test_rehearsal_refuses_bad_counts(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--train", "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--train must be at least 1" in result.stderr
