"""Distillation from another run of the study: teachers checked at planning, trained first, compared in the report."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml
from conftest import small_config
from test_workflow import ROOT, snakemake

from segmodels.engine.train import train
from segmodels.report.design import Distillation, distillations, fixed_pairs
from segmodels.study.config import ConfigError, load_config, study_from_dict
from segmodels.study.matrix import expand_runs, run_config
from segmodels.study.stats import study_pairs

TEACHER, PLAIN, STUDENT = "resnet18-fcn", "mobilenetv2-fcn", "mobilenetv2-fcn_kd"
DISTILLED = {STUDENT: {"train.distill_teacher": TEACHER}}


def _study(models: list, tmp_path: Path, **changes) -> Path:
    """config/test.yaml with these models (and top-level changes), written to tmp_path/study.yaml."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config.update(models=models, **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


BAD_TEACHERS = {
    "unknown name": ([TEACHER, {STUDENT: {"train.distill_teacher": "resnet50-fcn"}}],
                     "'resnet50-fcn' is not a run of the study"),
    "itself": ([{STUDENT: {"train.distill_teacher": STUDENT}}], f"'{STUDENT}' is the run itself"),
    "a cycle": ([{"mobilenetv2-fcn_a": {"train.distill_teacher": "mobilenetv2-fcn_b"}},
                 {"mobilenetv2-fcn_b": {"train.distill_teacher": "mobilenetv2-fcn_a"}}],
                "cycle of teachers (mobilenetv2-fcn_a -> mobilenetv2-fcn_b -> mobilenetv2-fcn_a)"),
    "other classes": ([{TEACHER: {"model.num_classes": 5}},
                       {STUDENT: {"train.distill_teacher": TEACHER, "model.num_classes": 19}}],
                      f"'{TEACHER}' predicts 5 classes ('model.num_classes'), the run 19"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_a_bad_teacher_fails_at_load_naming_the_file_the_run_and_the_teacher(tmp_path, case):
    models, message = BAD_TEACHERS[case]
    path = _study(models, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        study_from_dict(yaml.safe_load(path.read_text()), where=str(path))
    assert str(caught.value).startswith(f"{path}: run '")


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_a_bad_teacher_stops_snakemake_at_planning(tmp_path, case):
    models, message = BAD_TEACHERS[case]
    result = snakemake(tmp_path, "-n", config=_study(models, tmp_path))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_a_teacher_outside_the_study_is_a_path_checked_when_training_starts(tmp_path):
    path = _study([{STUDENT: {"train.distill_teacher": "./teachers/r18/checkpoint.pt"}}], tmp_path)
    (spec,) = expand_runs(load_config(path))
    assert spec.teacher is None
    assert distillations(load_config(path)) == [Distillation(STUDENT, None, None)]


def test_the_teacher_is_resolved_per_run_and_the_report_compares_the_distilled_run(tmp_path):
    cfg = load_config(_study([TEACHER, PLAIN, DISTILLED, {"mobilenetv2-fcn_kd_t2": {
        "train.distill_teacher": TEACHER, "train.distill_temperature": 2.0}}], tmp_path))  # fmt: skip
    assert {s.name: s.teacher for s in expand_runs(cfg)} == {TEACHER: None, PLAIN: None, STUDENT: TEACHER,
                                                              "mobilenetv2-fcn_kd_t2": TEACHER}  # fmt: skip
    # The run's own effective config (what a train job gets) still names its teacher, and stays loadable.
    assert run_config(cfg, STUDENT).train.distill_teacher == TEACHER
    assert run_config(run_config(cfg, STUDENT), STUDENT).train.distill_teacher == TEACHER
    assert distillations(cfg)[0] == Distillation(STUDENT, PLAIN, TEACHER)
    assert distillations(cfg)[1] == Distillation("mobilenetv2-fcn_kd_t2", PLAIN, TEACHER)
    pairs = study_pairs([s.name for s in expand_runs(cfg)], fixed_pairs(cfg))
    assert ("distillation", STUDENT, PLAIN) in pairs and ("distillation", STUDENT, TEACHER) in pairs
    assert ("variants", STUDENT, PLAIN) not in pairs  # compared once, in its own group
    assert ("variants", "mobilenetv2-fcn_kd_t2", PLAIN) not in pairs


def test_the_bundled_distillation_study_is_the_earlier_plan():
    cfg = load_config(ROOT / "config" / "distill.yaml")
    assert distillations(cfg) == [Distillation("mobilenetv2-ppm_kd", "mobilenetv2-ppm", "resnet101-ppm")]
    real = load_config(ROOT / "config" / "config.yaml")
    assert (cfg.data, cfg.train, cfg.evaluate) == (real.data, real.train, real.evaluate)
    text = (ROOT / "config" / "distill.yaml").read_text()
    assert "# seeds: [0, 1, 2]" in text
    # The Snakefile validates the file against config/schema.yaml before planning: it must accept it too.
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text)))


