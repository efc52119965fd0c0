"""The study through a real SLURM cluster: workflow/profiles/slurm on a one-node cluster started here.

tests/cluster/slurm-up starts munged, slurmctld and slurmd (installing Debian's slurm-wlm when
absent and SEGBENCH_SLURM_TEST=1; root only) with one fake GPU; the test study (config/test.yaml with one model and a
longer training) then runs through `snakemake --profile workflow/profiles/slurm`, every job an
sbatch job. On the way its training job is cancelled with scancel and the rerun has to finish
only what is missing, resuming training from last.pt. A plain local run of the same study runs
alongside as the reference the outputs must match (to 1e-6; they come out bit-identical, as
training on the CPU is deterministic for a given thread count and resuming is exact). Last, a job
given a corrupt input has to fail the workflow with its log shown.

Every command runs under `timeout -k`, within one budget for the whole module, and the cluster is
stopped (by PID) however the tests end.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER = ROOT / "tests" / "cluster"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"

BUDGET_S = 480  # the whole module, cluster start to stop: it takes 4 to 5 minutes on two busy cores
# One CPU per job on the 2-CPU test node, so that a CPU job runs beside the GPU chain.
CORES = 1
# Status polling for a test: the profile's 20 s suit a cluster, not jobs of a few seconds. The
# plugin adds 10 s to the interval after each poll that finds no job finished, so the polls come
# 4 and 18 s after a job starts: most of these jobs (two Snakemake starts and one segmodels
# command, 6-18 s here) are seen at the second.
STATUS_S = 4
# Long enough to cancel between the first last.pt and the end; short enough for CI.
ITERATIONS, CKPT_EVERY = 20, 4
# SLURM run against local run. They come out bit-identical: same data, same thread count per rule
# (CPU numerics depend on it), and resuming restores the RNG and optimizer state exactly.
TOL = 1e-6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # its budget assumes the machine to itself
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="a SLURM test cluster needs root (slurmd starts jobs as their user)",
    ),
    # A user's `make test` changes nothing on the system: the cluster test installs Debian's slurm-wlm and munge
    # only when asked to (.ci/run asks).
    pytest.mark.skipif(
        shutil.which("slurmctld") is None and os.environ.get("SEGBENCH_SLURM_TEST") != "1",
        reason="SLURM is not installed; SEGBENCH_SLURM_TEST=1 installs slurm-wlm and munge and runs this test",
    ),
]

_DEADLINE = [0.0]  # set when the cluster starts


def _left(cap: float) -> int:
    """Seconds a command may take: ``cap``, or what is left of the module's budget if less."""
    left = _DEADLINE[0] - time.monotonic()
    if left < 5:
        pytest.fail(f"the SLURM tests ran past their budget of {BUDGET_S} s")
    return int(min(cap, left))


def _bounded(cmd: list[str], cap: float) -> list[str]:
    return ["timeout", "-k", "10", str(_left(cap)), *map(str, cmd)]


def _free_port_pair() -> int:
    """A port P with P and P+1 free on localhost (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 65000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two adjacent free ports on localhost")


@dataclass
class Cluster:
    dir: Path
    env: dict[str, str]  # SLURM_CONF and the cluster's folder and port

    def run(self, *cmd: str, cap: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(_bounded(list(cmd), cap), env=self.env, capture_output=True, text=True)

    def jobs(self) -> dict[str, tuple[str, str, str]]:
        """SLURM job id → (comment, state, time used) of every job slurmctld still remembers (MinJobAge)."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%k|%T|%M").stdout
        return {i: (c, s, t) for i, c, s, t in (line.split("|") for line in out.splitlines() if line.strip())}


@pytest.fixture(scope="module")
def cluster():
    _DEADLINE[0] = time.monotonic() + BUDGET_S
    # Not under pytest's tmp folder: munged runs as its own user and cannot enter that one.
    state = Path(tempfile.mkdtemp(prefix="segbench-slurm-test-", dir="/tmp"))
    state.chmod(0o755)
    env = dict(os.environ, SEGBENCH_SLURM_DIR=str(state), SEGBENCH_SLURM_PORT=str(_free_port_pair()))
    env["SLURM_CONF"] = str(state / "etc" / "slurm.conf")
    env.pop("SLURM_JOB_ID", None)
    found = Cluster(state, env)
    daemons: list[int] = []
    try:
        up = found.run(str(CLUSTER / "slurm-up"), cap=180)  # apt-get install on a fresh machine
        assert up.returncode == 0, up.stdout + up.stderr
        daemons = [int(p.read_text()) for p in (state / "run" / "slurmctld.pid", state / "run" / "slurmd.pid",
                                                state / "munge" / "munged.pid")]
        again = found.run(str(CLUSTER / "slurm-up"))  # a second start leaves the running cluster alone
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr
        assert [int(p.read_text()) for p in (state / "run" / "slurmctld.pid", state / "run" / "slurmd.pid",
                                             state / "munge" / "munged.pid")] == daemons
        yield found
    finally:
        for _ in range(2):  # the second stop finds nothing to stop, and says so without failing
            down = subprocess.run(["timeout", "-k", "5", "60", CLUSTER / "slurm-down"], env=env,
                                  capture_output=True, text=True)
            assert down.returncode == 0, down.stderr
        left = [pid for pid in daemons if _alive(pid)]
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"slurm-down left daemons running: {left}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited; it only waits for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- the study: a local reference run, and a SLURM run with one training job cancelled -------------


