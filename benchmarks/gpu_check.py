"""`make gpu-check`: one short check of a lent GPU machine, at most about 6 minutes on one H100/H200.

GPU machines come to this project now and then, for minutes; this is the first thing run on one. Each
section has its own time cap (plus what the sections before it left unused), runs its work in child processes
killed (with their process group) at the cap, and records any error in the report and goes on, so one broken
part never hides the others:

1. environment (85 s): GPUs, driver (nvidia-smi, else pynvml, else the CUDA driver API), CUDA, cuDNN, NCCL,
   torch, torchvision; and ``python -m pytest -q -m cuda tests`` (one of them compiles a model): pass/fail
   counts and the output's tail.
2. latency (105 s): every model of --config at 512×1024, batch 1, random weights, through
   ``segmodels.engine.benchmark.benchmark_model`` in the modes fp32, amp, amp+channels_last,
   amp+channels_last+cudagraphs, beside torchvision's deeplabv3_resnet50 and lraspp_mobilenet_v3_large timed
   the same way in the same run; amp+channels_last+compile for --compile-models only (compiling costs
   30-60 s a model), after every eager mode, so the cap cuts compiled rows first.
3. train (35 s): ``segmodels bench-train --model resnet50-ppm --crop 512 1024 --batch 8 --device cuda``.
4. ddp (60 s): 200 iterations of resnet18-ppm with the study's recipe on generated 512×1024 data,
   ``segmodels train --gpus N`` (torchrun, NCCL, one process per visible GPU); does the loss fall?
5. snakemake (55 s): a two-model study on tiny generated data under ``snakemake --resources gpu=N``; did
   train jobs that ran at the same time use distinct GPUs? (from the GPU lock files and nvidia-smi, sampled)

Writes results/gpu-check/report.json and report.md (one table per section; rewritten after each section,
so a run killed midway still leaves the finished sections) and each command's output under logs/ beside
them. Exits 1 when a section failed, errored or hit its cap, else 0 (also when a check was inconclusive, e.g.
no test carries the cuda marker); without a CUDA GPU it prints one line and exits 0 having run nothing.

    python benchmarks/gpu_check.py --plan              # what it would run, on any machine
    python benchmarks/gpu_check.py --only latency,ddp  # rerun some sections when time is short
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CAPS = {"environment": 85, "latency": 105, "train": 35, "ddp": 60, "snakemake": 55}  # seconds, in run order
SECTIONS = tuple(CAPS)
SIZE = (512, 1024)  # the study's 1024×512
PEERS = ("deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
BASELINE = PEERS[0]
# "cudagraphs" joins amp+channels_last, so its row differs from the one above it by the graph replay alone.
EAGER_MODES = ("fp32", "amp", "amp+channels_last", "amp+channels_last+cudagraphs")
COMPILE_MODE = "amp+channels_last+compile"
COMPILE_MODELS = ("resnet18-ppm", "mobilenetv3-ppm")  # the study's reference model and its smallest
COMPILE_NEEDS_S = 40  # a compile is not started with less of the section left: it could not finish
TRAIN_CMD = ["bench-train", "--model", "resnet50-ppm", "--crop", "512", "1024", "--batch", "8", "--device", "cuda",
             "--iters", "5", "--warmup", "2", "--rounds", "2"]  # fmt: skip
# ~0.5 s a float32 step of resnet50-ppm at 8×512×1024: 12 steps per variant keep it well inside its cap
DDP_MODEL, DDP_ITERATIONS = "resnet18-ppm", 200
PLACEMENT_MODELS = ("resnet18-ppm", "mobilenetv2-fcn")
EXPERIMENT = "gpu-check"  # the placement study's results/{experiment}/


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
    parser.add_argument("--budget", type=float, default=340.0,
                        help="seconds for the whole run: a section gets its cap plus what earlier sections left "
                        "unused, never more than what is left (default 340)")
    # 10 models × 4 eager modes × 35 forwards stay near a minute, cuDNN's algorithm search included
    parser.add_argument("--warmup", type=int, default=5, help="latency: untimed forwards per mode (default 5)")
    parser.add_argument("--repeats", type=int, default=30, help="latency: timed forwards per mode (default 30)")
    parser.add_argument("--compile-models", nargs="*", default=list(COMPILE_MODELS), metavar="NAME",
                        help="latency: models also timed with torch.compile (default: resnet18-ppm mobilenetv3-ppm)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the generated data and runs (printed path)")
    parser.add_argument("--worker", choices=("environment", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # epoch seconds
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or args.budget <= 0:
        parser.error("--warmup must be >= 0, --repeats >= 1 and --budget > 0")
    from segmodels.study.matrix import arch_of

    for name in args.compile_models:
        try:
            arch_of(name)
        except ValueError as exc:
            parser.error(f"--compile-models: {exc}")
    return args


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Section:
    name: str
    cap_s: float
    status: str = "ok"  # ok | fail | error | timeout | inconclusive | skipped
    summary: str = ""
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, str]] = field(default_factory=list)  # output tails, fenced in the markdown
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def worse(self, status: str, note: str | None = None) -> None:
        """Lower the status (never raise it: an error stays an error), with a note saying why."""
        order = ("ok", "skipped", "inconclusive", "fail", "timeout", "error")
        if order.index(status) > order.index(self.status):
            self.status = status
        if note:
            self.notes.append(note)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check, {report['created']}", "", report["headline"], "",
             "| section | status | seconds | cap (s) | summary |", "|---|---|---:|---:|---|"]  # fmt: skip
    for s in report["sections"].values():
        lines.append(f"| {s['name']} | {s['status']} | {_cell(s['wall_s'])} | {s['cap_s']:.0f} | "
                     f"{_cell(s['summary'])} |")
    for s in report["sections"].values():
        lines += ["", f"## {s['name']}", "", f"**{s['status']}** in {_cell(s['wall_s'])} s (cap {s['cap_s']:.0f} s)"]
        lines += [""] + [f"- {note}" for note in s["notes"]] if s["notes"] else []
        for t in s["tables"]:
            lines += ["", f"**{t['title']}**", "", "| " + " | ".join(t["columns"]) + " |",
                      "|" + "---|" * len(t["columns"])]  # fmt: skip
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t["rows"]]
        for b in s["blocks"]:
            lines += ["", f"**{b['title']}**", "", "```", b["text"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    from segmodels.atomic import write_text_atomic
    from segmodels.engine.evaluate import json_safe

    write_text_atomic(out / "report.json", json.dumps(json_safe(report), indent=1, allow_nan=False, default=str) + "\n")
    write_text_atomic(out / "report.md", markdown(report))


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Ran:
    rc: int | None  # None: killed at the cap
    wall_s: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return text[-chars:]


class Context:
    """One run: its temp folder, the visible GPUs, and the deadline of the section being run."""

    def __init__(self, args: argparse.Namespace, gpus: int, tmp: Path) -> None:
        self.args, self.gpus, self.tmp = args, gpus, tmp
        self.logs = args.out / "logs"
        self.deadline = time.time()
        self.env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                        SEGMODELS_GPU_LOCK_DIR=str(tmp / "gpu-locks"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                        PYTHONUNBUFFERED="1")  # fmt: skip
        # Our own lock folder: a stranger's stale claim in /tmp must not make our jobs wait out the cap.

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, cmd: list[str], name: str, *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Ran:
        """Run ``cmd`` until it ends or the section's deadline, output to logs/{name}.log; at the deadline its
        whole process group (torchrun's ranks, Snakemake's jobs, compile workers) gets SIGTERM, then SIGKILL."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        start = time.time()
        with log.open("w") as fh:
            fh.write("$ " + " ".join(map(str, cmd)) + "\n")
            fh.flush()
            proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env or self.env, start_new_session=True)  # fmt: skip
            try:
                rc: int | None = proc.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                rc = None
                _stop(proc)
            except BaseException:  # Ctrl-C reaches this process only: the child has its own session
                _stop(proc)
                raise
        return Ran(rc, time.time() - start, log)

    def segmodels(self, args: list[str], name: str) -> Ran:
        return self.run([sys.executable, "-m", "segmodels", *args], name)

    def worker(self, name: str, sec: Section, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """This script's ``--worker name`` in a child process (so this one never holds a CUDA context); its
        JSON, partial when it was killed at the cap."""
        out = self.tmp / f"worker-{name}.json"
        cmd = [sys.executable, __file__, "--worker", name, "--worker-out", out, "--config", self.args.config,
               "--deadline", f"{self.deadline - 5:.1f}", *extra]  # fmt: skip
        ran = self.run(cmd, f"worker-{name}")
        _check_ran(sec, ran, f"worker {name}")
        return json.loads(out.read_text()) if out.is_file() else {}


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL if it is still there 10 s later."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def _check_ran(sec: Section, ran: Ran, what: str) -> bool:
    if ran.timed_out:
        sec.worse("timeout", f"{what}: stopped at the section's cap after {ran.wall_s:.0f} s (log: {ran.log.name})")
    elif ran.rc != 0:
        sec.worse("error", f"{what}: exit status {ran.rc} (log: {ran.log.name})")
        sec.blocks.append({"title": f"{what}: end of its output", "text": ran.tail(2000)})
    return ran.rc == 0


def _nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-…=… --format=csv,noheader,nounits``; None without a working nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=15, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


class GpuSampler(threading.Thread):
    """Every half second: each GPU's memory in use (nvidia-smi), which processes nvidia-smi sees on which GPU,
    and which live process holds each GPU lock (segmodels.devices writes the claimant's pid into its lock file).
    Nothing else records the GPU of a one-GPU train job, so placement is judged from these samples."""

    def __init__(self, lock_dir: Path | None = None, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.lock_dir, self.period, self.stop = lock_dir, period, threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.cmdlines: dict[int, list[str]] = {}
        self.t0 = time.time()
        uuids = _nvidia_smi("--query-gpu=index,uuid") or []
        self.index_of = {row[1]: int(row[0]) for row in uuids if len(row) == 2}

    def run(self) -> None:
        while not self.stop.wait(self.period):
            with contextlib.suppress(Exception):  # a sampler hiccup must not end the section
                self.samples.append(self._sample())

    def _alive(self, pid: int) -> bool:
        try:
            self.cmdlines.setdefault(pid, Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))
            return True
        except OSError:
            return False

    def _sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": round(time.time() - self.t0, 2), "memory_mb": {}, "apps": [], "locks": {}}
        for row in _nvidia_smi("--query-gpu=index,memory.used") or []:
            sample["memory_mb"][int(row[0])] = float(row[1])
        for row in _nvidia_smi("--query-compute-apps=pid,gpu_uuid") or []:
            if len(row) == 2 and row[0].isdigit() and row[1] in self.index_of:
                sample["apps"].append([self.index_of[row[1]], int(row[0])])
                self._alive(int(row[0]))
        for lock in sorted(self.lock_dir.glob("gpu*.lock")) if self.lock_dir and self.lock_dir.is_dir() else []:
            text = lock.read_bytes()[:12].strip()
            if text.isdigit() and self._alive(int(text)):
                sample["locks"][lock.stem.removeprefix("gpu")] = int(text)
        return sample

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=10)

    def peak_memory_mb(self) -> dict[int, float]:
        peaks: dict[int, float] = {}
        for s in self.samples:
            for gpu, mb in s["memory_mb"].items():
                peaks[gpu] = max(peaks.get(gpu, 0.0), mb)
        return peaks


