"""Two processes, DistributedDataParallel over gloo on the CPU: both ranks end with the same weights."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient

from segmodels.tracking import read_run_id


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, data: str, out: str, dump: str, tests_dir: str) -> None:
    sys.path.insert(0, tests_dir)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    torch.set_num_threads(1)  # two processes on two cores
    from segmodels.engine.train import train

    result = train(cfg, "mobilenetv2-fcn", seed=0, out=out, data_dir=data)
    torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, Path(dump) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_hold_identical_weights(tmp_path, packed_data, mlflow_uri):
    from conftest import small_config

    # Two micro-batches per step on each rank: the gradients are all-reduced once, after the last (no_sync before)
    cfg = small_config(train={"iterations": 4, "batch_size": 4, "accumulate": 2, "log_every": 2, "ckpt_every": 2})
    out = tmp_path / "run"
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, 2, port, cfg, str(packed_data), str(out), str(tmp_path),
                                          str(Path(__file__).parent)))  # fmt: skip
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["iteration"] == 4
    assert last["accumulation"] == {"micro_batch": 1, "accumulate": 2, "searched": False}
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)  # rank 0 wrote what both hold

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("segbench-test").experiment_id])
    assert [r.info.run_id for r in runs] == [read_run_id(out)]  # only rank 0 logs
    assert runs[0].data.tags["world_size"] == "2"