@dataclass
class Study:
    config: dict
    path: Path  # the study's config file
    slurm: Path  # working folders
    local: Path
    logs: dict[str, str] = field(default_factory=dict)  # run name → Snakemake's output
    jobs: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # SLURM job id → (comment, state, time)
    cancelled: str = ""  # the model whose training was cancelled
    cancelled_at: int = 0  # the iteration of its last.pt then
    run_id: str = ""  # its MLflow run id then
    missing: list[str] = field(default_factory=list)  # models without checkpoint.pt after the cancel
    seconds: dict[str, float] = field(default_factory=dict)


def _snakemake(workdir: Path, config: Path, *args: str) -> list[str]:
    return [BIN / "snakemake", "--snakefile", ROOT / "Snakefile", "--directory", workdir, "--configfile", config,
            *args]


def _slurm_args() -> list[str]:
    return ["--profile", str(PROFILE), "--cores", str(CORES), "--verbose",
            "--slurm-init-seconds-before-status-checks", str(STATUS_S),
            "--seconds-between-status-checks", str(STATUS_S)]


def _env(cluster: Cluster) -> dict[str, str]:
    env = dict(cluster.env, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start(cmd: list, cap: float, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``cmd`` under ``timeout -k``, its output into ``log``, in a process group of its own."""
    with log.open("w") as out:
        return subprocess.Popen(_bounded(cmd, cap), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop what ``_start`` started, children included: SIGTERM to the group, SIGKILL 10 s later.

    (Snakemake waiting on SLURM jobs may ignore SIGTERM; killing only `timeout` would orphan it.)
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        for _ in range(50):
            proc.poll()  # reap `timeout` itself, a member of the group until then
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    proc.wait()


def _finish(proc: subprocess.Popen, cap: float) -> int:
    """Wait for what ``_start`` started, at most ``cap`` s and within the budget; stop it after that."""
    try:
        return proc.wait(timeout=_left(cap))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, proc.args[4:7]))} … ran past the SLURM tests' budget of {BUDGET_S} s")
    finally:
        if proc.poll() is None:
            _stop(proc)


def _run_slurm(cluster: Cluster, study: Study, name: str, cap: float) -> int:
    """The study through the SLURM profile; Snakemake's output in ``study.logs[name]``."""
    start = time.monotonic()
    log = study.slurm.parent / f"{name.replace(' ', '-')}.log"
    proc = _start(_snakemake(study.slurm, study.path, *_slurm_args()), cap, _env(cluster), log)
    code = _finish(proc, cap)
    study.seconds[name] = time.monotonic() - start
    study.logs[name] = log.read_text()
    study.jobs.update(cluster.jobs())
    return code


def _cancel_training(cluster: Cluster, study: Study) -> int:
    """Run the study until its training job has written last.pt, scancel that job, let Snakemake fail."""
    start = time.monotonic()
    log = study.slurm.parent / "cancelled-run.log"
    proc = _start(_snakemake(study.slurm, study.path, *_slurm_args()), 240, _env(cluster), log)
    try:
        runs = {m: study.slurm / "results" / "test" / m / "seed0" for m in study.config["models"]}
        while proc.poll() is None and not study.cancelled and time.monotonic() < _DEADLINE[0]:
            for model, run in runs.items():
                if (run / "last.pt").is_file():
                    running = {c: i for i, (c, s, _) in cluster.jobs().items() if s == "RUNNING"}
                    job = running.get(f"rule_train_wildcards_test_{model}_0")
                    assert job, f"last.pt of {model} exists but no training job of it runs: {running}"
                    assert cluster.run("scancel", job).returncode == 0
                    study.cancelled = model
                    break
            time.sleep(0.1)
        code = _finish(proc, 180)
    finally:
        if proc.poll() is None:
            _stop(proc)
    study.seconds["cancelled run"] = time.monotonic() - start
    study.logs["cancelled run"] = log.read_text()
    study.jobs.update(cluster.jobs())
    return code


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    import torch

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    asked = max(int(r.get("mem_mb", 0)) for r in [profile["default-resources"], *profile["set-resources"].values()])
    node_mb = int(cluster.run("sinfo", "--noheader", "--format=%m").stdout.split()[0])
    if node_mb < asked:  # sbatch would refuse those jobs (EnforcePartLimits)
        pytest.skip(f"the profile asks for up to {asked} MB per job; this machine has {node_mb} MB")
    base = tmp_path_factory.mktemp("study")
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    config["train"].update(iterations=ITERATIONS, ckpt_every=CKPT_EVERY)
    # One model: the GPU jobs run one after another on the one (fake) GPU, each costing seconds of
    # job start and polling; a second model would add three such stages and prove nothing new.
    config["models"] = config["models"][:1]
    path = base / "study.yaml"  # one file for both runs: the rules pass its path to every job
    path.write_text(yaml.safe_dump(config))
    found = Study(config, path, base / "slurm", base / "local")
    found.slurm.mkdir()
    found.local.mkdir()

    # The reference: the same study run locally, alongside (the SLURM run mostly waits on polling).
    # Every rule gets the thread count it gets in a SLURM job (--max-threads): CPU numerics depend on it.
    local_start = time.monotonic()
    local = _start(_snakemake(found.local, path, "--cores", "2", "--max-threads", str(CORES), "--resources",
                              "gpu=1"), 360, _env(cluster), base / "local.log")
    try:
        first = _cancel_training(cluster, found)
        text = found.logs["cancelled run"]
        assert found.cancelled, "no training job was seen running with a last.pt:\n" + text[-4000:]
        assert first != 0, "Snakemake succeeded although a job was cancelled"
        run = found.slurm / "results" / "test" / found.cancelled / "seed0"
        found.cancelled_at = int(torch.load(run / "last.pt", weights_only=True)["iteration"])
        found.run_id = (run / "mlflow_run_id").read_text().strip()
        found.missing = [m for m in config["models"]
                         if not (found.slurm / "results" / "test" / m / "seed0" / "checkpoint.pt").is_file()]

        assert _run_slurm(cluster, found, "rerun", 300) == 0, found.logs["rerun"][-8000:]
        assert _finish(local, 360) == 0, (base / "local.log").read_text()[-8000:]
        found.seconds["local run (alongside)"] = time.monotonic() - local_start
    finally:
        if local.poll() is None:
            _stop(local)
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in found.seconds.items()))
    return found