# ------------------------------------------------------------------------------------------------ workers


def _driver_api_version() -> str | None:
    """The CUDA driver API version libcuda reports (e.g. 12.8): the driver fact left when nvidia-smi is absent."""
    import ctypes

    try:
        version = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
    except OSError:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def worker_environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torchvision

    nccl = nvml_driver = None
    with contextlib.suppress(Exception):
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    with contextlib.suppress(Exception):  # pynvml is optional
        import pynvml

        pynvml.nvmlInit()
        nvml_driver = pynvml.nvmlSystemGetDriverVersion()
        nvml_driver = nvml_driver.decode() if isinstance(nvml_driver, bytes) else nvml_driver
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1)})  # fmt: skip
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nccl": nccl, "device_count": torch.cuda.device_count(),
            "driver_nvml": nvml_driver, "driver_api": _driver_api_version(), "devices": devices,
            "python": sys.version.split()[0]}  # fmt: skip


def _build(name: str, cfg: Any) -> Any:
    if name in PEERS:
        from torchvision.models import segmentation

        return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=cfg.model.num_classes)
    from segmodels.study.matrix import arch_of, run_config
    from segmodels.models import CASCADE_HEADS, build_model

    run = run_config(cfg, name)
    backbone, head = arch_of(name)
    return build_model(backbone, head, num_classes=run.model.num_classes, output_stride=run.model.output_stride,
                       aux=head in CASCADE_HEADS, pretrained=None, head_options=run.model.head_options)  # fmt: skip


