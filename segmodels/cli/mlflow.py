"""The MLflow subcommands: ``mlflow-init`` (the store and experiment, before parallel jobs) and ``mlflow-sync``
(push what runs kept locally while the server was unreachable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["COMMANDS"]


def _add_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    p.add_argument("--out", type=Path, required=True, help="file that receives the experiment id")


def _run_init(args: argparse.Namespace) -> int:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.config import load_config
    from segmodels.tracking import ensure_experiment, tracking_uri

    cfg = load_config(args.config)
    uri = tracking_uri(cfg.tracking.uri)
    experiment_id = ensure_experiment(cfg.tracking.experiment, uri)
    write_text_atomic(args.out, f"{experiment_id}\n")
    print(f"MLflow experiment '{cfg.tracking.experiment}' is {experiment_id} at {uri}")
    return 0


def _add_sync(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders with mlflow_offline.jsonl")
    p.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")
    p.add_argument("--config", type=Path, help="take the tracking URI from this study config's tracking.uri")


def _run_sync(args: argparse.Namespace) -> int:
    from segmodels.study.runs import CHECKPOINT
    from segmodels.tracking import OFFLINE_FILE, sync_offline, tracking_uri

    uri = args.uri
    if uri is None and args.config is not None:
        from segmodels.study.config import load_config

        uri = load_config(args.config).tracking.uri
    uri = args.uri or tracking_uri(uri)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run folder not found: {run_dir}")
    status = 0
    for run_dir in args.run_dirs:
        if not (run_dir / OFFLINE_FILE).is_file():
            print(f"{run_dir}: nothing to push")
        else:
            try:
                run_id = sync_offline(run_dir, uri)
            except Exception as exc:  # one unreachable store or torn file must not stop the others
                print(f"{run_dir}: not pushed: {type(exc).__name__}: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"{run_dir}: pushed to run {run_id} at {uri}")
        if (run_dir / CHECKPOINT).is_file():  # a run that trained offline gets its MLflow model now (once)
            from segmodels.tracking import log_trained_model

            if logged := log_trained_model(run_dir, uri=uri):
                print(f"{run_dir}: its model is {logged['model_uri']}")
    return status


COMMANDS = {
    "mlflow-init": (
        "Create the MLflow store and the study's experiment once, before parallel jobs log to it.",
        _add_init,
        _run_init,
    ),
    "mlflow-sync": (
        "Push the MLflow records that runs kept locally (mlflow_offline.jsonl) while the server was unreachable, "
        "and log a trained run's model.",
        _add_sync,
        _run_sync,
    ),
}