# --- the checks -------------------------------------------------------------------------------------

_SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
_FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: (\w+)\)")
_SBATCH = re.compile(r"sbatch call: (sbatch .*)")


def _job_stats(log: str) -> Counter:
    """Rule → count from the 'Job stats' table Snakemake prints before it starts."""
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)})


def test_every_job_ran_as_an_sbatch_job(cluster, study):
    ran = [rule for name in ("cancelled run", "rerun") for rule in _FINISHED.findall(study.logs[name])]
    ran = [rule for rule in ran if rule != "all"]  # the target rule has no command
    submitted = [m[1] for name in ("cancelled run", "rerun") for m in _SUBMITTED.findall(study.logs[name])]
    assert ran and len(submitted) == len(ran) + 1, (ran, submitted)  # + the cancelled training job
    states = Counter(study.jobs[j][1] for j in submitted)
    assert states == Counter({"COMPLETED": len(ran), "CANCELLED": 1}), {j: study.jobs.get(j) for j in submitted}
    rules = Counter(re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", study.jobs[j][0]) for j in submitted)
    assert rules == Counter(ran) + Counter(train=1), rules  # SLURM ran what Snakemake reports, as itself
    assert {"synth", "prepare", "train", "evaluate", "benchmark", "summarize", "report"} <= set(rules)
    print("\nSLURM jobs (id comment state time): " + ", ".join(" ".join((j, *study.jobs[j])) for j in submitted))


def test_gpu_rules_ask_slurm_for_a_gpu_on_the_gpu_partition(study):
    calls = _SBATCH.findall(study.logs["rerun"])
    train = [c for c in calls if "--comment rule_train_" in c]
    cpu_only = [c for c in calls if "--comment rule_summarize" in c]
    assert train and cpu_only, calls
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    want = profile["set-resources"]["train"]
    for call in train:
        assert " --gpus=1" in call and f"-p {want['slurm_partition']}" in call, call
        # no plan.csv in this study: the train rule's runtime is a day (segmodels plan's time × 1.5 where there is one)
        assert "runtime" not in want and " -t 1440" in call and f"--mem {want['mem_mb']}" in call, call
        assert f"--cpus-per-task={CORES}" in call, call  # set-threads capped by --cores
    assert "--gpus" not in cpu_only[0] and f"-p {profile['default-resources']['slurm_partition']}" in cpu_only[0]
    print("\nsbatch for a train job:\n" + re.sub(r' --wrap=".*"$', ' --wrap="…"', train[0]))


def test_rerun_after_scancel_does_only_the_missing_work_and_resumes_training(study):
    assert "CANCELLED" in study.logs["cancelled run"]
    assert study.cancelled in study.missing
    assert 0 < study.cancelled_at < ITERATIONS and study.cancelled_at % CKPT_EVERY == 0
    stats = _job_stats(study.logs["rerun"])
    assert stats["train"] == len(study.missing), stats
    assert not {"synth", "prepare", "mlflow_init"} & set(stats), stats  # their outputs were complete

    logs = study.slurm / "logs" / "test" / study.cancelled / "seed0"
    logged = [int(n) for n in re.findall(r"^iter (\d+)/", (logs / "train.log").read_text(), re.MULTILINE)]
    assert logged and min(logged) > study.cancelled_at, logged  # started after the saved iteration
    assert max(logged) == ITERATIONS
    run = study.slurm / "results" / "test" / study.cancelled / "seed0"
    with (run / "train_log.csv").open() as fh:
        rows = [int(r["iteration"]) for r in csv.DictReader(fh)]
    assert rows == list(range(2, ITERATIONS + 1, 2))  # the rows before the cancel are kept, none twice
    assert (run / "mlflow_run_id").read_text().strip() == study.run_id  # the same MLflow run, resumed


def _tree(root: Path) -> Counter:
    """Relative paths of the files under ``root``, MLflow run ids masked (they differ between runs)."""
    files = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return Counter(re.sub(r"[0-9a-f]{32}", "<run>", f) for f in files)


def _assert_close(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, float) or isinstance(b, float):
        assert np.isclose(a, b, rtol=TOL, atol=TOL, equal_nan=True), f"{where}: {a} (SLURM) != {b} (local)"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_outputs_match_a_local_run_of_the_same_study(study):
    for folder in ("data", "results", "reports"):
        assert _tree(study.slurm / folder) == _tree(study.local / folder), folder
    packed = Path("data/packed") / study.config["data"]["dataset"] / "train" / "images.npy"
    assert (study.slurm / packed).read_bytes() == (study.local / packed).read_bytes()

    for model in study.config["models"]:
        run = Path("results/test") / model / "seed0"
        # The SLURM run's training was cancelled and resumed: the same numbers if resuming is exact.
        slurm, local = (json.loads((w / run / "metrics.json").read_text()) for w in (study.slurm, study.local))
        for key in ("miou", "macc", "allacc", "per_class"):  # not the timings and the device
            _assert_close(slurm[key], local[key], f"{model} metrics.json {key}")
        slurm_cm, local_cm = (np.load(w / run / "confusion.npy") for w in (study.slurm, study.local))
        assert np.abs(slurm_cm - local_cm).sum() <= TOL * local_cm.sum(), f"{model}: confusion matrices differ"
        with (study.slurm / run / "train_log.csv").open() as fa, (study.local / run / "train_log.csv").open() as fb:
            for ra, rb in zip(csv.DictReader(fa), csv.DictReader(fb), strict=True):
                assert ra["iteration"] == rb["iteration"]
                for key in ("loss", "lr"):
                    _assert_close(float(ra[key]), float(rb[key]), f"{model} train_log {key} @{ra['iteration']}")


def test_a_failing_job_fails_the_workflow_with_its_log(cluster, study):
    model = study.config["models"][-1]
    checkpoint = study.slurm / "results" / "test" / model / "seed0" / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")  # newer than metrics.json: evaluate runs again, and fails
    code = _run_slurm(cluster, study, "failing", 150)
    text = study.logs["failing"]
    print(f"\nseconds: failing run {study.seconds['failing']:.0f}")
    assert code not in (0, 124, 137), text[-4000:]  # failed, and on its own (not at the timeout)
    assert "Error in rule evaluate" in text, text[-4000:]
    log = (study.slurm / "logs" / "test" / model / "seed0" / "evaluate.log").read_text()
    error = next((line for line in log.splitlines() if "error" in line.lower()), "")
    assert "checkpoint.pt" in error, log  # the job names the file at fault ...
    assert error in text, text[-4000:]  # ... and Snakemake shows that log
    failed = [j for _, j in _SUBMITTED.findall(text)]
    assert failed and study.jobs[failed[0]][:2] == (f"rule_evaluate_wildcards_test_{model}_0", "FAILED")
