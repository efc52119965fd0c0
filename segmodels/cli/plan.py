"""``segmodels plan``: what a study will cost before it runs (:mod:`segmodels.study.plan`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["COMMANDS"]


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the study runs on, for its wall time (default 1)")
    p.add_argument("--calibrate", type=int, default=20, metavar="STEPS",
                   help="timed training steps per run without a recorded cost.json on this device (default 20); "
                        "0: recorded costs only")  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default): the device planned for")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--out", type=Path, help="plan CSV (default: results/{experiment}/plan.csv)")


def _hours(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value * 60:.1f} min" if value < 1 else f"{value:.2f} h"


def _run_plan(args: argparse.Namespace) -> int:
    import torch

    from segmodels.devices import resolve_device
    from segmodels.study.config import load_config
    from segmodels.study.plan import plan_study, totals, write_plan

    if args.gpus < 1 or args.calibrate < 0:
        raise ValueError(f"--gpus must be at least 1 and --calibrate at least 0, got {args.gpus}, {args.calibrate}")
    cfg = load_config(args.config)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()

    def calibrate(run_cfg, model):
        from segmodels.engine.calibrate import calibrate_run

        print(f"calibrating {model}: {args.calibrate} steps on {name} ...", flush=True)
        raw = tuple(cfg.data.synthetic.size) if cfg.data.source == "synthetic" else (1024, 2048)
        return calibrate_run(run_cfg, model, device, steps=args.calibrate, raw_size=raw)

    rows = plan_study(cfg, args.results, calibrate=calibrate if args.calibrate else None, device=name,
                      params=_params)  # fmt: skip
    total = totals(rows, cfg, args.gpus)
    print(f"\nplan of study '{cfg.experiment}' on {name}, {args.gpus} GPU(s); per seed:")
    print(f"  {'run':<28} {'train':>10} {'from':>10} {'evaluate':>10} {'peak GPU':>9} {'micro-batch':>12}")
    for r in rows:
        peak = f"{r.peak_gpu_gb:.1f} GB" if r.peak_gpu_gb is not None else "–"
        micro = f"{r.micro_batch}×{r.accumulate}" if r.micro_batch else "–"
        print(f"  {r.model:<28} {_hours(r.train_hours):>10} {r.train_source:>10} {_hours(r.eval_hours):>10} "
              f"{peak:>9} {micro:>12}")  # fmt: skip
    seeds = len(cfg.seeds)
    print(f"total: {_hours(total['gpu_hours'])} of device time for {len(rows)} runs × {seeds} seed(s), "
          f"{_hours(total['wall_hours'])} wall on {args.gpus} GPU(s); disk {_size(total['disk_gb'])} "
          f"(packed data {_size(total['packed_gb'])})")  # fmt: skip
    out = args.out or args.results / cfg.experiment / "plan.csv"
    write_plan(rows, out)
    print(f"wrote {out}")
    return 0


def _size(gb: float) -> str:
    return f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1000:.1f} MB"


def _cpu_name() -> str:
    from segmodels.devices import cpu_name

    return cpu_name()


def _params(run_cfg, model: str) -> int:
    """The run's parameter count; a micro-batch its training would refuse (one image through a BatchNorm after a
    global pooling) raises ValueError here, whether its cost is recorded or calibrated."""
    from segmodels.engine.micro_batch import accumulation, check_micro_batch
    from segmodels.engine.run import num_classes_of
    from segmodels.models import build_model, count_parameters
    from segmodels.models.catalog import arch_of
    from segmodels.study.schema import effective_norm

    backbone, head = arch_of(model)
    m, t = run_cfg.model, run_cfg.train
    net = build_model(backbone, head, num_classes=num_classes_of(run_cfg), output_stride=m.output_stride, aux=m.aux,
                      pretrained=None, head_options=m.head_options, norm=effective_norm(run_cfg))  # fmt: skip
    acc = accumulation(t.micro_batch, t.accumulate, t.batch_size)
    if acc is not None:
        check_micro_batch(net, acc, model)
    return count_parameters(net)


COMMANDS = {
    "plan": (
        "What the study will cost before it runs: per run the training time (recorded cost.json, else a timed "
        "calibration on this device), evaluation time, peak GPU memory, disk; the wall time on --gpus GPUs "
        "(results/{experiment}/plan.csv).",
        _add_plan,
        _run_plan,
    ),
}
