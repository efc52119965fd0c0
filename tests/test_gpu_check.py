"""`make gpu-check` on a machine without a GPU: its plan, its one-line refusal, its argument checks, and the parts
that must be right before a lent GPU machine first runs it (generated studies, the placement verdict)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segmodels.study.config import load_config, study_from_dict
from segmodels.study.matrix import run_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a GPU machine running the suite hides its GPUs from torch


def _gpu_check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=NO_GPU, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def studies():
    """benchmarks/gpu_check_studies.py, imported as the script imports it (its folder on sys.path)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("gpu_check_studies")
    finally:
        sys.path.remove(str(SCRIPT.parent))
        for name in [n for n in sys.modules if n.startswith("gpu_check")]:
            del sys.modules[name]


def test_plan_lists_every_model_mode_peer_and_section():
    result = _gpu_check("--plan")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    for model in run_names(load_config(ROOT / "config" / "config.yaml")):
        assert model in plan
    words = set(re.findall(r"[\w+]+", plan))
    assert {"fp32", "amp", "amp+channels_last", "amp+channels_last+compile"} <= words
    assert any(w.endswith("cudagraphs") for w in words)
    for peer in ("deeplabv3_resnet50", "lraspp_mobilenet_v3_large"):
        assert peer in plan
    for number, section in enumerate(("environment", "latency", "train", "ddp", "snakemake"), start=1):
        assert f"{number}. {section} (cap " in plan
    assert "pytest -q -m cuda tests" in plan and "bench-train --model resnet50-ppm" in plan
    assert "--gpus N" in plan and "--resources gpu=N" in plan


def test_plan_with_only_lists_those_sections_in_run_order():
    result = _gpu_check("--plan", "--only", "snakemake,latency")
    assert result.returncode == 0, result.stderr
    assert "1. latency" in result.stdout and "2. snakemake" in result.stdout
    assert "environment" not in result.stdout and "bench-train" not in result.stdout


def test_without_a_gpu_one_line_exit_0_and_nothing_written(tmp_path):
    default_out = ROOT / "results" / "gpu-check"
    before = sorted(default_out.rglob("*")) if default_out.exists() else None
    result = _gpu_check(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing run"]  # fmt: skip
    assert (sorted(default_out.rglob("*")) if default_out.exists() else None) == before
    assert not list(tmp_path.iterdir())
    out = tmp_path / "results" / "gpu-check"
    assert _gpu_check("--out", str(out), "--only", "latency").returncode == 0 and not out.exists()


@pytest.mark.parametrize("value", ["nope", "latency,nope", ","])
def test_only_with_an_unknown_section_fails_naming_the_sections(value):
    result = _gpu_check("--only", value)
    assert result.returncode == 2
    assert "unknown section" in result.stderr
    assert "environment, latency, train, ddp, snakemake" in result.stderr


def test_a_bad_compile_model_is_refused():
    result = _gpu_check("--plan", "--compile-models", "resnet34-ppm")
    assert result.returncode == 2 and "resnet34-ppm" in result.stderr


@pytest.mark.parametrize("gpus", [1, 2, 3, 8])
def test_generated_ddp_study_is_valid_and_splits_its_batch(studies, gpus):
    data, notes = studies.ddp_study(ROOT / "config" / "config.yaml", gpus)
    cfg = study_from_dict(data, where="ddp study")
    assert run_names(cfg) == ["resnet18-ppm"] and cfg.train.iterations == 200 and cfg.model.pretrained is None
    assert cfg.train.batch_size % gpus == 0 and cfg.train.batch_size // gpus >= 2  # PPM's BatchNorm needs 2
    assert (cfg.train.batch_size != 8) == any("global batch" in n for n in notes)


def test_generated_placement_study_is_valid(studies):
    cfg = study_from_dict(studies.placement_study(), where="placement study")
    assert run_names(cfg) == ["resnet18-ppm", "mobilenetv2-fcn"] and cfg.model.pretrained is None


class _Samples:
    """What GpuSampler leaves behind: samples and the command lines of the processes it saw."""

    def __init__(self, samples, cmdlines):
        self.samples, self.cmdlines = samples, cmdlines


def _train(model):
    return ["/venv/bin/python", "/venv/bin/segmodels", "train", "--config", "s.yaml", "--model", model, ""]


def test_placement_verdict(studies):
    cmdlines = {11: _train("resnet18-ppm"), 12: _train("mobilenetv2-fcn"),
                13: ["python", "segmodels", "evaluate", "--run", "results/x/resnet18-ppm/seed0", ""]}  # fmt: skip

    def verdict(samples):
        sampler = _Samples([{"t": t, **s} for t, s in enumerate(samples)], cmdlines)
        return studies._placement(sampler, studies._jobs(sampler))

    apart = {"locks": {"0": 11, "1": 12}, "apps": [[0, 11], [1, 12]]}
    assert verdict([apart, apart])[0] == "ok"
    shared = {"locks": {"0": 11, "1": 12}, "apps": [[0, 11], [0, 12]]}
    status, text = verdict([apart, shared])
    assert status == "fail" and "shared a GPU" in text and "12" in text  # 12 ran off its claimed GPU 1
    assert verdict([{"locks": {"0": 11}, "apps": []}, {"locks": {"0": 12}, "apps": []}])[0] == "inconclusive"
    status, text = verdict([{"locks": {"0": 11, "1": 12}, "apps": []}])
    assert status == "ok" and "not confirmed" in text  # nvidia-smi saw no process: the locks alone
    jobs = studies._jobs(_Samples([{"t": 0, **apart}], cmdlines))
    assert jobs[13]["kind"] == "evaluate" and jobs[13]["model"] == "resnet18-ppm"
