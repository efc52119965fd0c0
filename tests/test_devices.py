"""One GPU per job: the lock mechanism, exercised with real processes on the CPU."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from segmodels.devices import (
    claim_devices,
    claim_slot,
    default_lock_dir,
    release_devices,
    resolve_device,
    run_on_gpus,
)

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segmodels.devices import claim_slot
    print(claim_slot(int(sys.argv[1]), Path(sys.argv[2]), wait_s=0), flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _holder(count, lock_dir, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(count), str(lock_dir), str(seconds)], stdout=subprocess.PIPE, text=True
    )


def test_concurrent_jobs_get_distinct_slots_and_release_on_exit(tmp_path):
    first = _holder(3, tmp_path, 30)
    second = _holder(3, tmp_path, 30)
    try:
        first_slot, second_slot = int(first.stdout.readline()), int(second.stdout.readline())
        assert {first_slot, second_slot} == {0, 1}
        assert claim_slot(3, tmp_path, wait_s=0) == 2  # the remaining one
        with pytest.raises(TimeoutError):
            claim_slot(3, tmp_path, wait_s=0)
        first.kill()  # SIGKILL: the kernel still drops the lock
        first.wait()
        assert claim_slot(3, tmp_path, wait_s=2, poll_s=0.05) == first_slot
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_all_claimed_times_out(tmp_path):
    holder = _holder(1, tmp_path, 30)
    try:
        assert holder.stdout.readline().strip() == "0"
        with pytest.raises(TimeoutError, match="claimed by other jobs"):
            claim_slot(1, tmp_path, wait_s=0.2, poll_s=0.05)
    finally:
        holder.kill()
        holder.wait()


def test_killed_job_frees_its_slot(tmp_path):
    holder = _holder(1, tmp_path, 30)
    assert holder.stdout.readline().strip() == "0"
    holder.kill()
    holder.wait()
    assert claim_slot(1, tmp_path, wait_s=2, poll_s=0.05) == 0


def test_resolve_device_on_cpu():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")


# --- shared hosts: nothing outside the lock folder is ever followed, truncated or written -------------------


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "gpu0.lock").symlink_to(victim)
    with pytest.raises(PermissionError, match="symlink"):
        claim_devices(1, ["0"], locks, wait_s=0)
    assert victim.read_text() == "precious\n"


def test_an_existing_lock_file_is_not_truncated(tmp_path):
    (tmp_path / "gpu0.lock").write_text("x" * 100)
    claim_devices(1, ["0"], tmp_path, wait_s=0)
    try:
        text = (tmp_path / "gpu0.lock").read_text()
        assert len(text) == 100 and text.split()[0] == str(os.getpid())  # the pid over the start, nothing cut
    finally:
        release_devices()


def test_a_hard_linked_lock_file_is_locked_but_never_written(tmp_path):
    other = tmp_path / "elsewhere.txt"
    other.write_text("someone else's data\n")
    locks = tmp_path / "locks"
    locks.mkdir()
    os.link(other, locks / "gpu0.lock")
    claim_devices(1, ["0"], locks, wait_s=0)
    release_devices()
    assert other.read_text() == "someone else's data\n"


def test_default_lock_folder_is_per_user_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMODELS_GPU_LOCK_DIR", raising=False)
    folder = default_lock_dir()
    assert str(os.geteuid()) in folder.name
    claim_devices(1, ["fake-gpu"], folder, wait_s=0)
    release_devices()
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0


def test_a_default_lock_folder_that_is_a_symlink_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMODELS_GPU_LOCK_DIR", raising=False)
    target = tmp_path / "planted"
    target.mkdir()
    fake_default = tmp_path / "segmodels-gpu-locks-me"
    fake_default.symlink_to(target)
    monkeypatch.setattr("segmodels.devices.default_lock_dir", lambda: fake_default)
    with pytest.raises(PermissionError, match="symlink"):
        claim_devices(1, ["0"], fake_default, wait_s=0)
    assert not list(target.iterdir())


# --- several GPUs for one job: all or none, handed to the launched processes ------------------------------

HOLD_SET = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segmodels.devices import claim_devices
    print(claim_devices(int(sys.argv[1]), sys.argv[3].split(","), Path(sys.argv[2]), wait_s=0), flush=True)
    time.sleep(30)
    """
)

FAKE = ["3", "5", "GPU-8f1e", "7"]  # CUDA_VISIBLE_DEVICES may hold indices or UUIDs


def test_multi_gpu_claim_skips_devices_held_elsewhere(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SET, "1", str(tmp_path), ",".join(FAKE)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "[0]"  # another job holds device "3"
        assert claim_devices(2, FAKE, tmp_path, wait_s=0) == [1, 2]
        with pytest.raises(TimeoutError, match="fewer than 2 of 4"):
            claim_devices(2, FAKE, tmp_path, wait_s=0)  # only "7" is left: take none of it
        assert claim_devices(1, FAKE, tmp_path, wait_s=0) == [3]  # the failed claim released "7" again
    finally:
        release_devices()
        holder.kill()
        holder.wait()


def test_asking_for_more_gpus_than_the_machine_has_is_refused(tmp_path):
    with pytest.raises(ValueError, match="asked for 5 GPUs; this machine shows 4"):
        claim_devices(5, FAKE, tmp_path, wait_s=0)


# The launched command checks what it was given: the devices in CUDA_VISIBLE_DEVICES, and their locks held
# (a fresh open of each lock file cannot take it), then exits with the code it is told.
CHILD = textwrap.dedent(
    """
    import fcntl, os, sys
    from pathlib import Path
    given = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    held = []
    for device in given:
        fd = os.open(Path(sys.argv[1]) / f"gpu{device.replace(':', '_')}.lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
    print(",".join(given), all(held), flush=True)
    sys.exit(int(sys.argv[2]))
    """
)


@pytest.mark.parametrize("exit_code", [0, 3])
def test_run_on_gpus_hands_the_claimed_devices_to_the_launcher_and_frees_them(tmp_path, capfd, exit_code):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SET, "1", str(tmp_path), ",".join(FAKE)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "[0]"
        code = run_on_gpus(2, [sys.executable, "-c", CHILD, str(tmp_path), str(exit_code)], devices=FAKE,
                           lock_dir=tmp_path, wait_s=0)  # fmt: skip
        assert code == exit_code
        assert "5,GPU-8f1e True" in capfd.readouterr().out
        # Success or failure, the job gave both devices back.
        assert claim_devices(3, FAKE, tmp_path, wait_s=0) == [1, 2, 3]
    finally:
        release_devices()
        holder.kill()
        holder.wait()


def test_train_with_several_gpus_launches_torchrun_with_the_same_arguments():
    from segmodels.cli import build_parser
    from segmodels.cli.train import _torchrun_command

    args = build_parser().parse_args(["train", "--config", "c.yaml", "--model", "resnet18-ppm", "--out", "r/x y",
                                      "--set", "train.lr=0.02", "--gpus", "4", "--restart"])  # fmt: skip
    command = _torchrun_command(args)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    tail = command[command.index("segmodels") :]
    assert tail == ["segmodels", "train", "--config", "c.yaml", "--model", "resnet18-ppm", "--seed", "0",
                    "--out", "r/x y", "--set", "train.lr=0.02", "--restart"]  # fmt: skip
    assert "--gpus" not in tail  # the processes it starts train on one GPU each
