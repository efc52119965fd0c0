"""`make gpu-check` sections 1-3: environment (versions and the CUDA-marked tests), latency, and training: its
throughput, its peak memory and time per micro-batch with the ``train.micro_batch: auto`` search, and
``segmodels plan``'s calibration against the measured step."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from gpu_check_base import (
    BASELINE,
    COMPILE_MODE,
    MICRO_BATCHES,
    PLAN_MARGIN,
    PLAN_STEPS,
    SIZE,
    TRAIN_BATCH,
    TRAIN_CMD,
    TRAIN_MODEL,
    TRAIN_PARTS,
    Section,
    cell,
)
from gpu_check_procs import Context, GpuSampler, check_ran, nvidia_smi

PART_NEEDS_S = 10  # a part of the train section is not started with less left


def section_environment(ctx: Context, sec: Section) -> None:
    smi = nvidia_smi("--query-gpu=index,name,driver_version,memory.total,pci.bus_id")
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
    # tests/test_cuda.py alone holds them: collecting the whole folder imports the dev-only packages other tests
    # use, which a node's environment (make wheelhouse NODE=1) leaves out
    ran = ctx.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], "pytest-cuda")
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


def part_deadlines(start: float, end: float, parts: dict[str, float]) -> dict[str, float]:
    """When each part of a section must end: its share plus what the parts before it left unused (the section's
    time beyond the shares, carried from earlier sections, to the first), never past ``end``."""
    extra, at, out = max(0.0, end - start - sum(parts.values())), start, {}
    for name, share in parts.items():
        at += share
        out[name] = min(end, at + extra)
    return out


def section_train(ctx: Context, sec: Section) -> None:
    """bench-train, then the micro-batch worker, then ``segmodels plan``, each with its part of the cap; a part that
    breaks is recorded and the next one runs."""
    end = ctx.deadline
    deadlines = part_deadlines(time.time(), end, TRAIN_PARTS)
    found: dict[str, Any] = {}
    runs = {"bench-train": lambda: _bench_train(ctx, sec), "micro-batch": lambda: _micro_batch(ctx, sec),
            "plan": lambda: _plan_calibration(ctx, sec, found.get("bench-train"),
                                              found.get("micro-batch"))}  # fmt: skip
    try:
        for name, run in runs.items():
            ctx.deadline = deadlines[name]
            if ctx.left() < PART_NEEDS_S:
                sec.worse("skipped", f"{name}: not run, {max(0.0, ctx.left()):.0f} s left for it")
                continue
            try:
                found[name] = run()
            except Exception as exc:  # one broken part must not cost the others their turn
                sec.worse("error", f"{name}: {type(exc).__name__}: {exc}"[:1000])
    finally:
        ctx.deadline = end
    sec.summary = "; ".join(found[k][1] for k in runs if found.get(k) and found[k][1])


def _bench_train(ctx: Context, sec: Section) -> tuple[dict[str, Any], str] | None:
    out = ctx.tmp / "bench_train.json"
    with GpuSampler() as sampler:
        ran = ctx.segmodels([*TRAIN_CMD, "--json", str(out)], "bench-train")
    check_ran(sec, ran, "segmodels bench-train")
    sec.blocks.append({"title": "segmodels bench-train output", "text": ran.tail(1500)})
    if not out.is_file():
        return None
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
                     f"included): {cell(peak)} MiB")  # fmt: skip
    sec.notes.append("bench-train reports no peak allocated memory per variant: the micro-batch table has it, for "
                     "the speed features on; not measured: time waiting for data per step here (bench-train times "
                     "the step on batches already on the GPU); the ddp section reports it from the real loader "
                     "(train_log.csv data_wait_ms)")  # fmt: skip
    return r, f"{rates['on']:.1f} images/s with speed features, {rates['off']:.1f} without ({r['speedup']:.2f}x)"


# ------------------------------------------------------------------------------- micro-batches, micro_batch: auto


def _micro_batch(ctx: Context, sec: Section) -> tuple[dict[str, Any], str] | None:
    result = ctx.worker("micro_batch", sec, micro_batch_args())
    if not result:
        return None
    sec.data["micro_batch"] = result
    return result, report_micro_batch(sec, result)


def micro_batch_args(micros: tuple[int, ...] = MICRO_BATCHES) -> tuple[str, ...]:
    return ("--micro-batches", *map(str, micros))


def _gib(mib: float | None) -> float | None:
    return None if mib is None else mib / 1024


def report_micro_batch(sec: Section, r: dict[str, Any]) -> str:
    """The micro-batch worker's result as two tables and its checks: a step that broke other than by running out
    of memory fails, so do micro-batches whose peak memory does not grow with the micro-batch, and an auto search
    that errs or finds nothing that fits. Returns the summary's part."""
    rows = r.get("rows", [])
    sec.table(f"{r.get('model')}: batch {r.get('batch')} as micro-batches (train.micro_batch, train.accumulate), "
              f"crop {r['crop'][0]}x{r['crop'][1]}, amp {r.get('amp_dtype') or 'off'}, channels_last "
              f"{r.get('channels_last')}; {r.get('warmup')} warm-up + {r.get('steps')} timed steps each, on "
              f"{r.get('device')}",
              ["micro-batch", "accumulate", "peak allocated, timed steps (GiB)", "peak allocated, warm-up (GiB)",
               "peak reserved (GiB)", "ms per step", "images/s", "status"],
              [[m["micro_batch"], m["accumulate"], _gib(m.get("peak_allocated_mib")), _gib(m.get("peak_warmup_mib")),
                _gib(m.get("peak_reserved_mib")), 1000 * m["step_s"] if m.get("step_s") else None,
                m.get("images_per_s"),
                m["status"] if m["status"] == "ok" else f"{m['status']}: {m.get('reason', '')}"[:160]]
               for m in rows])  # fmt: skip
    sec.notes.append("peak allocated: torch.cuda.max_memory_allocated, reset before each micro-batch's warm-up "
                     "(cuDNN's algorithm search included) and again before its timed steps (the steady state: "
                     "weights, gradients, momentum, one micro-batch's activations)")  # fmt: skip
    broken = [f"micro-batch {m['micro_batch']}: {m.get('reason')}" for m in rows if m["status"] == "error"]
    if broken:
        sec.worse("fail", "training step failed: " + "; ".join(broken))
    for m in rows:
        if m["status"] == "out of memory":
            sec.notes.append(f"micro-batch {m['micro_batch']} does not fit this card ({r.get('memory_gib')} GiB)")
    measured = sorted((m["micro_batch"], m["peak_allocated_mib"]) for m in rows
                      if m["status"] == "ok" and m.get("peak_allocated_mib") is not None)  # fmt: skip
    flat = [f"{a[0]} -> {b[0]}" for a, b in zip(measured, measured[1:], strict=False) if b[1] <= a[1]]
    if flat:
        sec.worse("fail", "a smaller micro-batch did not lower the peak memory (micro-batch " + ", ".join(flat) + ")")
    auto = r.get("auto") or {}
    tried = ", ".join(f"{t['micro_batch']}: {t['outcome']}" + (f" ({_gib(t['peak_allocated_mib']):.1f} GiB)"
                                                              if t.get("peak_allocated_mib") is not None else "")
                      for t in auto.get("tried", []))  # fmt: skip
    sec.table(f"train.micro_batch auto (find_micro_batch) for the batch of {r.get('batch')}: the largest divisor "
              f"whose forward and backward leave {100 * r.get('headroom', 0.1):.0f} % of the card free",
              ["card memory (GiB)", "micro-batch", "accumulate", "probed (micro-batch: outcome, peak)", "seconds",
               "status"],
              [[r.get("memory_gib"), auto.get("micro_batch"), auto.get("accumulate"), tried or None,
                auto.get("seconds"),
                auto.get("status", "–") if auto.get("status") == "ok"
                else f"{auto.get('status')}: {auto.get('reason', '')}"[:200]]])  # fmt: skip
    if auto.get("status") in ("error", "out of memory"):
        sec.worse("fail", f"train.micro_batch auto: {auto.get('reason')}")
    elif auto.get("status") == "ok" and r.get("memory_gib"):
        limit = (1 - r.get("headroom", 0.1)) * r["memory_gib"] * 1024
        fits = [mb for mb, peak in measured if peak <= limit]
        if fits and max(fits) != auto["micro_batch"]:
            sec.notes.append(f"auto kept micro-batch {auto['micro_batch']}; the largest measured one under the "
                             f"headroom is {max(fits)} (the probe is one forward and backward, without the optimizer "
                             "step)")  # fmt: skip
    peaks = "/".join(cell(_gib(m.get("peak_allocated_mib"))) if m["status"] == "ok" else m["status"] for m in rows)
    text = f"peak GiB at micro-batch {'/'.join(str(m['micro_batch']) for m in rows)}: {peaks}"
    if auto.get("status") == "ok":
        text += f"; auto: {auto['micro_batch']}x{auto['accumulate']} on {r.get('memory_gib')} GiB"
    else:
        text += f"; auto: {auto.get('status')}"
    return text


