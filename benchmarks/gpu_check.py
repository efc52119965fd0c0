"""`make gpu-check`: one short check of a lent GPU machine, at most about 6 minutes on one H100/H200.

GPU machines come to this project now and then, for minutes; this is the first thing run on one. Each
section has its own time cap (plus what the sections before it left unused), runs its work in child processes
killed (with their process group) at the cap, and records any error in the report and goes on, so one broken
part never hides the others:

1. environment (75 s): GPUs, driver (nvidia-smi, else pynvml, else the CUDA driver API), CUDA, cuDNN, NCCL,
   torch, torchvision; and ``python -m pytest -q -m cuda tests/test_cuda.py`` (one of them compiles a model): pass/fail
   counts and the output's tail.
2. latency (85 s): every model of --config at 512×1024, batch 1, random weights, through
   ``segmodels.engine.benchmark.benchmark_model`` in the modes fp32, amp, amp+channels_last,
   amp+channels_last+cudagraphs, beside torchvision's deeplabv3_resnet50 and lraspp_mobilenet_v3_large timed
   the same way in the same run; amp+channels_last+compile for --compile-models only (compiling costs
   30-60 s a model), after every eager mode, so the cap cuts compiled rows first.
3. train (75 s, in three parts, each with its share and what the parts before it left unused): resnet50-ppm,
   batch 8, crop 512×1024, the built-in recipe (amp, channels_last, output stride 8).
   a. bench-train (30 s): ``segmodels bench-train --model resnet50-ppm --crop 512 1024 --batch 8 --device cuda``:
      images/s with the speed features on and off.
   b. micro-batch (25 s): the same step in a ``--worker micro_batch`` child with the batch run as micro-batches 2, 4
      and 8 (``train.accumulate`` 4, 2, 1): peak ``torch.cuda.max_memory_allocated`` (reset between them) and
      seconds per step each, an out-of-memory recorded as the answer; then ``train.micro_batch: auto``
      (``find_micro_batch``): the micro-batch it keeps, K, what it probed, the card's memory. Fails when a smaller
      micro-batch does not lower the peak, or the search errs.
   c. plan (20 s): ``segmodels plan --calibrate 5 --device cuda`` on that run as a one-model study; its seconds
      per step (plan.csv's train_hours × 3600 / iterations) beside bench-train's and the worker's; fails beyond
      the scheduler's 1.5× margin either way.
4. ddp (55 s): 200 iterations of resnet18-ppm with the study's recipe on generated 512×1024 data,
   ``segmodels train --gpus N`` (torchrun, NCCL, one process per visible GPU); does the loss fall?
5. snakemake (50 s): a two-model study on tiny generated data under ``snakemake --resources gpu=N``; did
   train jobs that ran at the same time use distinct GPUs? (from the GPU lock files and nvidia-smi, sampled)

Writes results/gpu-check/report.json and report.md (one table per section; rewritten after each section,
so a run killed midway still leaves the finished sections) and each command's output under logs/ beside
them; the train section's raw results in report.json under sections.train.data (bench_train, micro_batch: the
worker's rows and auto search, plan: plan.csv's row, the planned and measured s/step and their ratio). Exits 1 when a section failed, errored or hit its cap, else 0 (also when a check was inconclusive, e.g.
no test carries the cuda marker); without a CUDA GPU it prints one line and exits 0 having run nothing.

    python benchmarks/gpu_check.py --plan              # what it would run, on any machine
    python benchmarks/gpu_check.py --only latency,ddp  # rerun some sections when time is short
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# The parts, beside this file: gpu_check_base (what runs, the report), gpu_check_procs (child processes, the GPU
# sampler), gpu_check_workers (--worker mode), gpu_check_sections (1-3), gpu_check_studies (4-5).
from gpu_check_base import (
    CAPS,
    COMPILE_MODE,
    COMPILE_MODELS,
    DDP_ITERATIONS,
    DDP_MODEL,
    EAGER_MODES,
    MICRO_BATCHES,
    MICRO_STEPS,
    MICRO_WARMUP,
    PEERS,
    PLACEMENT_MODELS,
    PLAN_MARGIN,
    ROOT,
    SCRIPT,
    SECTIONS,
    SIZE,
    TRAIN_BATCH,
    TRAIN_CMD,
    TRAIN_MODEL,
    TRAIN_PARTS,
    Section,
    write_report,
)
from gpu_check_procs import Context, nvidia_smi
from gpu_check_sections import (
    micro_batch_args,
    plan_command,
    section_environment,
    section_latency,
    section_train,
)
from gpu_check_studies import ddp_commands, section_ddp, section_snakemake, snakemake_command
from gpu_check_workers import run_worker


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section {(bad or [text])[0]!r}; sections: {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]  # run order, whatever the order given


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true",
                        help="print the sections, models, modes and commands, run nothing (any machine)")
    parser.add_argument("--only", type=_sections, default=list(SECTIONS), metavar="SECTION[,SECTION]",
                        help=f"run these sections only (default all: {','.join(SECTIONS)})")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml",
                        help="study whose models are timed (default: config/config.yaml)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check",
                        help="folder of report.json, report.md and logs/ (default: results/gpu-check)")
    # The caps add up to 340 s: with a section's 15 s of SIGTERM/SIGKILL grace the run stays under 6 minutes.
    parser.add_argument("--budget", type=float, default=float(sum(CAPS.values())),
                        help="seconds for the whole run: a section gets its cap plus what earlier sections left "
                        f"unused, never more than what is left (default {sum(CAPS.values())})")
    # 10 models × 4 eager modes × 35 forwards stay near a minute, cuDNN's algorithm search included
    parser.add_argument("--warmup", type=int, default=5, help="latency: untimed forwards per mode (default 5)")
    parser.add_argument("--repeats", type=int, default=30, help="latency: timed forwards per mode (default 30)")
    parser.add_argument("--compile-models", nargs="*", default=list(COMPILE_MODELS), metavar="NAME",
                        help="latency: models also timed with torch.compile (default: resnet18-ppm mobilenetv3-ppm)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the generated data and runs (printed path)")
    parser.add_argument("--worker", choices=("environment", "latency", "micro_batch"), help=argparse.SUPPRESS)
    parser.add_argument("--micro-batches", type=int, nargs="+", default=list(MICRO_BATCHES), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # epoch seconds
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or args.budget <= 0:
        parser.error("--warmup must be >= 0, --repeats >= 1 and --budget > 0")
    from segmodels.models.catalog import arch_of

    for name in args.compile_models:
        try:
            arch_of(name)
        except ValueError as exc:
            parser.error(f"--compile-models: {exc}")
    return args


RUNNERS = {"environment": section_environment, "latency": section_latency, "train": section_train,
           "ddp": section_ddp, "snakemake": section_snakemake}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- plan


def plan(args: argparse.Namespace) -> str:
    from segmodels.study.config import load_config
    from segmodels.study.matrix import run_names

    tmp, seg = Path("$TMP"), "python -m segmodels"
    models = run_names(load_config(args.config))
    lines = [f"gpu-check plan: nothing is run. Report: {args.out}/report.json, report.md; budget {args.budget:.0f} s "
             "(a section: its cap + what earlier ones left unused); N = the visible GPUs (torch.cuda.device_count()); "
             "$TMP a fresh temp folder"]  # fmt: skip
    text = {
        "environment": ["nvidia-smi --query-gpu=index,name,driver_version,memory.total,pci.bus_id (else pynvml, "
                        "else torch); torch, torchvision, CUDA, cuDNN, NCCL versions",
                        "python -m pytest -q -m cuda tests/test_cuda.py"],
        "latency": [f"models ({args.config.name}): {', '.join(models)}",
                    f"torchvision peers (weights=None, weights_backbone=None): {', '.join(PEERS)}",
                    f"modes, every model and peer: {', '.join(EAGER_MODES)}",
                    f"mode {COMPILE_MODE}: {', '.join(args.compile_models) or 'none'} only (30-60 s a compile)",
                    f"{SIZE[0]}x{SIZE[1]}, batch 1, {args.warmup} warm-up + {args.repeats} timed forwards, "
                    "segmodels.engine.benchmark.benchmark_model on cuda"],
        "train": [f"a. bench-train: {seg} {' '.join(TRAIN_CMD)} --json {tmp}/bench_train.json",
                  f"b. micro-batch: python {SCRIPT.relative_to(ROOT)} --worker micro_batch "
                  f"{' '.join(micro_batch_args())} --worker-out {tmp}/worker-micro_batch.json: {TRAIN_MODEL}, batch "
                  f"{TRAIN_BATCH}, {SIZE[0]}x{SIZE[1]}, the built-in recipe (amp, channels_last) as train.micro_batch "
                  f"{', '.join(map(str, MICRO_BATCHES))} = train.accumulate "
                  f"{', '.join(str(TRAIN_BATCH // m) for m in MICRO_BATCHES)}: peak torch.cuda.max_memory_allocated "
                  f"and s/step each ({MICRO_WARMUP} warm-up + {MICRO_STEPS} timed steps); then train.micro_batch auto "
                  "(find_micro_batch): the micro-batch kept, K, what it probed, the card's memory",
                  f"c. plan: {seg} {' '.join(plan_command(tmp))}",
                  f"   {tmp}/plan/study.yaml: {TRAIN_MODEL} alone, bench-train's built-in config, random init; check: "
                  f"plan.csv's train_hours x 3600 / iterations within {PLAN_MARGIN}x of bench-train's s/step"],
        "ddp": [f"{seg} {' '.join(c)}" for c in ddp_commands(tmp, "N")]
        + [f"{tmp}/ddp/study.yaml: {args.config.name}'s recipe, {DDP_ITERATIONS} iterations of {DDP_MODEL}, "
           "random init, generated data at 512x1024; check: last logged loss < first"],
        "snakemake": [" ".join(snakemake_command(tmp / "snakemake", "N")),
                      f"study: config/test.yaml with {', '.join(PLACEMENT_MODELS)} on 128x256 generated data; check: "
                      "train jobs that overlap hold distinct GPUs (lock files, nvidia-smi); one GPU: not testable"],
    }  # fmt: skip
    for i, name in enumerate(args.only, start=1):
        parts = f"; parts: {', '.join(f'{k} {v} s' for k, v in TRAIN_PARTS.items())}" if name == "train" else ""
        lines.append(f"{i}. {name} (cap {CAPS[name]} s{parts})")
        lines += [f"   {t}" for t in text[name]]
    return "\n".join(lines)



# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.plan:
        print(plan(args))
        return 0
    import torch

    if not torch.cuda.is_available():
        smi = nvidia_smi("--query-gpu=name,driver_version") if os.environ.get("CUDA_VISIBLE_DEVICES") != "" else None
        hint = (f"; yet nvidia-smi lists {len(smi)} GPU(s), driver {smi[0][1]}: torch {torch.__version__} is built for "
                f"CUDA {torch.version.cuda}, which may need a newer driver") if smi else ""  # fmt: skip
        print(f"gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False){hint}; nothing run")
        return 0
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="segbench-gpu-check-"))
    ctx = Context(args, torch.cuda.device_count(), tmp)
    report: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpus": ctx.gpus,
                              "budget_s": args.budget, "argv": sys.argv[1:], "tmp": str(tmp), "sections": {}}
    for i, name in enumerate(args.only, start=1):
        elapsed = time.time() - start
        saved = sum(CAPS[n] for n in args.only[: i - 1]) - elapsed  # what the sections so far did not use
        sec = Section(name, min(CAPS[name] + max(0.0, saved), args.budget - elapsed))
        if sec.cap_s < 10:
            sec.worse("skipped", f"not run: {max(0.0, sec.cap_s):.0f} s left for it of the run's {args.budget:.0f} s")
        else:
            print(f"[{i}/{len(args.only)}] {name} (cap {sec.cap_s:.0f} s) ...", flush=True)
            ctx.deadline = time.time() + sec.cap_s
            t0 = time.time()
            try:
                RUNNERS[name](ctx, sec)
            except Exception as exc:  # one broken section must not cost the others their turn
                sec.worse("error", f"{type(exc).__name__}: {exc}"[:1000])
            sec.wall_s = time.time() - t0
        report["sections"][name] = asdict(sec)
        report["wall_s"] = time.time() - start
        report["headline"] = (f"{ctx.gpus} GPU(s); {len(report['sections'])} of {len(args.only)} section(s) in "
                              f"{report['wall_s']:.0f} s; budget {args.budget:.0f} s")  # fmt: skip
        write_report(args.out, report)
        print(f"    {sec.status}: {sec.summary or '; '.join(sec.notes)[:300]}", flush=True)
    if args.keep_tmp:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out / 'report.md'} and report.json ({time.time() - start:.0f} s)")
    return 1 if any(s["status"] in ("fail", "error", "timeout") for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
