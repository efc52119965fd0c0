"""A folder is written by one job at a time: real processes holding real flocks, refused at once with who holds them,
and a lock that dies with its process (SIGKILL included)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from segmodels.locks import HELD_ENV, held_env
from segmodels.study.runs import TRAIN_LOCK, WRITE_LOCK, FolderBusyError, job_locks

HOST = re.escape(socket.gethostname())

# A job holding its locks until a line (or the end) of its input; "held" once it has them, else the refusal.
HOLD = textwrap.dedent(
    """
    import sys
    from segmodels.study.runs import job_locks
    job, *folders = sys.argv[1:]
    given = {key: value for key, value in zip(("trains", "reads", "writes"), folders) if value != "-"}
    try:
        with job_locks(job, **given):
            print("held", flush=True)
            sys.stdin.readline()
    except OSError as exc:
        print(f"refused: {exc}", flush=True)
    """
)


@pytest.fixture
def hold():
    """Start a job that holds ``job_locks(job, trains=, reads=, writes=)``; its first line of output comes back."""
    started: list[subprocess.Popen] = []

    def start(job: str, *, trains: Path | None = None, reads: Path | None = None,
              writes: Path | None = None) -> tuple[subprocess.Popen, str]:  # fmt: skip
        folders = [str(p) if p is not None else "-" for p in (trains, reads, writes)]
        proc = subprocess.Popen([sys.executable, "-c", HOLD, job, *folders], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        started.append(proc)
        return proc, proc.stdout.readline().strip()

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def _refused(match: str, job: str, **folders: Path) -> None:
    with pytest.raises(FolderBusyError, match=match), job_locks(job, **folders):
        pass


def test_a_trainer_shuts_out_a_second_trainer_and_its_readers(tmp_path, hold):
    run = tmp_path / "run"
    trainer, said = hold("train", trains=run)
    assert said == "held"
    being_trained = rf"^run folder {re.escape(str(run))} is being trained by PID {trainer.pid} on {HOST}; "
    _refused(being_trained + r"wait for that training to end \(or stop it\)$", "train", trains=run)
    _refused(being_trained + "evaluate it when that training has ended$", "evaluate", reads=run, writes=run)
    _refused(being_trained + "benchmark it", "benchmark", reads=run, writes=run / "deploy")


def test_readers_of_a_run_shut_out_its_trainer_and_a_second_writer_of_their_folder(tmp_path, hold):
    run = tmp_path / "run"
    run.mkdir()
    evaluator, said = hold("evaluate", reads=run, writes=run)
    assert said == "held"
    _refused(rf"^run folder {re.escape(str(run))} is in use by jobs reading its checkpoint \(segmodels evaluate, "
             r"benchmark or deploy\); train it when they have ended$", "train", trains=run)  # fmt: skip
    _refused(rf"^folder {re.escape(str(run))} is being written by segmodels evaluate \(PID {evaluator.pid} on {HOST}\)"
             "; run this benchmark when it has ended$", "benchmark", reads=run, writes=run)  # fmt: skip
    # What the workflow runs side by side once a run is trained: its evaluation, each deployment path's score, and
    # the deployment timing, each writing a folder of its own.
    for writes in (run / "deploy" / "fp32", run / "deploy" / "onnx", run / "deploy"):
        assert hold("evaluate", reads=run, writes=writes)[1] == "held", writes
    _refused(rf"^folder {re.escape(str(run / 'deploy' / 'onnx'))} is being written by segmodels evaluate",
             "evaluate", reads=run, writes=run / "deploy" / "onnx")  # fmt: skip


def test_a_killed_holders_lock_is_gone_and_a_finished_one_leaves_no_file(tmp_path, hold):
    run = tmp_path / "run"
    trainer, said = hold("train", trains=run)
    assert said == "held" and (run / TRAIN_LOCK).read_text().startswith(f"pid {trainer.pid}\n")
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    with job_locks("train", trains=run):  # the kernel dropped the killed process's lock
        assert (run / TRAIN_LOCK).read_text() == f"pid {os.getpid()}\nhost {socket.gethostname()}\njob train\n"
    with job_locks("evaluate", reads=run, writes=run):
        assert (run / WRITE_LOCK).is_file()
    assert not (run / WRITE_LOCK).exists()  # an exclusive holder removes its file


def test_a_folder_made_for_a_lock_is_removed_when_the_job_leaves_it_empty(tmp_path):
    out = tmp_path / "results" / "study" / "seed0"
    with job_locks("train", trains=out):
        assert (out / TRAIN_LOCK).is_file()
    assert list(tmp_path.iterdir()) == []
    with job_locks("train", trains=out):
        (out / "checkpoint.pt").write_bytes(b"weights")
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]


def test_a_lock_file_its_last_holder_removed_is_never_held_by_two(tmp_path, hold, monkeypatch):
    """A job that opened the lock file just before its holder let go (and removed it) locks the file now at the
    path, not the removed one, so a third job is refused."""
    from segmodels import locks

    run = tmp_path / "run"
    first, said = hold("train", trains=run)
    assert said == "held"
    opened = locks._open

    def open_then_first_lets_go(path: Path, **kwargs) -> int:
        fd = opened(path, **kwargs)
        if first.poll() is None:
            first.stdin.write("done\n")
            first.stdin.flush()
            first.wait(timeout=60)
        return fd

    monkeypatch.setattr(locks, "_open", open_then_first_lets_go)
    with job_locks("train", trains=run) as held:
        assert os.fstat(held[0].fd).st_ino == (run / TRAIN_LOCK).stat().st_ino
        assert hold("train", trains=run)[1].startswith(f"refused: run folder {run} is being trained by PID {os.getpid()}")


def test_a_training_that_fails_to_build_its_model_leaves_no_folder(tmp_path, packed_data, mlflow_uri):
    from conftest import small_config

    from segmodels.engine.train import train

    cfg = small_config(model={"pretrained": str(tmp_path / "missing.pth")})
    out = tmp_path / "results" / "study" / "mobilenetv2-fcn" / "seed0"
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        train(cfg, "mobilenetv2-fcn", out=out, data_dir=packed_data)
    assert not (tmp_path / "results").exists()


def test_torchrun_ranks_take_no_lock_their_launcher_holds(tmp_path, hold, monkeypatch):
    from segmodels.engine.run import job_locks as engine_locks

    run = tmp_path / "run"
    launcher, said = hold("train", trains=run)
    assert said == "held"
    with pytest.raises(FolderBusyError, match=f"being trained by PID {launcher.pid}"), engine_locks("train", run):
        pass
    monkeypatch.setenv("RANK", "1")  # a rank other than 0 never takes the run's locks: rank 0 holds them
    with engine_locks("train", run):
        pass
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(HELD_ENV, held_env(run / TRAIN_LOCK))  # what `segmodels train --gpus N` hands torchrun
    with engine_locks("train", run):
        pass
    assert (run / TRAIN_LOCK).read_text().startswith(f"pid {launcher.pid}\n")  # still the launcher's


def _wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().startswith(f"pid {proc.pid}\n")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"no lock by {proc.pid} within {timeout} s"
        time.sleep(0.05)


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.slow
def test_a_second_segmodels_train_of_a_folder_is_refused_until_the_first_is_killed(tmp_path, packed_data, mlflow_uri):
    from conftest import small_config, write_config
    from mlflow import MlflowClient

    from segmodels.tracking import read_run_id

    cfg = small_config(train={"iterations": 4, "batch_size": 2, "crop_size": [32, 32], "log_every": 1,
                              "ckpt_every": 2}, tracking={"log_model": False})  # fmt: skip
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segmodels", "train", "--config", str(config), "--model", "mobilenetv2-fcn",
               "--out", str(out), "--data", str(packed_data)]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(out / TRAIN_LOCK, first)
        os.kill(first.pid, signal.SIGSTOP)  # frozen wherever it is, its lock held
        before = _state(out)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr[-3000:]
        assert second.stderr.strip().splitlines()[-1] == (
            f"segmodels train: error: run folder {out} is being trained by PID {first.pid} on {socket.gethostname()}; "
            "wait for that training to end (or stop it)"
        )
        assert _state(out) == before  # refused before it wrote anything, its MLflow run included
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "checkpoint.pt").is_file() and not (out / TRAIN_LOCK).exists()
    client = MlflowClient(mlflow_uri)
    run = client.get_run(read_run_id(out))
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2, 3, 4]  # each once


@pytest.mark.slow
def test_segmodels_train_on_several_processes_holds_the_folder_once_for_all(tmp_path, packed_data, mlflow_uri):
    """`--gpus 2` (torchrun, gloo on the CPU): the launcher holds the run folder for its processes, which neither
    take it again nor wait on it; a plain training of the folder meanwhile is refused, naming the launcher."""
    from conftest import small_config, write_config

    cfg = small_config(train={"iterations": 4, "batch_size": 2, "crop_size": [32, 32]}, tracking={"log_model": False})
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segmodels", "train", "--config", str(config), "--model", "mobilenetv2-fcn",
               "--out", str(out), "--data", str(packed_data)]  # fmt: skip
    launcher = subprocess.Popen([*command, "--gpus", "2", "--device", "cpu"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for_lock(out / TRAIN_LOCK, launcher)
        other = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert other.stderr.strip().splitlines()[-1] == (
            f"segmodels train: error: run folder {out} is being trained by PID {launcher.pid} on "
            f"{socket.gethostname()}; wait for that training to end (or stop it)"
        )
        assert launcher.wait(timeout=300) == 0, launcher.stderr.read()[-3000:]
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stderr.close()
    assert (out / "checkpoint.pt").is_file() and not (out / TRAIN_LOCK).exists()
