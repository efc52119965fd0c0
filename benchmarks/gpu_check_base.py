"""`make gpu-check`, shared parts: what it runs (sections, caps, models, modes) and its report (report.json, .md).

The entry is ``benchmarks/gpu_check.py``; its sections run as in its docstring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("gpu_check.py")  # the entry; its --worker mode runs in child processes
SIZE = (512, 1024)  # the study's 1024×512
# The train section's parts, in run order, each with its share of the section's cap (seconds): a part gets its share
# plus what the parts before it left unused (the first also what earlier sections left), never past the section's end.
TRAIN_PARTS = {"bench-train": 30, "micro-batch": 25, "plan": 20}
# seconds, in run order; they add up to 340 (gpu_check.py --budget): with the last section's 15 s of SIGTERM/SIGKILL
# grace the run stays under 6 minutes. The train section's micro-batch and plan parts (40 s) came out of the others:
# latency's compiled rows are the first the cap cuts, by design.
CAPS = {"environment": 75, "latency": 85, "train": sum(TRAIN_PARTS.values()), "ddp": 55, "snakemake": 50}
SECTIONS = tuple(CAPS)
STOP_GRACE_S = 15  # gpu_check_procs._stop: SIGTERM, 10 s, SIGKILL, 5 s
PEERS = ("deeplabv3_resnet50", "lraspp_mobilenet_v3_large")
BASELINE = PEERS[0]
# "cudagraphs" joins amp+channels_last, so its row differs from the one above it by the graph replay alone.
EAGER_MODES = ("fp32", "amp", "amp+channels_last", "amp+channels_last+cudagraphs")
COMPILE_MODE = "amp+channels_last+compile"
COMPILE_MODELS = ("resnet18-ppm", "mobilenetv3-ppm")  # the study's reference model and its smallest
COMPILE_NEEDS_S = 40  # a compile is not started with less of the section left: it could not finish
# The train section's model, batch and crop: the study's recipe (the built-in config: amp, channels_last, output
# stride 8) at the study's 512×1024
TRAIN_MODEL, TRAIN_BATCH = "resnet50-ppm", 8
TRAIN_CMD = ["bench-train", "--model", TRAIN_MODEL, "--crop", str(SIZE[0]), str(SIZE[1]), "--batch", str(TRAIN_BATCH),
             "--device", "cuda", "--iters", "5", "--warmup", "2", "--rounds", "2"]  # fmt: skip
# ~0.5 s a float32 step of resnet50-ppm at 8×512×1024: 12 steps per variant keep it well inside its cap
MICRO_BATCHES = (2, 4, 8)  # train.micro_batch of the batch of 8: train.accumulate 4, 2, 1
MICRO_WARMUP, MICRO_STEPS = 2, 3  # per micro-batch: untimed steps (cuDNN's algorithm search), then timed ones
MICRO_NEEDS_S = 4  # a micro-batch (or the auto search) is not started with less of the part left
PLAN_STEPS = 5  # segmodels plan --calibrate: timed steps, after calibrate_run's 3 warm-up ones
PLAN_MARGIN = 1.5  # segmodels.study.plan.planned_minutes' margin: a plan off by more misleads the scheduler
DDP_MODEL, DDP_ITERATIONS = "resnet18-ppm", 200
PLACEMENT_MODELS = ("resnet18-ppm", "mobilenetv2-fcn")
EXPERIMENT = "gpu-check"  # the placement study's results/{experiment}/


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


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check, {report['created']}", "", report["headline"], "",
             "| section | status | seconds | cap (s) | summary |", "|---|---|---:|---:|---|"]  # fmt: skip
    for s in report["sections"].values():
        lines.append(f"| {s['name']} | {s['status']} | {cell(s['wall_s'])} | {s['cap_s']:.0f} | "
                     f"{cell(s['summary'])} |")
    for s in report["sections"].values():
        lines += ["", f"## {s['name']}", "", f"**{s['status']}** in {cell(s['wall_s'])} s (cap {s['cap_s']:.0f} s)"]
        lines += [""] + [f"- {note}" for note in s["notes"]] if s["notes"] else []
        for t in s["tables"]:
            lines += ["", f"**{t['title']}**", "", "| " + " | ".join(t["columns"]) + " |",
                      "|" + "---|" * len(t["columns"])]  # fmt: skip
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t["rows"]]
        for b in s["blocks"]:
            lines += ["", f"**{b['title']}**", "", "```", b["text"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.runs import json_safe

    write_text_atomic(out / "report.json", json.dumps(json_safe(report), indent=1, allow_nan=False, default=str) + "\n")
    write_text_atomic(out / "report.md", markdown(report))

