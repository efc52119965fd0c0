"""`make gpu-check` on a machine without a GPU: its plan, its one-line refusal, its argument checks, and the parts
that must be right before a lent GPU machine first runs it (generated studies, the placement verdict, the caps, the
train section's commands and tables from canned results, its micro-batch worker on the CPU, a node's environment)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segmodels.study.config import StudyConfig, load_config, study_from_dict
from segmodels.study.matrix import run_config, run_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_GPU = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a GPU machine running the suite hides its GPUs from torch


def _gpu_check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env=NO_GPU, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def parts():
    """benchmarks/gpu_check*.py, imported as the script imports them (their folder on sys.path)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield SimpleNamespace(main=importlib.import_module("gpu_check"),
                              **{name: importlib.import_module(f"gpu_check_{name}")
                                 for name in ("base", "procs", "sections", "studies", "workers")})  # fmt: skip
    finally:
        sys.path.remove(str(SCRIPT.parent))
        for name in [n for n in sys.modules if n.startswith("gpu_check")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def studies(parts):
    return parts.studies


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


# ---------------------------------------------------------------------------------------------------- the caps


def test_caps_fit_six_minutes_and_the_docstring_says_them(parts):
    base = parts.base
    assert sum(base.CAPS.values()) + base.STOP_GRACE_S <= 360  # the last section may overrun by its kill's grace
    assert base.CAPS["train"] == sum(base.TRAIN_PARTS.values())
    assert parts.main.parse_args([]).budget == sum(base.CAPS.values())
    doc = parts.main.__doc__
    assert dict(re.findall(r"^\d\. (\w+) \((\d+) s", doc, re.M)) == {k: str(v) for k, v in base.CAPS.items()}
    assert dict(re.findall(r"^   [a-z]\. ([\w-]+) \((\d+) s\)", doc, re.M)) == {
        k: str(v) for k, v in base.TRAIN_PARTS.items()}  # fmt: skip


def test_a_train_part_gets_its_share_and_what_the_parts_before_left(parts):
    deadlines = parts.sections.part_deadlines
    shares = {"bench-train": 30, "micro-batch": 25, "plan": 20}
    assert deadlines(0, 75, shares) == {"bench-train": 30, "micro-batch": 55, "plan": 75}
    assert deadlines(0, 95, shares) == {"bench-train": 50, "micro-batch": 75, "plan": 95}  # 20 s carried in
    assert deadlines(0, 50, shares) == {"bench-train": 30, "micro-batch": 50, "plan": 50}  # the budget's end


# ---------------------------------------------------------------------------------------------------- the plan


def test_plan_lists_the_train_sections_new_commands(parts):
    text = parts.main.plan(parts.main.parse_args(["--plan"]))
    lines = {line.strip()[:2]: line.strip() for line in text.splitlines() if re.match(r"\s+[abc]\. ", line)}
    assert "3. train (cap 75 s; parts: bench-train 30 s, micro-batch 25 s, plan 20 s)" in text
    assert "bench-train --model resnet50-ppm --crop 512 1024 --batch 8 --device cuda" in lines["a."]
    micro = lines["b."]
    assert "gpu_check.py --worker micro_batch --micro-batches 2 4 8 --worker-out $TMP/" in micro
    assert "train.micro_batch 2, 4, 8 = train.accumulate 4, 2, 1" in micro and "resnet50-ppm, batch 8" in micro
    assert "torch.cuda.max_memory_allocated" in micro and "train.micro_batch auto (find_micro_batch)" in micro
    assert lines["c."].endswith("python -m segmodels plan --config $TMP/plan/study.yaml --calibrate 5 --device cuda "
                                "--results $TMP/plan/results --out $TMP/plan/plan.csv")  # fmt: skip
    assert "within 1.5x of bench-train's s/step" in text
    only = parts.main.plan(parts.main.parse_args(["--plan", "--only", "latency"]))
    assert "micro_batch" not in only and "segmodels plan" not in only


def test_the_commands_are_ones_the_cli_accepts(parts):
    from segmodels.cli import build_parser

    parser = build_parser()
    bench = parser.parse_args([*parts.base.TRAIN_CMD, "--json", "x.json"])
    assert (bench.model, bench.crop, bench.batch, bench.device) == ("resnet50-ppm", [512, 1024], 8, "cuda")
    plan = parser.parse_args(parts.sections.plan_command(Path("/tmp/t")))
    assert (plan.config, plan.calibrate, plan.device) == (Path("/tmp/t/plan/study.yaml"), 5, "cuda")
    worker = parts.main.parse_args(["--worker", "micro_batch", *parts.sections.micro_batch_args()])
    assert worker.worker == "micro_batch" and worker.micro_batches == [2, 4, 8]


def test_the_plan_study_is_bench_trains_run(parts):
    """segmodels plan calibrates what bench-train times: the same train and data sections (so the same batch,
    crop, precision, classes), the same model but for its (unused) pretrained weights."""
    cfg = study_from_dict(parts.sections.plan_study(), where="plan study")
    assert run_names(cfg) == ["resnet50-ppm"]
    ours, bench = run_config(cfg, "resnet50-ppm"), run_config(StudyConfig(), "resnet50-ppm")
    assert ours.train == bench.train and ours.data == bench.data and ours.model.pretrained is None
    assert {**vars(ours.model), "pretrained": None} == {**vars(bench.model), "pretrained": None}
    assert (ours.train.batch_size, ours.train.crop_size, ours.train.amp) == (8, [512, 1024], True)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_gpu_check_with_a_wheelhouse_and_the_system_torch(tmp_path):
    """`make gpu-check WHEELHOUSE=… SYSTEM_TORCH=1`: setup from the wheelhouse alone, pinned to the node's torch,
    then the check; nothing run (make -n)."""
    venv = tmp_path / "venv"
    # Under `make test` this make is a sub-make: without MAKELEVEL and MAKEFLAGS it prints no "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", "gpu-check", f"WHEELHOUSE={tmp_path / 'wh'}",
                          "SYSTEM_TORCH=1", f"VENV={venv}", "GPU_CHECK_ARGS=--plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    installs = [line for line in lines if "pip install" in line]
    assert installs and all(f"--no-index --find-links {tmp_path / 'wh'} -c {venv}/system-torch.txt" in line
                            for line in installs)  # fmt: skip
    assert any("--system-site-packages" in line for line in lines)
    assert lines[-1] == f"{venv}/bin/python benchmarks/gpu_check.py --plan"


# ---------------------------------------------------------------------------------------------------- train section


def _micro_result(peaks=(9000.0, 14000.0, 24000.0), statuses=("ok", "ok", "ok"), auto=None):
    """What the micro-batch worker writes, for an H100."""
    rows = []
    for micro, peak, status in zip((2, 4, 8), peaks, statuses, strict=True):
        row = {"micro_batch": micro, "accumulate": 8 // micro, "status": status}
        if status == "ok":
            row.update(step_s=0.3, images_per_s=8 / 0.3, loss=3.0, peak_allocated_mib=peak,
                       peak_warmup_mib=peak + 2048, peak_reserved_mib=peak + 4096)  # fmt: skip
        else:
            row["reason"] = "OutOfMemoryError: CUDA out of memory. Tried to allocate 9.00 GiB"
        rows.append(row)
    auto = auto or {"status": "ok", "micro_batch": 8, "accumulate": 1, "seconds": 0.9,
                    "tried": [{"micro_batch": 8, "outcome": "ran", "peak_allocated_mib": 22000.0}]}  # fmt: skip
    return {"model": "resnet50-ppm", "crop": [512, 1024], "batch": 8, "warmup": 2, "steps": 3,
            "device": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2, "headroom": 0.1, "amp_dtype": "bfloat16",
            "channels_last": True, "rows": rows, "auto": auto}  # fmt: skip


def test_micro_batch_report_rows_and_summary(parts):
    sec = parts.base.Section("train", 75)
    text = parts.sections.report_micro_batch(sec, _micro_result())
    assert sec.status == "ok", sec.notes
    micro, auto = sec.tables
    assert micro["columns"] == ["micro-batch", "accumulate", "peak allocated, timed steps (GiB)",
                                "peak allocated, warm-up (GiB)", "peak reserved (GiB)", "ms per step", "images/s",
                                "status"]  # fmt: skip
    assert [r[:3] for r in micro["rows"]] == [[2, 4, 9000 / 1024], [4, 2, 14000 / 1024], [8, 1, 24000 / 1024]]
    assert micro["rows"][0][3] == 11048 / 1024 and micro["rows"][0][5] == pytest.approx(300)
    assert [r[-1] for r in micro["rows"]] == ["ok"] * 3
    assert "2 warm-up + 3 timed steps" in micro["title"] and "amp bfloat16" in micro["title"]
    assert auto["rows"] == [[79.2, 8, 1, "8: ran (21.5 GiB)", 0.9, "ok"]]
    assert text == "peak GiB at micro-batch 2/4/8: 8.79/13.7/23.4; auto: 8x1 on 79.2 GiB"
    md = parts.base.markdown({"created": "now", "headline": "h", "sections": {"train": {
        **vars(sec), "wall_s": 1.0}}})  # fmt: skip
    assert "| 2 | 4 | 8.79 | 10.8 | 12.8 | 300 | 26.7 | ok |" in md


def test_micro_batch_report_on_a_smaller_card_and_its_failures(parts):
    Section, report = parts.base.Section, parts.sections.report_micro_batch
    sec = Section("train", 75)
    small = _micro_result(statuses=("ok", "ok", "out of memory"), auto={
        "status": "ok", "micro_batch": 4, "accumulate": 2, "seconds": 1.5,
        "tried": [{"micro_batch": 8, "outcome": "out of memory"}, {"micro_batch": 4, "outcome": "ran",
                                                                   "peak_allocated_mib": 13000.0}]})  # fmt: skip
    text = report(sec, small)
    assert sec.status == "ok" and "micro-batch 8 does not fit this card (79.2 GiB)" in sec.notes
    assert sec.tables[0]["rows"][2][-1].startswith("out of memory: OutOfMemoryError")
    assert sec.tables[1]["rows"][0][1:4] == [4, 2, "8: out of memory, 4: ran (12.7 GiB)"]
    assert text.endswith("8.79/13.7/out of memory; auto: 4x2 on 79.2 GiB")

    sec = Section("train", 75)
    report(sec, _micro_result(peaks=(14000.0, 14000.0, 24000.0)))
    assert sec.status == "fail" and any("did not lower the peak memory (micro-batch 2 -> 4)" in n for n in sec.notes)
    sec = Section("train", 75)
    report(sec, _micro_result(statuses=("error", "ok", "ok")))
    assert sec.status == "fail" and any(n.startswith("training step failed: micro-batch 2") for n in sec.notes)
    sec = Section("train", 75)
    report(sec, _micro_result(auto={"status": "out of memory", "reason": "not even one 512×1024 crop fits"}))
    assert sec.status == "fail" and sec.tables[1]["rows"][0][-1].startswith("out of memory: not even one")
    sec = Section("train", 75)  # micro-batch 8 over the 10 % headroom, yet auto kept it: said, not failed
    report(sec, _micro_result(peaks=(9000.0, 14000.0, 75000.0)))
    assert sec.status == "ok" and any("the largest measured one under the headroom is 4" in n for n in sec.notes)


def _plan_row(step_s=0.3, iterations=40000):
    return {"model": "resnet50-ppm", "seeds": "1", "train_hours": f"{step_s * iterations / 3600:.6g}",
            "train_source": "calibrated", "eval_hours": "0.01", "benchmark_hours": "0.001", "peak_gpu_gb": "23.1",
            "micro_batch": "8", "accumulate": "1", "disk_gb": "0.5", "device": "NVIDIA H100 80GB HBM3"}  # fmt: skip


BENCH = {"model": "resnet50-ppm", "crop": [512, 1024], "batch_size": 8, "iters": 5, "warmup": 2, "rounds": 2,
         "images_per_s": {"on": 32.0, "off": 16.0}, "speedup": 2.0,
         "settings": {"on": {"amp_dtype": "torch.bfloat16"}, "off": {"amp_dtype": "None"}}}  # fmt: skip


def test_plan_report_sets_the_plans_step_beside_the_measured_ones(parts):
    Section, report = parts.base.Section, parts.sections.report_plan
    sec = Section("train", 75)
    text = report(sec, _plan_row(), 40000, BENCH, _micro_result())
    assert sec.status == "ok", sec.notes
    (table,) = sec.tables
    plan, bench, worker = table["rows"]
    assert plan[0].startswith("segmodels plan --calibrate 5") and plan[1:3] == ["8x1", pytest.approx(0.3)]
    assert plan[3:] == [None, 23.1]
    assert bench[1:3] == ["8x1", 0.25] and bench[3] == pytest.approx(1.2) and bench[4] is None
    assert worker[1:3] == ["8x1", 0.3] and worker[3] == pytest.approx(1.0) and worker[4] == 24000 / 1024
    assert text == "plan 0.300 s/step vs 0.250 measured (1.20x)"
    assert sec.data["plan"]["ratio"] == pytest.approx(1.2) and sec.data["plan"]["planned_step_s"] == pytest.approx(0.3)
    assert any("40000 iterations take 3.33 h" in n for n in sec.notes)

    sec = Section("train", 75)  # the plan at twice the measured step: beyond the scheduler's margin
    report(sec, _plan_row(step_s=0.5), 40000, BENCH, None)
    assert sec.status == "fail" and any("2.00x the measured one" in n for n in sec.notes)
    sec = Section("train", 75)  # no bench-train: the worker's step at the plan's micro-batch
    assert report(sec, _plan_row(), 40000, None, _micro_result()).endswith("(1.00x)") and sec.status == "ok"
    sec = Section("train", 75)
    report(sec, _plan_row(), 40000, None, None)
    assert sec.status == "inconclusive"
    sec = Section("train", 75)
    report(sec, {**_plan_row(), "train_hours": "", "train_source": "unknown"}, 40000, BENCH, None)
    assert sec.status == "fail" and not sec.tables


class _Ctx:
    """A Context whose commands write canned results: what section_train runs, and when each part must end."""

    def __init__(self, parts, tmp: Path, broken_worker: bool = False, clock=None, takes=None) -> None:
        self.parts, self.tmp, self.broken = parts, tmp, broken_worker
        self.clock, self.takes = clock or [time.time()], takes or {}  # the time now; seconds each command takes
        self.deadline = self.clock[0] + parts.base.CAPS["train"]
        self.calls: list[tuple[str, list[str], float]] = []

    def left(self) -> float:
        return self.deadline - self.clock[0]

    def _ran(self, name: str):
        (log := self.tmp / f"{name}.log").write_text(f"{name}: output\n")
        return self.parts.procs.Ran(0, 0.1, log)

    def segmodels(self, args: list[str], name: str):
        from segmodels.study.plan import PlanRow, write_plan

        self.calls.append(("segmodels", list(args), self.deadline))
        self.clock[0] += self.takes.get(args[0], 0)
        if args[0] == "bench-train":
            Path(args[args.index("--json") + 1]).write_text(json.dumps(BENCH))
        if args[0] == "plan":
            cfg = load_config(args[args.index("--config") + 1])
            hours = 0.3 * cfg.train.iterations / 3600
            write_plan([PlanRow(run_names(cfg)[0], 1, hours, "calibrated", 0.01, 0.001, 23.1, 8, 1, 0.5, "H100")],
                       args[args.index("--out") + 1])  # fmt: skip
        return self._ran(name)

    def worker(self, name: str, sec, extra=()):
        self.calls.append(("worker", [name, *extra], self.deadline))
        self.clock[0] += self.takes.get(name, 0)
        if self.broken:
            raise RuntimeError("the worker broke")
        return _micro_result()


def test_train_section_runs_its_three_parts_in_their_shares(parts, tmp_path):
    ctx, sec = _Ctx(parts, tmp_path), parts.base.Section("train", 75)
    end, start = ctx.deadline, time.time()
    parts.sections.section_train(ctx, sec)
    assert ctx.deadline == end  # the section's own end, back for whoever reads it next
    (_, bench, d1), (_, worker, d2), (_, plan, d3) = ctx.calls
    assert bench == [*parts.base.TRAIN_CMD, "--json", str(tmp_path / "bench_train.json")]
    assert worker == ["micro_batch", "--micro-batches", "2", "4", "8"]
    assert plan == parts.sections.plan_command(tmp_path)
    assert d1 == pytest.approx(start + 30, abs=2) and d2 == pytest.approx(start + 55, abs=2) and d3 == end
    study = load_config(tmp_path / "plan" / "study.yaml")
    assert run_config(study, "resnet50-ppm").train == run_config(StudyConfig(), "resnet50-ppm").train
    assert sec.status == "ok", sec.notes
    assert [t["title"].split(" ")[0] for t in sec.tables] == ["resnet50-ppm", "resnet50-ppm:", "train.micro_batch",
                                                             "segmodels"]  # fmt: skip
    assert sec.summary.startswith("32.0 images/s with speed features") and "auto: 8x1 on 79.2 GiB" in sec.summary
    assert sec.summary.endswith("plan 0.300 s/step vs 0.250 measured (1.20x)")
    assert {"bench_train", "micro_batch", "plan"} <= set(sec.data)
    json.dumps(sec.data)  # report.json takes it


def test_a_broken_train_part_is_recorded_and_the_next_one_runs(parts, tmp_path, monkeypatch):
    ctx, sec = _Ctx(parts, tmp_path, broken_worker=True), parts.base.Section("train", 75)
    parts.sections.section_train(ctx, sec)
    assert [c[1][0] for c in ctx.calls] == ["bench-train", "micro_batch", "plan"]
    assert sec.status == "error" and "micro-batch: RuntimeError: the worker broke" in sec.notes
    assert sec.summary.endswith("plan 0.300 s/step vs 0.250 measured (1.20x)")
    clock = [1000.0]  # a section cut to 60 s by the budget, whose first two parts used 52 of them
    monkeypatch.setattr(parts.sections, "time", SimpleNamespace(time=lambda: clock[0]))
    ctx = _Ctx(parts, tmp_path, clock=clock, takes={"bench-train": 28, "micro_batch": 24})
    ctx.deadline, sec = 1060.0, parts.base.Section("train", 60)
    parts.sections.section_train(ctx, sec)
    assert [c[2] for c in ctx.calls] == [1030.0, 1055.0]
    assert [c[1][0] for c in ctx.calls] == ["bench-train", "micro_batch"]
    assert sec.status == "skipped" and any(n.startswith("plan: not run") for n in sec.notes)


# ---------------------------------------------------------------------------------------------------- on the CPU


def test_micro_batch_worker_on_the_cpu_records_an_out_of_memory_and_the_auto_search(parts, monkeypatch, request):
    """The worker's own code with a small model on the CPU: the card is played by an out-of-memory at a
    micro-batch of 4 (the step) and above 2 (the search's probe)."""
    from segmodels.engine import micro_batch
    from segmodels.engine.step import Stepper

    call = Stepper.__call__

    def step(self, images, labels, lr):
        if self.accumulate == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return call(self, images, labels, lr)

    probed = []

    def probe(model, micro, *rest):
        probed.append(micro)
        if micro > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        micro_batch._probe(model, micro, *rest)

    monkeypatch.setattr(Stepper, "__call__", step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a machine busy with other work slows a multi-threaded step many times over
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    cfg = run_config(StudyConfig(), "resnet18-fcn")
    cfg.train.amp = False  # emulated bf16 would be slow here
    measure = parts.workers.measure_micro_batches
    kw = dict(crop=(32, 32), batch=4, micros=(1, 2, 4), warmup=1, steps=1, probe=probe, total_memory=8 * 2**30)
    saved = []
    r = measure(cfg, "resnet18-fcn", torch.device("cpu"), deadline=time.time() + 120, save=saved.append, **kw)
    assert [(m["micro_batch"], m["accumulate"], m["status"]) for m in r["rows"]] == [
        (1, 4, "ok"), (2, 2, "ok"), (4, 1, "out of memory")]  # fmt: skip
    assert all(m["step_s"] > 0 and m["peak_allocated_mib"] is None for m in r["rows"][:2])
    assert "Tried to allocate 9.00 GiB" in r["rows"][2]["reason"] and len(saved) == 3
    assert (r["auto"]["status"], r["auto"]["micro_batch"], r["auto"]["accumulate"]) == ("ok", 2, 2)
    assert [t["outcome"] for t in r["auto"]["tried"]] == ["out of memory", "ran"] and probed == [4, 2]
    assert r["memory_gib"] == 8.0 and r["amp_dtype"] is None and r["device"] == "cpu"
    sec = parts.base.Section("train", 75)
    text = parts.sections.report_micro_batch(sec, json.loads(json.dumps(r)))
    assert sec.status == "ok" and "micro-batch 4 does not fit this card (8.0 GiB)" in sec.notes
    assert text == "peak GiB at micro-batch 1/2/4: –/–/out of memory; auto: 2x2 on 8.0 GiB"
    late = measure(cfg, "resnet18-fcn", torch.device("cpu"), deadline=time.time(), **kw)
    assert {m["status"] for m in late["rows"]} == {"skipped"} and late["auto"]["status"] == "skipped"


NODE_LACKS = ("pypdf", "onnx", "onnxscript", "onnxruntime", "cityscapesscripts", "transformers", "torchmetrics",
              "matplotlib", "seaborn", "typst", "pygments")  # the dev extra and the report stack (REPORT=0)

_NODE = """
import importlib.abc, importlib.machinery, sys
from pathlib import Path

lacks = set(sys.argv[1].split(","))


class Lacking(importlib.abc.MetaPathFinder):  # sys.path's finder, blind to the packages a node lacks
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in lacks:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path = [Lacking() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.path.insert(0, sys.argv[2])
import time

import torch
import yaml

torch.set_num_threads(1)  # a machine busy with other work slows a multi-threaded step many times over
for name in lacks:
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise AssertionError(f"{name} still imports")

import gpu_check
from gpu_check_sections import plan_study
from gpu_check_workers import measure_micro_batches
from segmodels.cli import main
from segmodels.study.config import StudyConfig
from segmodels.study.matrix import run_config
from segmodels.study.plan import read_plan

assert gpu_check.main(["--plan"]) == 0
cfg = run_config(StudyConfig(), "resnet18-fcn")
cfg.train.amp = False
r = measure_micro_batches(cfg, "resnet18-fcn", torch.device("cpu"), crop=(32, 32), batch=2, micros=(2,), warmup=0,
                          steps=1, deadline=time.time() + 60)
assert r["rows"][0]["status"] == "ok" and r["auto"]["status"] == "ok", r
study = plan_study()
study["models"] = ["resnet18-fcn"]
study["train"].update(batch_size=2, crop_size=[32, 32], amp=False)
study["data"] = {"size": [32, 64]}
Path("study.yaml").write_text(yaml.safe_dump(study))
assert main(["plan", "--config", "study.yaml", "--calibrate", "1", "--device", "cpu", "--out", "plan.csv"]) == 0
assert float(read_plan("plan.csv")["resnet18-fcn"]["train_hours"]) > 0
print("node ok", sorted(m for m in sys.modules if m.split(".")[0] in lacks))
"""


def test_the_train_parts_run_without_the_dev_packages(tmp_path):
    """A node's environment (make wheelhouse NODE=1 [REPORT=0]) lacks the dev extra's packages and maybe the report
    stack: the plan, the micro-batch worker's code and `segmodels plan` run without them (here on the CPU)."""
    result = subprocess.run([sys.executable, "-c", _NODE, ",".join(NODE_LACKS), str(SCRIPT.parent)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=NO_GPU)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "node ok []" in result.stdout and "3. train (cap 75 s" in result.stdout
