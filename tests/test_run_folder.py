"""The run folder's contract: one module names its files, lays out their paths for Python and Snakemake, reads and
writes them, and opens a job's run (config, model, cost, MLflow)."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config, write_config
from mlflow import MlflowClient

from segmodels.engine.run import open_run
from segmodels.study import runs
from segmodels.study.matrix import run_config
from segmodels.study.runs import FILES, RunFolder, pattern, primary_mode, read_json, read_npy, run_dir

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"
_STRING = re.compile(r"""(?:f|r|rf|fr)?("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")


# --- names and patterns ----------------------------------------------------------------------------------------


def test_every_file_has_one_name_one_attribute_and_one_pattern(tmp_path):
    assert len(set(FILES)) == len(FILES)
    folder, descriptor = RunFolder(tmp_path), type(vars(RunFolder)["metrics"])
    paths = [getattr(folder, attr) for attr, value in vars(RunFolder).items() if isinstance(value, descriptor)]
    assert sorted(p.name for p in paths) == sorted(FILES) and {p.parent for p in paths} == {tmp_path}
    assert pattern(runs.METRICS) == "results/{exp}/{model}/seed{seed}/metrics.json"
    filled = pattern(runs.LATENCY).format(exp="study", model="resnet18-ppm_os16", seed=3)
    assert Path(filled) == run_dir("results", "study", "resnet18-ppm_os16", 3) / "latency.json"
    with pytest.raises(ValueError, match=r"'model\.onnx' is not a file of the run folder.*metrics\.json"):
        pattern("model.onnx")


def test_the_module_is_light_for_the_snakefile():
    code = "import sys, segmodels.study.runs; print([m for m in ('torch', 'numpy', 'mlflow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _smk_strings() -> list[tuple[str, str]]:
    """(file, string literal) of the rules' code, comments left out."""
    found = []
    for smk in sorted(RULES.glob("*.smk")):
        for line in smk.read_text().splitlines():
            if not line.lstrip().startswith("#"):
                found += [(smk.name, s[1:-1]) for s in _STRING.findall(line)]
    return found


def test_rules_take_every_run_folder_path_from_the_module():
    strings = _smk_strings()
    assert len(strings) > 20  # the pattern found the rules' strings
    for smk, text in strings:
        assert not (text.startswith("results/") and "{model}" in text), f"{smk}: run folder path {text!r} written out"
        last = text.rsplit("/", 1)[-1]
        # config/config.yaml is the default study config, not a run's config.yaml
        assert last not in FILES or text.startswith("config/"), f"{smk}: {text!r} names a run folder file"
    used = set()
    for smk in RULES.glob("*.smk"):
        used |= set(re.findall(r"\b(?:run_file|all_runs)\(([A-Z_]+)\)", smk.read_text()))
    assert {getattr(runs, name) for name in used} == {runs.CHECKPOINT, runs.TRAIN_LOG, runs.METRICS, runs.PER_CLASS,
                                                      runs.CONFUSION, runs.CONFUSION_PER_IMAGE,
                                                      runs.STATISTICS_PER_IMAGE, runs.LATENCY}
    assert "runs.pattern(name)" in (RULES / "common.smk").read_text()


def test_the_planned_jobs_read_and_write_the_module_paths(tmp_path):
    import yaml

    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(ROOT / "config" / "test.yaml"), "-n"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = set(re.findall(r"results/test/[^/\s,;]+/seed\d+/[^\s,;]+", result.stdout + result.stderr))
    models = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())["models"]
    written = {runs.CHECKPOINT, runs.TRAIN_LOG, runs.METRICS, runs.PER_CLASS, runs.CONFUSION, runs.CONFUSION_PER_IMAGE,
               runs.STATISTICS_PER_IMAGE, runs.LATENCY}  # fmt: skip
    assert planned == {str(run_dir("results", "test", m, 0) / name) for m in models for name in written}


