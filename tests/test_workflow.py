"""The Snakemake study, run for real on the tiny test config: every job is a `segmodels` call."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 900):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(config or ROOT / "config" / "test.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_schema_file_is_generated_from_the_config_dataclasses():
    from segmodels.study.config import study_schema

    on_disk = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert on_disk == study_schema(), "config/schema.yaml is stale: run `segmodels schema --out config/schema.yaml`"


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["models"].append("resnet34-ppm"), "resnet34-ppm"),
        (lambda c: c["train"].update(lrate=0.1), "lrate"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", config=path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("experiment", "x;touch INJECTED;y"), ("experiment", "my exp"), ("experiment", "../../escape"),
     ("dataset", "d;touch INJECTED")],
)  # fmt: skip
def test_names_with_shell_or_path_syntax_stop_snakemake_before_any_job(tmp_path, key, value):
    """A real run (not -n): the name is refused at validation, no job starts and nothing is executed."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    if key == "dataset":
        config["data"]["dataset"] = value
    else:
        config[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    result = snakemake(work, "--cores", "1", config=path)
    assert result.returncode != 0
    assert "plain name" in result.stdout + result.stderr or "does not match" in result.stdout + result.stderr
    assert not list(tmp_path.rglob("INJECTED")) and not (ROOT / "INJECTED").exists()
    assert not (work / "results").exists() and not (tmp_path / "escape").exists()


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
# Placeholders that are numbers Snakemake itself fills in, or wildcards constrained to digits.
_NUMERIC = {"threads", "resources.gpu", "wildcards.seed"}


def test_every_placeholder_that_reaches_the_shell_is_quoted():
    """The second wall behind the config's name checks: a path or name with spaces or `;` stays one word."""
    seen = 0
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:\s+\"[^\n]*\"\n?)+)", text):
            for name in _PLACEHOLDER.findall(block):
                seen += 1
                assert name.endswith(":q") or name in _NUMERIC, f"{smk.name}: {{{name}}} is not quoted (use :q)"
    assert seen > 20  # the pattern found the rules' shell lines


_RULE_START = re.compile(r"^\s*rule (\w+):\s*$", re.M)


def _rules() -> dict[str, str]:
    """Rule name → the text of its block, from the Snakefile and every rule file."""
    rules = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        starts = list(_RULE_START.finditer(text))
        bounds = [here.start() for here in starts] + [len(text)]
        for here, end in zip(starts, bounds[1:], strict=True):
            rules[here.group(1)] = text[here.end() : end]
    return rules


def _declared(block: str) -> dict[str, str]:
    """What the README's table shows of a rule: its GPUs, threads and mem_mb, as the README writes them."""
    gpu = re.search(r"^\s+gpu=(\w+),", block, re.M)
    threads = re.search(r"^\s+threads: (\w+)", block, re.M)
    mem = re.search(r"^\s+mem_mb=(\d+),", block, re.M)
    as_text = {None: "–", "1": "1", "ALL_GPUS": "all"}, {None: "1", "ALL_CORES": "all"}
    return {
        "gpu": as_text[0][gpu and gpu.group(1)],
        "threads": as_text[1][threads and threads.group(1)],
        "mem_mb": mem.group(1) if mem else "",
    }


def test_every_job_declares_its_environment_memory_benchmark_and_threads():
    """What --software-deployment-method conda and a cluster scheduler need of every rule that runs a job."""
    rules = _rules()
    jobs = {name: block for name, block in rules.items() if "shell:" in block}
    assert set(rules) - set(jobs) == {"all"} and len(jobs) >= 11, sorted(rules)
    for name, block in jobs.items():
        assert re.search(r"^\s+conda:\s*\n\s+ENV\s*$", block, re.M), f"rule {name}: no `conda: ENV`"
        assert _declared(block)["mem_mb"], f"rule {name}: no `resources: mem_mb=` (a number)"
        bench = re.search(r"^\s+benchmark:\s*\n\s+f?\"(logs/[^\"]+\.bench\.tsv)\"", block, re.M)
        assert bench, f"rule {name}: no benchmark file under logs/ (its peak memory is what mem_mb comes from)"
        if "{threads}" in block:  # parallel work: the job's worker count comes from its threads
            assert re.search(r"^\s+threads: ", block, re.M), f"rule {name} passes {{threads}} but declares none"


