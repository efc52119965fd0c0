"""`make gpu-check` sections 4-5, on generated studies: DDP training (does the loss fall?) and a two-model study
under Snakemake (did train jobs that ran at the same time use distinct GPUs?)."""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from gpu_check_base import DDP_ITERATIONS, DDP_MODEL, EXPERIMENT, PLACEMENT_MODELS, ROOT, SIZE, Section
from gpu_check_procs import Context, GpuSampler, check_ran


def ddp_study(config: Path, gpus: int) -> tuple[dict[str, Any], list[str]]:
    """The study's recipe (``config``'s model and train sections) cut to a short run on generated data."""
    data = yaml.safe_load(config.read_text())
    train = data.setdefault("train", {})
    recipe_batch = train.get("batch_size", 8)
    per_gpu = max(2, recipe_batch // gpus)  # PPM's 1×1 pooled branch cannot batch-normalise one image
    notes = [f"changed from the recipe: iterations {DDP_ITERATIONS}, random init (the machine reaches no network), "
             "generated data, validation only at the end"]  # fmt: skip
    if per_gpu * gpus != recipe_batch:
        notes.append(f"global batch {per_gpu * gpus} ({per_gpu} per GPU) instead of the recipe's {recipe_batch}")
    data.update(experiment="gpu-check-ddp", models=[DDP_MODEL], axes={},
                data={"dataset": "gpu-check", "source": "synthetic", "root": None, "size": list(SIZE)},
                tracking={"experiment": "segbench-gpu-check"}, deploy={"enabled": False})  # fmt: skip
    data.setdefault("model", {})["pretrained"] = None
    train.update(iterations=DDP_ITERATIONS, batch_size=per_gpu * gpus, log_every=20, val_every=0,
                 ckpt_every=DDP_ITERATIONS, warmup_iters=min(train.get("warmup_iters", 0), DDP_ITERATIONS // 10))
    data.setdefault("evaluate", {})["full_resolution"] = False
    return data, notes


def ddp_commands(tmp: Path, gpus: str) -> list[list[str]]:
    d = tmp / "ddp"
    return [["synth", "--out", str(d / "raw"), "--train", "16", "--val", "4", "--size", "1024", "2048", "--no-color",
             "--quiet"],
            ["prepare", "--source", "synthetic", "--root", str(d / "raw"), "--out", str(d / "packed"), "--size",
             str(SIZE[0]), str(SIZE[1]), "--quiet"],
            ["train", "--config", str(d / "study.yaml"), "--model", DDP_MODEL, "--out", str(d / "run"), "--data",
             str(d / "packed"), "--gpus", gpus]]  # fmt: skip


def section_ddp(ctx: Context, sec: Section) -> None:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.config import load_config

    study, notes = ddp_study(ctx.args.config, ctx.gpus)
    sec.notes += notes
    (ctx.tmp / "ddp").mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.tmp / "ddp" / "study.yaml", yaml.safe_dump(study, sort_keys=False))
    load_config(ctx.tmp / "ddp" / "study.yaml")  # a bad generated study fails here, with its key
    if ctx.gpus == 1:
        sec.notes.append("one GPU: one process without DDP (torchrun and NCCL need two or more)")
    with GpuSampler() as sampler:
        for cmd in ddp_commands(ctx.tmp, str(ctx.gpus)):
            ran = ctx.segmodels(cmd, f"ddp-{cmd[0]}")
            if not check_ran(sec, ran, f"segmodels {cmd[0]}"):
                return
    sec.blocks.append({"title": "segmodels train: end of its output", "text": ran.tail(1500)})
    with (ctx.tmp / "ddp" / "run" / "train_log.csv").open() as fh:
        log = list(csv.DictReader(fh))
    first, last = float(log[0]["loss"]), float(log[-1]["loss"])
    rates = [float(r["images_per_s"]) for r in log[1:] if r.get("images_per_s")]  # the first includes start-up
    # Time a step waited for its batch (the training loop's own clock): did the loader ever make the GPU wait?
    waits = [float(r["data_wait_ms"]) for r in log[1:] if r.get("data_wait_ms")]
    busy = sorted(g for g, mb in sampler.peak_memory_mb().items() if mb > 1024)
    sec.data.update(train_log=log, nvidia_smi_peak_memory_mb=sampler.peak_memory_mb())
    sec.table(f"{DDP_MODEL}, {DDP_ITERATIONS} iterations, {ctx.gpus} process(es), global batch "
              f"{study['train']['batch_size']}, crop {study['train']['crop_size']}",
              ["first logged loss", "last logged loss", "last / first", "images/s (median)",
               "data wait ms/step (median, max)", "final val mIoU", "GPUs with > 1 GiB in use"],
              [[first, last, last / first, statistics.median(rates) if rates else None,
                f"{statistics.median(waits):.2f}, {max(waits):.2f}" if waits else "not logged",
                float(log[-1]["val_miou"]) if log[-1].get("val_miou") else None,
                ", ".join(map(str, busy)) or "not sampled"]])  # fmt: skip
    if last >= first:
        sec.worse("fail", f"the loss did not fall: {first:.3f} at iteration {log[0]['iteration']}, {last:.3f} at "
                          f"{log[-1]['iteration']}")  # fmt: skip
    if any(s["memory_mb"] for s in sampler.samples) and len(busy) < ctx.gpus:
        sec.worse("fail", f"only GPU(s) {busy} held over 1 GiB while training on {ctx.gpus}")
    sec.summary = f"loss {first:.3f} -> {last:.3f} over {DDP_ITERATIONS} iterations on {ctx.gpus} GPU(s)"


def placement_study() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    data.update(experiment=EXPERIMENT, models=list(PLACEMENT_MODELS), tracking={"experiment": "segbench-gpu-check"},
                data={"dataset": "gpu-check-synth", "source": "synthetic", "size": [128, 256],
                      "synthetic": {"train": 8, "val": 4, "size": [128, 256], "seed": 0}})  # fmt: skip
    data["train"].update(iterations=100, batch_size=4, crop_size=[128, 128], log_every=20, ckpt_every=100)
    return data


def snakemake_command(work: Path, gpus: str) -> list[str]:
    exe = Path(sys.executable).parent / "snakemake"
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "snakemake"]
    targets = [f"results/{EXPERIMENT}/{m}/seed0/metrics.json" for m in PLACEMENT_MODELS]  # train and evaluate only
    return [*head, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile",
            str(work / "study.yaml"), "--cores", "all", "--resources", f"gpu={gpus}", "--show-failed-logs", *targets]


def _jobs(sampler: GpuSampler) -> dict[int, dict[str, Any]]:
    """The segmodels train/evaluate processes of the samples: GPU ids they claimed (lock files), GPUs nvidia-smi
    saw them on, and the sample times at which they held a claim."""
    jobs: dict[int, dict[str, Any]] = {}
    for pid, argv in sampler.cmdlines.items():
        argv = [a for a in argv if a]  # /proc/PID/cmdline ends with a NUL
        kind = next((a for a in argv if a in ("train", "evaluate")), None)
        if kind and any("segmodels" in a for a in argv):
            value = {flag: argv[argv.index(flag) + 1] for flag in ("--model", "--run") if flag in argv[:-1]}
            model = value.get("--model") or Path(value.get("--run", "?/?")).parent.name
            jobs[pid] = {"kind": kind, "model": model, "claimed": set(), "used": set(), "held": []}
    for s in sampler.samples:
        for gpu, pid in s["locks"].items():
            if pid in jobs:
                jobs[pid]["claimed"].add(gpu)
                jobs[pid]["held"].append(s["t"])
        for gpu, pid in s["apps"]:
            if pid in jobs:
                jobs[pid]["used"].add(gpu)
    return jobs


def _placement(sampler: GpuSampler, jobs: dict[int, dict[str, Any]]) -> tuple[str, str]:
    """(status, summary) of "train jobs that ran at the same time used distinct GPUs"."""
    trains = {pid for pid, j in jobs.items() if j["kind"] == "train"}
    together = [s for s in sampler.samples if len(trains & set(s["locks"].values())) > 1]
    if not together:
        return "inconclusive", "not tested: no two train jobs held a GPU at the same time"
    # Two claims can never name one GPU (an exclusive flock each), so the test is what the processes used.
    shared = [s["t"] for s in sampler.samples
              if len(on := [g for g, p in s["apps"] if p in trains]) > len(set(on))]
    comparable = all(g.isdigit() for pid in trains for g in jobs[pid]["claimed"])  # ids, not GPU UUIDs
    astray = sorted(pid for pid in trains if comparable and {str(g) for g in jobs[pid]["used"]} - jobs[pid]["claimed"])
    seen = any(jobs[pid]["used"] for pid in trains)
    span = f"{together[-1]['t'] - together[0]['t']:.0f} s"
    if shared or astray:
        return "fail", (f"train jobs shared a GPU (nvidia-smi) at {len(shared)} sample(s); processes on a GPU they "
                        f"had not claimed: {astray or 'none'}")  # fmt: skip
    if not seen:
        return "ok", (f"{len(trains)} train jobs held distinct GPU locks together for {span}; nvidia-smi showed none "
                      "of their processes (another pid namespace?), so what they used is not confirmed")  # fmt: skip
    return "ok", f"{len(trains)} train jobs ran together for {span}, each on its own claimed GPU (locks and nvidia-smi)"


def section_snakemake(ctx: Context, sec: Section) -> None:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.config import load_config

    work = ctx.tmp / "snakemake"
    write_text_atomic(work / "study.yaml", yaml.safe_dump(placement_study(), sort_keys=False))
    load_config(work / "study.yaml")  # a bad generated study fails here, with its key
    env = dict(ctx.env, CUDA_DEVICE_ORDER="PCI_BUS_ID")  # CUDA's GPU numbers = nvidia-smi's
    env.pop("MLFLOW_TRACKING_URI")  # the study's own store, under its working folder
    with GpuSampler(lock_dir=Path(env["SEGMODELS_GPU_LOCK_DIR"])) as sampler:
        ran = ctx.run(snakemake_command(work, str(ctx.gpus)), "snakemake", env=env)
    check_ran(sec, ran, "snakemake")
    jobs = _jobs(sampler)
    sec.data["jobs"] = {pid: {**j, "claimed": sorted(j["claimed"]), "used": sorted(j["used"])}
                        for pid, j in jobs.items()}
    sec.table("segmodels jobs seen while the study ran (claimed: GPU lock files; used: nvidia-smi)",
              ["job", "model", "pid", "claimed GPU", "used GPU (nvidia-smi)", "held from (s)", "to (s)"],
              [[j["kind"], j["model"], pid, ",".join(sorted(j["claimed"])) or None,
                ",".join(map(str, sorted(j["used"]))) or None, min(j["held"], default=None),
                max(j["held"], default=None)] for pid, j in sorted(jobs.items())])  # fmt: skip
    rows = []
    for m in PLACEMENT_MODELS:
        metrics = work / "results" / EXPERIMENT / m / "seed0" / "metrics.json"
        device = json.loads(metrics.read_text()).get("device", {}) if metrics.is_file() else {}
        log = work / "logs" / EXPERIMENT / m / "seed0" / "train.log"
        claimed = re.findall(r"claimed GPU\(s\) \S+", log.read_text(errors="replace")) if log.is_file() else []
        rows.append([m, device.get("name"), device.get("index"), "; ".join(claimed) or "none (a one-GPU job)"])
    sec.table("What the runs record", ["model", "evaluate: metrics.json device", "evaluate: GPU index",
                                       "train.log 'claimed GPU(s)'"], rows)  # fmt: skip
    sec.notes.append("a one-GPU train job records its GPU's name (MLflow tag 'device') but not its index; its GPU "
                     "comes from the lock files and nvidia-smi sampled here")  # fmt: skip
    if ctx.gpus == 1:
        sec.summary = "one GPU: placement not testable"
        sec.notes.append(f"{sec.summary}; the study {'ran' if ran.rc == 0 else 'did not finish'} on the one GPU")
        return
    status, sec.summary = _placement(sampler, jobs)
    sec.worse(status, sec.summary)

