"""`segmodels plan`: the cost of a study before it runs, from recorded costs or a timed calibration on this CPU."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import small_config, write_config

from segmodels.cli import main
from segmodels.devices import cpu_name
from segmodels.study.plan import makespan, planned_minutes, read_plan, totals
from segmodels.study.runs import run_dir


def test_wall_time_puts_the_longest_job_on_the_freest_gpu():
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 and 3+2
    assert makespan([3, 3, 2, 2, 2], 1) == 12
    assert makespan([5, 1, 1, 1], 3) == 5
    assert makespan([], 2) == 0


def test_scheduler_minutes_come_from_the_plan_with_a_margin():
    plan = {"resnet18-ppm": {"train_hours": "0.5"}, "resnet50-ppm": {"train_hours": ""}}
    assert planned_minutes(plan, "resnet18-ppm", 1440) == 45
    assert planned_minutes(plan, "resnet50-ppm", 1440) == 1440  # unknown: the default
    assert planned_minutes(plan, "other", 60) == 60
    assert planned_minutes({"m": {"train_hours": "0.001"}}, "m", 60) == 10  # at least ten minutes


def _config(tmp_path, **train):
    cfg = small_config(train={"iterations": 50, **train})
    cfg.models = ["mobilenetv2-fcn", "resnet18-fcn"]
    cfg.data.source, cfg.data.synthetic.val, cfg.data.synthetic.train = "synthetic", 3, 4
    return cfg, write_config(tmp_path / "study.yaml", cfg)


def test_plan_calibrates_runs_without_a_record_and_reuses_recorded_costs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/packed here: the config's counts
    cfg, config = _config(tmp_path)
    # resnet18-fcn trained here before: its cost.json and evaluation cost are the plan's
    folder = run_dir(tmp_path / "results", cfg.experiment, "resnet18-fcn", 0)
    folder.mkdir(parents=True)
    (folder / "cost.json").write_text(json.dumps({"complete": True, "device": cpu_name(), "wall_s": 200.0,
                                                  "images": 100}))  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps({"cost": {"device": cpu_name(), "wall_hours": 0.01}}))
    code = main(["plan", "--config", str(config), "--calibrate", "2", "--results", str(tmp_path / "results"),
                 "--gpus", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "calibrating mobilenetv2-fcn: 2 steps" in out and "calibrating resnet18-fcn" not in out
    plan = read_plan(tmp_path / "results" / cfg.experiment / "plan.csv")
    r18, mv2 = plan["resnet18-fcn"], plan["mobilenetv2-fcn"]
    assert r18["train_source"] == "recorded" and mv2["train_source"] == "calibrated"
    assert float(r18["train_hours"]) == pytest.approx(2.0 * 50 * 2 / 3600, rel=1e-5)  # 2 s/image × 50 steps × 2
    assert float(r18["eval_hours"]) == pytest.approx(0.01, rel=1e-5)
    assert 0 < float(mv2["train_hours"]) < 1 and float(mv2["eval_hours"]) > 0 and mv2["micro_batch"] == "2"
    assert float(mv2["disk_gb"]) > 0 and mv2["device"] == cpu_name()
    assert "wall on 2 GPU(s)" in out and "total:" in out


def test_recorded_costs_alone_leave_unknown_runs_unknown(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, config = _config(tmp_path)
    assert main(["plan", "--config", str(config), "--calibrate", "0", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    with (tmp_path / "r" / cfg.experiment / "plan.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["train_source"] for r in rows] == ["unknown", "unknown"] and "calibrating" not in out
    assert "total: ? of device time" in out


def test_totals_need_every_run_known():
    from segmodels.study.plan import PlanRow

    cfg = small_config()
    known = PlanRow("a", 2, 1.0, "recorded", 0.5, 0.1, None, None, None, 0.2, "cpu")
    unknown = PlanRow("b", 1, None, "unknown", None, None, None, None, None, 0.2, "cpu")
    both = totals([known], cfg, 2)
    assert both["wall_hours"] == pytest.approx(1.5 + 0.2) and both["gpu_hours"] == pytest.approx(3.0 + 0.4)
    assert totals([known, unknown], cfg, 2)["wall_hours"] is None


@pytest.mark.parametrize(("args", "message"), [(["--gpus", "0"], "--gpus must be at least 1"),
                                               (["--calibrate", "-1"], "--calibrate at least 0")])  # fmt: skip
def test_bad_arguments_are_refused(tmp_path, capsys, args, message):
    _, config = _config(tmp_path)
    assert main(["plan", "--config", str(config), *args]) != 0
    assert message in capsys.readouterr().err


def test_the_report_sets_the_plan_beside_the_actual_cost(tmp_path):
    import numpy as np

    from segmodels.metrics import compute_metrics, metric_scores
    from segmodels.report.results import load_study
    from segmodels.report.uncertainty import uncertainty_section
    from segmodels.study.plan import PlanRow, write_plan

    cfg = small_config()
    cfg.models = ["mobilenetv2-fcn"]
    folder = run_dir(tmp_path, cfg.experiment, "mobilenetv2-fcn", 0)
    folder.mkdir(parents=True)
    per_image = np.eye(19, dtype=np.int64)[None].repeat(4, axis=0) * 50
    np.save(folder / "confusion_per_image.npy", per_image)
    scores = compute_metrics(per_image.sum(0))
    (folder / "metrics.json").write_text(json.dumps({**metric_scores(scores, finite=True), "iou": scores["iou"]}))
    (folder / "cost.json").write_text(json.dumps({"complete": True, "device": "cpu", "wall_s": 7200.0,
                                                  "wall_hours": 2.0, "images": 100}))  # fmt: skip
    study = load_study(cfg, tmp_path)
    cost = next(t for t in uncertainty_section(study)["tables"] if t["title"] == "Cost")
    assert "Planned (h)" not in cost["header"]
    write_plan([PlanRow("mobilenetv2-fcn", 1, 1.5, "calibrated", None, None, None, 2, 1, 0.1, "cpu")],
               tmp_path / cfg.experiment / "plan.csv")
    cost = next(t for t in uncertainty_section(load_study(cfg, tmp_path))["tables"] if t["title"] == "Cost")
    row = dict(zip(cost["header"], (c["t"] for c in cost["rows"][0]), strict=True))
    assert row["Planned (h)"] == "1.5" and row["Train (h)"] == "2" and "'segmodels plan' estimated" in cost["note"]


def test_the_train_rule_asks_the_scheduler_for_the_planned_time(tmp_path):
    """With results/{experiment}/plan.csv the train jobs' runtime resource (SLURM's -t) is the plan's × 1.5."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from segmodels.study.plan import PlanRow, write_plan

    root = Path(__file__).resolve().parents[1]
    models = yaml.safe_load((root / "config" / "test.yaml").read_text())["models"]
    write_plan([PlanRow(models[0], 1, 0.5, "calibrated", None, None, None, 2, 1, 0.1, "cpu")],
               tmp_path / "results" / "test" / "plan.csv")  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(root / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(root / "config" / "test.yaml"), "-n"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = re.findall(r"rule train:.*?wildcards: exp=test, model=([^,\s]+).*?resources: ([^\n]*)",
                      result.stdout, flags=re.S)  # fmt: skip
    runtime = {model: re.search(r"runtime=(\d+)", res).group(1) for model, res in jobs}
    assert runtime == {models[0]: "45", **{m: "1440" for m in models[1:]}}, runtime