def test_readme_table_lists_every_rule_as_the_rules_declare_it():
    """The README's table of rules (GPU, threads, mem_mb) is checked against the rules so that it cannot go stale."""
    text = (ROOT / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].strip("`")] = {"gpu": cells[2], "threads": cells[3], "mem_mb": cells[4]}
    jobs = {name: block for name, block in _rules().items() if "shell:" in block}
    assert set(rows) == set(jobs), f"README table rows {sorted(rows)} != rules {sorted(jobs)}"
    for name, block in jobs.items():
        assert rows[name] == _declared(block), f"README row of rule {name}: {rows[name]}, rules: {_declared(block)}"


def test_report_captions_exist_and_cover_every_figure():
    from segmodels.report.figures import FIGURES

    report = ROOT / "workflow" / "report"
    captions = set()
    for block in _rules().values():
        captions |= set(re.findall(r'caption="([^"]+)"', block))
    assert {Path(c).name for c in captions} >= {"figures.rst", "summary.rst", "report.rst"}
    for caption in captions:
        assert (ROOT / "workflow" / "rules" / caption).resolve().parent == report.resolve(), caption
        assert (report / Path(caption).name).is_file(), caption
    assert 'report: "workflow/report/workflow.rst"' in (ROOT / "Snakefile").read_text()
    assert (report / "workflow.rst").is_file()
    figures = (report / "figures.rst").read_text()
    assert all(f'"{name}":' in figures for name in FIGURES), "workflow/report/figures.rst lacks a figure of FIGURES"


