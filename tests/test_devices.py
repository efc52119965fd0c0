"""One GPU per job: the lock mechanism, exercised with real processes on the CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from segmodels.devices import claim_slot, resolve_device

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