def worker_latency(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """Eager modes of every model and peer first, then the compiled mode of --compile-models while time is left;
    ``save`` is called after each model so a kill at the cap keeps what was timed."""
    import torch

    from segmodels.study.config import load_config
    from segmodels.engine.benchmark import benchmark_model
    from segmodels.study.matrix import run_names

    cfg = load_config(args.config)
    result: dict[str, Any] = {"models": {}, "amp_dtype": cfg.benchmark.amp_dtype}
    work = [(n, EAGER_MODES) for n in [*run_names(cfg), *PEERS]] + [(n, (COMPILE_MODE,)) for n in args.compile_models]
    for name, modes in work:
        entry = result["models"].setdefault(name, {"modes": {}})
        need = COMPILE_NEEDS_S if modes == (COMPILE_MODE,) else 5
        if args.deadline - time.time() < need:
            reason = f"not started: under {need} s of the section's cap left"
            entry["modes"].update({m: {"status": "skipped", "reason": reason} for m in modes})
            continue
        print(f"{name}: {', '.join(modes)}", flush=True)  # the log shows where a kill at the cap fell
        try:
            timed = benchmark_model(_build(name, cfg), size=SIZE, batch_size=1, modes=list(modes), warmup=args.warmup,
                                    repeats=args.repeats, device="cuda", amp_dtype=cfg.benchmark.amp_dtype, log=None)
            entry.update(params_m=timed["params_m"], gflops=timed["gflops"])
            entry["modes"].update(timed["modes"])
            result.setdefault("device", timed["device"])
        except Exception as exc:  # eager inference failing is what this check is for: record it, time the rest
            reason = f"{type(exc).__name__}: {exc}"[:400]
            entry["modes"].update({m: {"status": "error", "reason": reason} for m in modes})
        torch.cuda.empty_cache()
        save(result)
    return result


def run_worker(args: argparse.Namespace) -> int:
    from segmodels.atomic import write_text_atomic
    from segmodels.engine.evaluate import json_safe

    def save(result: dict[str, Any]) -> None:
        write_text_atomic(args.worker_out, json.dumps(json_safe(result), default=str) + "\n")

    save(worker_latency(args, save) if args.worker == "latency" else worker_environment(args))
    return 0


# ----------------------------------------------------------------------------------------------- sections


def section_environment(ctx: Context, sec: Section) -> None:
    smi = _nvidia_smi("--query-gpu=index,name,driver_version,memory.total,pci.bus_id")
    info = ctx.worker("environment", sec)
    sec.data.update(torch=info, nvidia_smi=smi)
    if smi:
        sec.table("GPUs (nvidia-smi)", ["index", "name", "driver", "memory (MiB)", "bus id"], smi)
    else:
        sec.notes.append("nvidia-smi not available: GPUs as torch sees them, the driver from pynvml, else as the "
                         "CUDA driver API version")
        sec.table("GPUs (torch)", ["index", "name", "capability", "memory (GiB)"],
                  [[d["index"], d["name"], d["capability"], d["memory_gib"]] for d in info.get("devices", [])])
    driver = smi[0][2] if smi else info.get("driver_nvml") or f"CUDA driver API {info.get('driver_api')}"
    sec.table("Software", ["item", "version"], [
        ["driver", driver], ["CUDA (torch.version.cuda)", info.get("cuda")], ["cuDNN", info.get("cudnn")],
        ["NCCL", info.get("nccl")], ["torch", info.get("torch")], ["torchvision", info.get("torchvision")],
        ["python", info.get("python")], ["visible GPUs (torch)", info.get("device_count")]])  # fmt: skip
    ran = ctx.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], "pytest-cuda")
    tail = ran.tail()
    words = r"(\d+) (passed|failed|errors?|skipped|deselected)"
    summary = [line for line in tail.splitlines() if re.search(words, line)]  # pytest's last line: "3 passed, …"
    counts = {word.rstrip("s"): int(n) for n, word in re.findall(words, summary[-1] if summary else "")}
    sec.data["cuda_tests"] = {"rc": ran.rc, "counts": counts, "wall_s": ran.wall_s}
    sec.table("CUDA-marked tests (pytest -m cuda)", ["passed", "failed", "errors", "skipped", "exit status", "seconds"],
              [[counts.get("passed", 0), counts.get("failed", 0), counts.get("error", 0), counts.get("skipped", 0),
                "killed at cap" if ran.timed_out else ran.rc, round(ran.wall_s, 1)]])  # fmt: skip
    sec.blocks.append({"title": "pytest -m cuda: end of its output", "text": tail[-1500:]})
    if ran.rc == 5:
        sec.worse("inconclusive", "no test carries the cuda marker: nothing GPU-specific was tested")
    elif ran.timed_out:
        sec.worse("timeout", f"the CUDA tests were stopped at the section's cap after {ran.wall_s:.0f} s")
    elif ran.rc != 0:
        sec.worse("fail", f"CUDA tests: exit status {ran.rc}")
    gpus = smi[0][1] if smi else (info.get("devices") or [{}])[0].get("name")
    sec.summary = f"{ctx.gpus}× {gpus}, torch {info.get('torch')}, CUDA {info.get('cuda')}; cuda tests: " + (
        ", ".join(f"{n} {w}" for w, n in counts.items()) or f"exit {ran.rc}")