def test_no_other_module_spells_a_run_folder_file_name():
    offenders = []
    for path in sorted((ROOT / "segmodels").rglob("*.py")):
        if path == ROOT / "segmodels" / "study" / "runs.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value  # a path (no spaces: messages and help may name the files; not the study config)
                path_like = " " not in text and not text.startswith("config/")
                if path_like and any(re.search(rf"(^|/){re.escape(name)}($|/)", text) for name in FILES):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert not offenders, "use the names of segmodels.study.runs:\n" + "\n".join(offenders)


# --- readers and writers --------------------------------------------------------------------------------------


def test_json_and_npy_round_trip_atomically(tmp_path):
    folder = RunFolder(tmp_path / "run")
    data = {"miou": float("nan"), "fps": np.float32(2.5), "modes": {"fp32": [1, np.int64(2), math.inf]}}
    runs.write_json(folder.latency, data)
    assert read_json(folder.latency) == {"miou": None, "fps": 2.5, "modes": {"fp32": [1, 2, None]}}
    assert folder.read_latency() == read_json(folder.latency) and folder.read_metrics() is None
    matrix = np.arange(9, dtype=np.int64).reshape(3, 3)
    runs.write_npy(folder.confusion, matrix)
    np.testing.assert_array_equal(read_npy(folder.confusion), matrix)
    assert read_npy(folder.confusion_per_image) is None
    assert sorted(p.name for p in folder.path.iterdir()) == ["confusion.npy", "latency.json"]  # no temporary files


def test_samples_training_log_and_run_id(tmp_path):
    folder = RunFolder(tmp_path)
    paths = {kind: folder.sample(7, "frankfurt/frankfurt_000000", kind) for kind in ("pred", "input", "gt")}
    assert paths["pred"].name == "0007_frankfurt_frankfurt_000000.png" and paths["gt"].name.endswith("_gt.png")
    for path in paths.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    assert folder.read_samples() == {7: paths}
    with pytest.raises(ValueError, match="'overlay'"):
        folder.sample(0, "x", "overlay")
    assert folder.training_log() is None and folder.read_run_id() is None
    folder.train_log_partial.write_text("iteration,loss\n")
    assert folder.training_log() == folder.train_log_partial
    folder.train_log.write_text("iteration,loss\n")
    assert folder.training_log() == folder.train_log
    folder.run_id_file.write_text("abc\n")
    assert folder.read_run_id() == "abc"


def test_primary_mode_matches_the_mious_precision():
    ok, skipped = {"status": "ok"}, {"status": "skipped"}
    assert primary_mode({"modes": {"fp32": ok, "amp": ok}}, "amp") == "amp"
    assert primary_mode({"modes": {"fp32": ok, "amp": skipped}}, "amp") == "fp32"
    assert primary_mode({"modes": {"amp+compile": ok}}) == "amp+compile"
    assert primary_mode({"modes": {"amp": skipped}}) is None


# --- open_run ----------------------------------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, packed_data, mlflow_uri, one_thread):
    from segmodels.engine.train import train

    cfg = small_config(train={"iterations": 2, "log_every": 1, "ckpt_every": 2})
    out = tmp_path / "results" / "test" / "mobilenetv2-fcn" / "seed0"
    train(cfg, "mobilenetv2-fcn", out=out, data_dir=packed_data)
    return cfg, RunFolder(out)


