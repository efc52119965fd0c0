"""``segmodels train`` and ``segmodels bench-train`` (argparse only; heavy imports inside)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "parse_overrides"]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.02", "model.pretrained=null"]`` → ``{"train.lr": 0.02, "model.pretrained": None}`` (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE (e.g. train.lr=0.02), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not a YAML scalar or list ({exc})") from exc
    return out


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    p.add_argument("--model", required=True, help="run to train: a run name of the study's matrix, "
                   "{backbone}-{head}[_tag...] (e.g. resnet18-ppm, resnet18-ppm_os16), or any {backbone}-{head}")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run (default 0)")
    p.add_argument("--out", type=Path, required=True, help="run folder, e.g. results/study/resnet18-ppm/seed0")
    p.add_argument("--data", type=Path, help="packed dataset folder (default data/packed/{data.dataset})")
    p.add_argument("--results", type=Path, help="results root of the study's run folders, where a teacher named by "
                   "run (train.distill_teacher) has its checkpoint of the same seed (default results)")  # fmt: skip
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a key of the run's config, value read as YAML (e.g. --set train.lr=0.02); repeatable",
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: train.device of the config)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the folder's resume state (last.pt, logs, MLflow run id) and train from scratch",
    )
    p.add_argument(
        "--gpus", type=int, default=1, metavar="N",
        help="train with N processes, one per GPU (DDP): claims N free GPUs, sets CUDA_VISIBLE_DEVICES and runs "
        "torchrun; without GPUs, N processes on the CPU (gloo). Default 1",
    )  # fmt: skip


def _torchrun_command(args: argparse.Namespace) -> list[str]:
    """This same training as ``torchrun --standalone --nproc_per_node N -m segmodels train ...``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus),
               "-m", "segmodels", "train", "--config", str(args.config), "--model", args.model,
               "--seed", str(args.seed), "--out", str(args.out)]  # fmt: skip
    for flag, value in (("--data", args.data), ("--results", args.results)):
        if value is not None:
            command += [flag, str(value)]
    for item in args.overrides or []:
        command += ["--set", item]
    if args.device:
        command += ["--device", args.device]
    if args.restart:
        command.append("--restart")
    return command


def _run_train(args: argparse.Namespace) -> int:
    import signal

    from segmodels.engine.run import resolve_run
    from segmodels.study.config import load_config
    from segmodels.study.matrix import with_overrides

    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["train.device"] = args.device
    # The run's effective config, then the flags given here on top.
    _, cfg, _ = resolve_run(load_config(args.config), model_name=args.model, fresh=True, where=str(args.config))
    if overrides:  # the command line has the last word, over the run's own overrides too
        cfg = with_overrides(cfg, overrides, where=f"{args.config} with --set")
    if args.gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {args.gpus}")
    if args.gpus > 1 and "LOCAL_RANK" not in os.environ:
        from segmodels.devices import run_on_gpus
        from segmodels.locks import HELD_ENV, held_env
        from segmodels.study.runs import job_locks

        # The run folder is held here, before waiting for GPUs, and stays held while torchrun (given the lock's
        # descriptor) lives; its processes are told so and do not take it again.
        with job_locks("train", trains=args.out) as locks:
            env = {**os.environ, HELD_ENV: held_env(*(lock.path for lock in locks))}
            return run_on_gpus(args.gpus, _torchrun_command(args), devices=[] if cfg.train.device == "cpu" else None,
                               pass_fds=[lock.fd for lock in locks if lock.fd is not None], env=env)  # fmt: skip
    if cfg.train.deterministic:
        # Before torch starts its thread pools: a pool that shrinks under load changes summation order.
        for var in ("OMP_DYNAMIC", "MKL_DYNAMIC"):
            os.environ.setdefault(var, "FALSE")

    def _terminate(signum: int, frame: Any) -> None:  # Snakemake and SLURM stop jobs with SIGTERM
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    from segmodels.engine.train import NonFiniteLossError, OutOfMemory, train
    from segmodels.study.runs import RunFolder

    try:
        result = train(cfg, args.model, seed=args.seed, out=args.out, data_dir=args.data, restart=args.restart,
                       results=args.results or "results")  # fmt: skip
    except (NonFiniteLossError, OutOfMemory) as exc:  # one line: what happened, what to change
        print(f"segmodels train: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    if result.val:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
        print(f"{args.model} seed {args.seed}: {result.iteration} iterations, {scores}")
    print(f"wrote {RunFolder(args.out).checkpoint}")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18-ppm", help="{backbone}-{head} (default resnet18-ppm)")
    p.add_argument("--config", type=Path, help="study config whose train/model sections to use (default: built-in)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop [height width] (default 512 1024)")
    p.add_argument("--batch", type=int, help="batch size (default: train.batch_size)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per round (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per variant before timing (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per variant; median shown (default 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--compile", action="store_true", help="also torch.compile the model in the fast variant")
    p.add_argument("--output-stride", type=int, choices=(8, 16, 32), help="default: model.output_stride")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def _run_bench(args: argparse.Namespace) -> int:
    from segmodels.engine.bench_train import main

    return main(args)


COMMANDS = {
    "train": (
        "Train one model and seed into a run folder (resumes after a kill; DDP on N GPUs with --gpus N).",
        _add_train,
        _run_train,
    ),
    "bench-train": (
        "Training throughput (images/s) with every speed feature on, and off, in one run.",
        _add_bench,
        _run_bench,
    ),
}