def test_a_teacher_named_by_run_is_its_checkpoint_of_the_same_seed(tmp_path, packed_data, mlflow_uri):
    results = tmp_path / "results"
    cfg = small_config(models=[TEACHER, PLAIN, DISTILLED], train={"iterations": 2, "log_every": 1})
    student = run_config(cfg, STUDENT)
    with pytest.raises(FileNotFoundError, match=f"teacher run {TEACHER}, seed 1, is not trained"):
        train(student, STUDENT, seed=1, out=results / "test" / STUDENT / "seed1", data_dir=packed_data,
              results=results)  # fmt: skip
    train(cfg, TEACHER, seed=1, out=results / "test" / TEACHER / "seed1", data_dir=packed_data)
    train(cfg, STUDENT, seed=1, out=results / "test" / STUDENT / "seed1", data_dir=packed_data, results=results)
    with (results / "test" / STUDENT / "seed1" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(math.isfinite(float(r["loss_distill"])) and float(r["loss_distill"]) > 0 for r in rows)


def test_the_teacher_stays_in_eval_mode_and_unchanged_while_the_student_trains(tmp_path, packed_data, mlflow_uri,
                                                                             monkeypatch, one_thread):
    """Each forward of the teacher runs in eval mode (BatchNorm on its running statistics, no dropout), and after
    the student's training its weights and BatchNorm buffers are still its checkpoint's."""
    import torch

    from segmodels.engine import checkpoint

    results = tmp_path / "results"
    cfg = small_config(models=[TEACHER, DISTILLED], train={"iterations": 3, "log_every": 1, "ckpt_every": 3})
    train(cfg, TEACHER, seed=0, out=results / "test" / TEACHER / "seed0", data_dir=packed_data)
    teacher_checkpoint = results / "test" / TEACHER / "seed0" / "checkpoint.pt"
    saved = checkpoint.load_checkpoint(teacher_checkpoint)["model"]

    loaded, training = [], []  # the models loaded from the teacher's checkpoint; per forward, its modules in training
    load = checkpoint.load_model_from_checkpoint

    def load_and_watch(path, **kwargs):
        model = load(path, **kwargs)
        if Path(path) == teacher_checkpoint:
            loaded.append(model)
            model.register_forward_pre_hook(
                lambda module, args: training.append([n for n, m in module.named_modules() if m.training]))
        return model

    monkeypatch.setattr(checkpoint, "load_model_from_checkpoint", load_and_watch)
    train(cfg, STUDENT, seed=0, out=results / "test" / STUDENT / "seed0", data_dir=packed_data, results=results)
    (teacher,) = loaded
    assert training == [[]] * 3  # one forward per step, not one module in training mode
    state = teacher.state_dict()
    assert state.keys() == saved.keys() and any(k.endswith("running_mean") for k in state)
    changed = [k for k in saved if not torch.equal(state[k].cpu(), saved[k])]
    assert not changed, changed[:5]


def _train_jobs(log: str) -> dict[str, tuple[int, int | None]]:
    """Run → (line where its train job starts, line where it finished, None in a dry run) of a Snakemake log."""
    lines = [line.strip() for line in log.splitlines()]
    starts, ids, rule, start, jobid = {}, {}, None, None, None
    for i, line in enumerate(lines):
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule, start = m.group(1), i
        elif m := re.fullmatch(r"jobid: (\d+)", line):
            jobid = m.group(1)
        elif rule == "train" and (m := re.search(r"^wildcards: .*model=([\w.-]+)", line)):
            starts[m.group(1)], ids[m.group(1)] = start, jobid
    finished = (re.match(r"Finished jobid: (\d+) \(Rule: train", line) for line in lines)
    done = {m.group(1): i for i, m in enumerate(finished) if m}
    return {run: (starts[run], done.get(ids[run])) for run in starts}


def test_the_plan_trains_the_teacher_first_with_its_checkpoint_an_input_of_the_student(tmp_path):
    path = _study([TEACHER, PLAIN, DISTILLED], tmp_path, seeds=[0, 1])
    result = snakemake(tmp_path, "-n", "--cores", "1", config=path)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    jobs = _train_jobs(text)
    assert jobs[TEACHER][0] < jobs[STUDENT][0]
    for seed in (0, 1):
        inputs = re.findall(rf"input: (.*)\n\s+output: results/test/{STUDENT}/seed{seed}/checkpoint.pt", text)
        assert inputs and f"results/test/{TEACHER}/seed{seed}/checkpoint.pt" in inputs[0]
        assert f"/seed{1 - seed}/" not in inputs[0]  # the teacher of the same seed, not another
    plain = re.findall(rf"input: (.*)\n\s+output: results/test/{PLAIN}/seed0/checkpoint.pt", text)
    assert plain and "checkpoint.pt" not in plain[0]


@pytest.mark.slow
def test_a_distillation_study_runs_end_to_end_teacher_first(tmp_path):
    """Teacher, plain student and distilled student through Snakemake up to the summary and the comparisons."""
    path = _study([TEACHER, PLAIN, DISTILLED], tmp_path, experiment="distill-test")
    config = yaml.safe_load(path.read_text())
    config["tracking"]["log_model"] = False  # the MLflow model of each run: not what this test is about
    path.write_text(yaml.safe_dump(config))
    root = tmp_path / "results" / "distill-test"
    # Two GPU jobs at once (on the CPU here): the teacher and the plain student train side by side.
    result = snakemake(tmp_path, "--cores", "2", "--resources=gpu=2", "results/distill-test/summary.csv",
                       "results/distill-test/comparisons.csv", config=path)  # fmt: skip
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]

    jobs = _train_jobs(text)
    assert None not in jobs[TEACHER] and jobs[TEACHER][1] < jobs[STUDENT][0]  # finished before the student began
    teacher, student = (root / run / "seed0" for run in (TEACHER, STUDENT))
    assert (teacher / "checkpoint.pt").stat().st_mtime <= (student / "config.yaml").stat().st_mtime
    assert yaml.safe_load((student / "config.yaml").read_text())["train"]["distill_teacher"] == TEACHER

    summary = pd.read_csv(root / "summary.csv")
    assert list(summary["model"]) == [TEACHER, PLAIN, STUDENT] and (summary["status"] == "complete").all()
    comparisons = pd.read_csv(root / "comparisons.csv")
    pairs = set(zip(comparisons["group"], comparisons["a"], comparisons["b"], strict=True))
    assert {("distillation", STUDENT, PLAIN), ("distillation", STUDENT, TEACHER)} <= pairs

    from segmodels.report.findings import findings
    from segmodels.report.results import load_study

    study = load_study(load_config(path), tmp_path / "results")
    (text,) = [f["text"] for f in findings(study) if f["title"] == "Distillation"]
    assert "MobileNetV2-FCN kd, distilled from ResNet18-FCN" in text and "CI [" in text
    assert "Inference latency is unchanged" in text and "teacher's forward pass" in text