def section_latency(ctx: Context, sec: Section) -> None:
    extra = ("--warmup", str(ctx.args.warmup), "--repeats", str(ctx.args.repeats),
             "--compile-models", *ctx.args.compile_models)  # fmt: skip
    result = ctx.worker("latency", sec, extra)
    sec.data.update(result)
    models = result.get("models", {})
    base = models.get(BASELINE, {}).get("modes", {})
    rows, broken = [], []
    for name, entry in models.items():
        for mode, m in entry["modes"].items():
            ok = m.get("status") == "ok"
            ref = base.get(mode, {}).get("median_ms")
            ratio = m["median_ms"] / ref if ok and ref and name != BASELINE else None
            rows.append([name, mode, entry.get("params_m"), entry.get("gflops"), m.get("median_ms"), m.get("p90_ms"),
                         m.get("fps"), m.get("peak_memory_mb"), ratio,
                         "ok" if ok else f"{m.get('status')}: {m.get('reason', '')}"[:160]])  # fmt: skip
            if m.get("status") in ("error", "failed"):
                broken.append(f"{name} {mode}")
    sec.table(f"Latency at {SIZE[0]}x{SIZE[1]} (HxW), batch 1, random weights, {ctx.args.warmup} warm-up + "
              f"{ctx.args.repeats} timed forwards, amp = {result.get('amp_dtype')}",
              ["model", "mode", "params (M)", "GFLOPs", "median (ms)", "p90 (ms)", "FPS", "peak memory (MiB)",
               f"x {BASELINE} same mode", "status"], rows)  # fmt: skip
    sec.notes.append(f"{COMPILE_MODE} timed for {', '.join(ctx.args.compile_models) or 'no model'} only: "
                     f"torch.compile costs 30-60 s a model and the section has {sec.cap_s:.0f} s")  # fmt: skip
    sec.notes.append("peak memory: torch.cuda.max_memory_allocated of the mode's forward passes")
    if broken:
        sec.worse("fail", "failed: " + ", ".join(broken))
    timed = sum(r[-1] == "ok" for r in rows)
    sec.summary = f"{timed} of {len(rows)} model × mode rows timed"
    if broken:
        sec.summary += f"; failed: {', '.join(broken)}"