def test_open_run_resolves_the_run_loads_its_model_and_logs_to_its_mlflow_run(trained, mlflow_uri):
    import torch

    cfg, folder = trained
    assert {p.name for p in folder.path.iterdir()} >= {runs.CHECKPOINT, runs.TRAIN_LOG, runs.CONFIG, runs.COST,
                                                       runs.RUN_ID_FILE}  # fmt: skip
    with open_run(cfg, folder.path, job="evaluate") as run:
        assert run.name == "mobilenetv2-fcn" and run.checkpoint == folder.checkpoint and run.folder == folder
        assert run.cfg == run_config(cfg, "mobilenetv2-fcn")
        model, meta = run.load_model(torch.device("cpu"), expect_num_classes=cfg.model.num_classes)
        assert not model.training and meta["iteration"] == 2 and "model" not in meta
        with run.meter("cpu") as meter:
            meter.images = 1
        assert meter.result()["job"] == "evaluate" and meter.path is None  # the evaluation's cost goes elsewhere
        run.log(metrics={"probe": 0.5, "undefined": None}, tags={"probe": "yes"}, step=2)
    record = MlflowClient(mlflow_uri).get_run(folder.read_run_id())
    assert record.data.metrics["probe"] == 0.5 and "undefined" not in record.data.metrics
    assert record.data.tags["probe"] == "yes" and record.info.status == "FINISHED"

    with open_run(cfg, folder.path, job="benchmark", model_name="resnet18-ppm") as run:
        pytest.raises(ValueError, run.load_model, torch.device("cpu"))  # the checkpoint is of another architecture
    with open_run(cfg, job="benchmark", model_name="mobilenetv2-fcn") as run:  # no folder: a fresh model
        assert run.checkpoint is None and run.folder is None
        assert isinstance(run.build_model(pretrained=False), torch.nn.Module)
        run.log(metrics={"ignored": 1.0})  # nothing to log into: a no-op


def test_open_run_refuses_a_missing_checkpoint_and_ends_a_failed_training_run(tmp_path, mlflow_uri):
    cfg = small_config()
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*checkpoint\.pt"):
        open_run(cfg, tmp_path / "empty", job="evaluate").__enter__()
    with pytest.raises(ValueError, match="give a run folder"):
        open_run(cfg, job="benchmark").__enter__()
    folder = RunFolder(tmp_path / "run")
    opened = open_run(cfg, folder.path, job="train", model_name="mobilenetv2-fcn", seed=4)
    with pytest.raises(RuntimeError, match="boom"), opened as run:
        assert run.name == "mobilenetv2-fcn" and run.checkpoint is None
        run.start_logger({"p": 1}, {"t": "x"})
        raise RuntimeError("boom")
    record = MlflowClient(mlflow_uri).get_run(folder.read_run_id())
    assert record.info.status == "FAILED" and record.info.run_name == "mobilenetv2-fcn-seed4"
    assert record.data.params["p"] == "1" and record.data.tags["seed"] == "4"


def test_the_cli_trains_into_the_folder_the_module_names(tmp_path, packed_data, mlflow_uri, one_thread, capsys):
    from segmodels.cli import main

    cfg = small_config(train={"iterations": 1, "log_every": 1})
    out = tmp_path / "run"
    code = main(["train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), "--model", "mobilenetv2-fcn",
                 "--out", str(out), "--data", str(packed_data)])  # fmt: skip
    assert code == 0 and f"wrote {RunFolder(out).checkpoint}" in capsys.readouterr().out


def test_a_registered_metric_is_validated_scored_and_logged(tmp_path, packed_data, mlflow_uri, one_thread):
    from segmodels.engine.evaluate import evaluate
    from segmodels.engine.train import train
    from segmodels.metrics import pixel_acc, register_metric, unregister_metric

    register_metric("halfacc", "½Acc", lambda m: pixel_acc(m) / 2)
    try:
        cfg = small_config(train={"iterations": 1, "log_every": 1}, evaluate={"samples": [0]})
        folder = RunFolder(tmp_path / "results" / "test" / "mobilenetv2-fcn" / "seed0")
        result = train(cfg, "mobilenetv2-fcn", out=folder.path, data_dir=packed_data)
        assert result.val["val_halfacc"] == pytest.approx(result.val["val_allacc"] / 2)
        header = folder.train_log.read_text().splitlines()[0].split(",")
        assert header.index("val_halfacc") == header.index("val_allacc") + 1  # in the metrics' order
        metrics = evaluate(cfg, folder.path, data=packed_data, progress=False)
        assert metrics["halfacc"] == pytest.approx(metrics["allacc"] / 2)
        assert read_json(folder.metrics)["halfacc"] == pytest.approx(metrics["halfacc"])
        logged = MlflowClient(mlflow_uri).get_run(folder.read_run_id()).data.metrics
        assert logged["halfacc"] == pytest.approx(metrics["halfacc"] * 100) and "miou" in logged
    finally:
        unregister_metric("halfacc")
