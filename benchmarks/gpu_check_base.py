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