# ------------------------------------------------------------------------------- segmodels plan's calibration


def plan_study() -> dict[str, Any]:
    """bench-train's run as a one-model study: the built-in config (its recipe, data section and iterations) with
    resnet50-ppm alone and random init; ``segmodels plan`` calibrates it as it would the study's run."""
    return {"experiment": "gpu-check-plan", "models": [TRAIN_MODEL], "model": {"pretrained": None},
            "train": {"batch_size": TRAIN_BATCH, "crop_size": list(SIZE)},
            "tracking": {"experiment": "segbench-gpu-check"}}  # fmt: skip


def plan_command(tmp: Path) -> list[str]:
    d = tmp / "plan"
    return ["plan", "--config", str(d / "study.yaml"), "--calibrate", str(PLAN_STEPS), "--device", "cuda",
            "--results", str(d / "results"), "--out", str(d / "plan.csv")]  # fmt: skip


def _plan_calibration(ctx: Context, sec: Section, bench: tuple | None, micro: tuple | None) -> tuple | None:
    from segmodels.atomic import write_text_atomic
    from segmodels.study.config import load_config
    from segmodels.study.plan import read_plan

    study = ctx.tmp / "plan" / "study.yaml"
    write_text_atomic(study, yaml.safe_dump(plan_study(), sort_keys=False))
    iterations = load_config(study).train.iterations  # a bad generated study fails here, with its key
    ran = ctx.segmodels(plan_command(ctx.tmp), "plan")
    check_ran(sec, ran, "segmodels plan")
    sec.blocks.append({"title": "segmodels plan output", "text": ran.tail(1500)})
    row = read_plan(ctx.tmp / "plan" / "plan.csv").get(TRAIN_MODEL)
    if row is None:
        return None
    return row, report_plan(sec, row, iterations, bench[0] if bench else None, micro[0] if micro else None)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def report_plan(sec: Section, row: dict[str, str], iterations: int, bench: dict[str, Any] | None,
                micro: dict[str, Any] | None) -> str:  # fmt: skip
    """plan.csv's row against the measured step: the plan's seconds per step (train_hours × 3600 / iterations)
    beside bench-train's (speed features on) and the micro-batch worker's at the plan's micro-batch. Beyond
    :data:`PLAN_MARGIN` either way of bench-train's (else of the worker's) it fails. Returns the summary's part."""
    hours = _float(row.get("train_hours"))
    planned = hours * 3600 / iterations if hours is not None else None
    mb, acc = row.get("micro_batch") or None, row.get("accumulate") or None
    sec.data["plan"] = {"row": dict(row), "iterations": iterations, "planned_step_s": planned}
    if planned is None:
        sec.worse("fail", f"segmodels plan gave no training time (train_source {row.get('train_source')})")
        return "plan: no training time"
    refs: list[tuple[str, str, float, float | None]] = []  # (measured by, micro-batch × K, s per step, peak GiB)
    if bench and bench.get("images_per_s", {}).get("on"):
        refs.append(("segmodels bench-train, speed features on (median round)", f"{bench['batch_size']}x1",
                     bench["batch_size"] / bench["images_per_s"]["on"], None))  # fmt: skip
    for m in (micro or {}).get("rows", []):
        if m["status"] == "ok" and str(m["micro_batch"]) == str(mb):
            refs.append((f"micro-batch worker, {(micro or {}).get('steps')} timed steps",
                         f"{m['micro_batch']}x{m['accumulate']}", m["step_s"], _gib(m.get("peak_allocated_mib"))))
    rows: list[list[Any]] = [[f"segmodels plan --calibrate {PLAN_STEPS} (plan.csv train_hours x 3600 / {iterations} "
                              "iterations)", f"{mb}x{acc}", planned, None, _float(row.get("peak_gpu_gb"))]]  # fmt: skip
    rows += [[who, how, s, planned / s, peak] for who, how, s, peak in refs]
    sec.table(f"segmodels plan's calibration against the measured step ({TRAIN_MODEL}, batch {TRAIN_BATCH}, crop "
              f"{SIZE[0]}x{SIZE[1]}, the recipe's amp)",
              ["measured by", "micro-batch x accumulate", "s per step", "plan / this", "peak allocated (GiB)"],
              rows)  # fmt: skip
    sec.notes.append(f"plan: {TRAIN_MODEL}'s {iterations} iterations take {hours:.2f} h on {row.get('device')} "
                     f"(micro-batch {mb}, accumulate {acc}); the scheduler asks for {PLAN_MARGIN}x that")  # fmt: skip
    if not refs:
        sec.worse("inconclusive", "plan calibration: no measured step to compare it with")
        return f"plan {planned:.3f} s/step, nothing measured to compare"
    who, _, measured, _ = refs[0]
    ratio = planned / measured
    sec.data["plan"].update(measured_step_s=measured, measured_by=who, ratio=ratio)
    if not 1 / PLAN_MARGIN <= ratio <= PLAN_MARGIN:
        sec.worse("fail", f"segmodels plan's step ({planned:.3f} s) is {ratio:.2f}x the measured one ({measured:.3f} "
                          f"s, {who}): beyond the scheduler's {PLAN_MARGIN}x margin")  # fmt: skip
    return f"plan {planned:.3f} s/step vs {measured:.3f} measured ({ratio:.2f}x)"