def test_conda_environment_installs_this_checkout(tmp_path):
    """Snakemake makes a job environment from a copy of environment.yml under .snakemake/conda/, so the project
    comes from environment.post-deploy.sh with the checkout's path (SEGMODELS_SOURCE, set by common.smk)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [line for line in pip if line.startswith("-")], "a path in environment.yml is relative to its copy"
    assert "SEGMODELS_SOURCE=workflow.basedir" in (ROOT / "workflow" / "rules" / "common.smk").read_text()
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text('#!/bin/sh\necho "$@" > "$CALLED"\n')
    (stub / "python").chmod(0o755)
    script = ROOT / "environment.post-deploy.sh"
    env_vars = dict(os.environ, PATH=f"{stub}{os.pathsep}{os.environ['PATH']}", CALLED=str(tmp_path / "called"))
    env_vars.pop("SEGMODELS_SOURCE", None)
    assert subprocess.run(["bash", str(script)], env=env_vars, capture_output=True).returncode != 0
    ran = subprocess.run(["bash", str(script)], env=dict(env_vars, SEGMODELS_SOURCE=str(ROOT)), capture_output=True)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "called").read_text().split() == ["-m", "pip", "install", "--no-deps", "--editable", str(ROOT)]


@pytest.mark.slow
def test_study_runs_end_to_end_and_second_run_does_nothing(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    # One model deployed on the CPU through ONNX Runtime INT8 (fp32 is always scored and timed beside it).
    deployed = config["models"][0]
    config["deploy"] = {"enabled": True, "models": [deployed], "paths": ["onnx-int8"], "calibration": 4}
    # Every model under one corruption at one severity: one corrupt job, one robustness job per run.
    config["robustness"] = {"enabled": True, "corruptions": ["jpeg_compression"], "severities": [5]}
    # The config's path has a space and shell syntax: every job must still get it as one word, run nothing else.
    folder = tmp_path / "my study;touch INJECTED;x"
    folder.mkdir()
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", config=study)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    summary = pd.read_csv(tmp_path / "results" / "test" / "summary.csv")
    assert list(summary["model"]) == config["models"]
    assert (summary["status"] == "complete").all()
    assert summary["miou"].between(0, 100).all() and (summary["latency_ms"] > 0).all()
    for model in config["models"]:
        run = tmp_path / "results" / "test" / model / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0 <= metrics["miou"] <= 1
        assert (run / "mlflow_run_id").read_text().strip()
        assert (tmp_path / "logs" / "test" / model / "seed0" / "train.log").is_file()
    assert (tmp_path / "reports" / "report.pdf").stat().st_size > 0
    row = summary.set_index("model").loc[deployed]
    assert row["deploy_int8_ms"] > 0 and row["deploy_fp32_ms"] > 0 and row["deploy_int8_lo"] <= row["deploy_int8_hi"]
    assert summary.set_index("model")["deploy_miou_fp32"].notna().sum() == 1  # the one deployed run
    for path in ("fp32", "onnx-int8"):
        assert (tmp_path / "results" / "test" / deployed / "seed0" / "deploy" / path / "metrics.json").is_file()
    corrupted = tmp_path / "data" / "corrupted" / "synthetic-test" / "jpeg_compression"
    assert json.loads((corrupted / "corrupted.json").read_text())["severities"] == [5]
    for model in config["models"]:
        record = json.loads((tmp_path / "results" / "test" / model / "seed0" / "robustness" / "robustness.json").read_text())
        assert set(record["corruptions"]) == {"jpeg_compression"} and record["images"] == 4
        assert summary.set_index("model").loc[model, "miou_c_mean"] == pytest.approx(record["miou_c_mean"] * 100, abs=1e-4)
    assert summary["miou_c_mean_lo"].le(summary["miou_c_mean_hi"]).all()
    table = pd.read_csv(tmp_path / "results" / "test" / "robustness.csv")
    assert sorted(table["model"]) == sorted(config["models"]) and set(table["severity"]) == {5}
    figures = json.loads((tmp_path / "reports" / "figures" / "figures.json").read_text())
    assert figures

    # One MLflow run per model with its accuracy and latency, and a summary run holding the report.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(config["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(runs) == len(config["models"]) + 1, sorted(by_name)
    for model in config["models"]:
        run = next(
            r
            for r in runs
            if r.info.run_id == (tmp_path / "results" / "test" / model / "seed0" / "mlflow_run_id").read_text().strip()
        )
        assert {"miou", "latency_ms", "miou_per_speed", "miou_c_mean", "robustness_rel"} <= set(run.data.metrics), run.data.metrics.keys()
    summary_run = next(r for r in runs if r.data.tags.get("segbench.kind") == "summary")
    artifacts = {a.path for a in client.list_artifacts(summary_run.info.run_id)}
    assert {"summary.csv", "report.pdf", "figures"} <= artifacts

    assert not list(tmp_path.rglob("INJECTED")), "a config path was split by the shell"

    # Snakemake's own HTML report of the finished run: no --cores needed, every figure drawn and its caption in it.
    html = tmp_path / "reports" / "workflow.html"
    made = snakemake(tmp_path, "--report", str(html), config=study)
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-4000:]
    page = html.read_text()
    assert html.stat().st_size > 100_000
    assert "The study <strong>test</strong> trains 2 models" in page  # workflow/report/workflow.rst, rendered
    assert "The study's summary table" in page and "paired bootstrap intervals" in page
    for figure in figures["figures"]:
        assert f"{figure['name']}.png" in page, figure["name"]
    assert "Predictions of each backbone" in page  # workflow/report/figures.rst for backbones.png

    again = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=1", "-n", config=study)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # A changed training parameter re-runs that chain (train → evaluate → benchmark → summary), not the data.
    config["train"]["lr"] = 0.02
    study.write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "--cores", "2", "-n", config=study)
    assert dry.returncode == 0
    text = dry.stdout + dry.stderr
    assert "rule train:" in text and "rule prepare:" not in text and "rule synth:" not in text