def section_train(ctx: Context, sec: Section) -> None:
    out = ctx.tmp / "bench_train.json"
    with GpuSampler() as sampler:
        ran = ctx.segmodels([*TRAIN_CMD, "--json", str(out)], "bench-train")
    _check_ran(sec, ran, "segmodels bench-train")
    sec.blocks.append({"title": "segmodels bench-train output", "text": ran.tail(1500)})
    if not out.is_file():
        return
    r = json.loads(out.read_text())
    sec.data.update(bench_train=r, nvidia_smi_peak_memory_mb=sampler.peak_memory_mb())
    rates = r["images_per_s"]
    peak = max(sampler.peak_memory_mb().values(), default=None)
    sec.table(f"{r['model']} training step, crop {r['crop'][0]}x{r['crop'][1]}, batch {r['batch_size']}, "
              f"median of {r['rounds']} rounds of {r['iters']} steps",
              ["speed features", "images/s", "ms per step", "settings"],
              [[k, rates[k], 1000 * r["batch_size"] / rates[k], ", ".join(f"{a}={b}" for a, b in
                                                                          r["settings"][k].items())]
               for k in ("on", "off")])  # fmt: skip
    sec.notes.append(f"speed features on/off: {r['speedup']:.2f}x")
    sec.notes.append(f"peak GPU memory in use (nvidia-smi, both variants, CUDA context and allocator cache "
                     f"included): {_cell(peak)} MiB")  # fmt: skip
    sec.notes.append("not measured: peak allocated memory per variant (bench-train does not report it); time "
                     "waiting for data per step here (bench-train times the step on batches already on the GPU); "
                     "the ddp section reports it from the real loader (train_log.csv data_wait_ms)")  # fmt: skip
    sec.summary = f"{rates['on']:.1f} images/s with speed features, {rates['off']:.1f} without ({r['speedup']:.2f}x)"


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
                tracking={"experiment": "segbench-gpu-check"})  # fmt: skip
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
            if not _check_ran(sec, ran, f"segmodels {cmd[0]}"):
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
    _check_ran(sec, ran, "snakemake")
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
                        "python -m pytest -q -m cuda tests"],
        "latency": [f"models ({args.config.name}): {', '.join(models)}",
                    f"torchvision peers (weights=None, weights_backbone=None): {', '.join(PEERS)}",
                    f"modes, every model and peer: {', '.join(EAGER_MODES)}",
                    f"mode {COMPILE_MODE}: {', '.join(args.compile_models) or 'none'} only (30-60 s a compile)",
                    f"{SIZE[0]}x{SIZE[1]}, batch 1, {args.warmup} warm-up + {args.repeats} timed forwards, "
                    "segmodels.engine.benchmark.benchmark_model on cuda"],
        "train": [f"{seg} {' '.join(TRAIN_CMD)} --json {tmp}/bench_train.json"],
        "ddp": [f"{seg} {' '.join(c)}" for c in ddp_commands(tmp, "N")]
        + [f"{tmp}/ddp/study.yaml: {args.config.name}'s recipe, {DDP_ITERATIONS} iterations of {DDP_MODEL}, "
           "random init, generated data at 512x1024; check: last logged loss < first"],
        "snakemake": [" ".join(snakemake_command(tmp / "snakemake", "N")),
                      f"study: config/test.yaml with {', '.join(PLACEMENT_MODELS)} on 128x256 generated data; check: "
                      "train jobs that overlap hold distinct GPUs (lock files, nvidia-smi); one GPU: not testable"],
    }  # fmt: skip
    for i, name in enumerate(args.only, start=1):
        lines.append(f"{i}. {name} (cap {CAPS[name]} s)")
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
        smi = _nvidia_smi("--query-gpu=name,driver_version") if os.environ.get("CUDA_VISIBLE_DEVICES") != "" else None
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
