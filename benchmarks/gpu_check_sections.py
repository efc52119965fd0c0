"""`make gpu-check` sections 1-3: environment (versions and the CUDA-marked tests), latency, training throughput."""

from __future__ import annotations

import json
import re
import sys

from gpu_check_base import BASELINE, COMPILE_MODE, SIZE, TRAIN_CMD, Section, cell
from gpu_check_procs import Context, GpuSampler, check_ran, nvidia_smi


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


def section_train(ctx: Context, sec: Section) -> None:
    out = ctx.tmp / "bench_train.json"
    with GpuSampler() as sampler:
        ran = ctx.segmodels([*TRAIN_CMD, "--json", str(out)], "bench-train")
    check_ran(sec, ran, "segmodels bench-train")
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
                     f"included): {cell(peak)} MiB")  # fmt: skip
    sec.notes.append("not measured: peak allocated memory per variant (bench-train does not report it); time "
                     "waiting for data per step here (bench-train times the step on batches already on the GPU); "
                     "the ddp section reports it from the real loader (train_log.csv data_wait_ms)")  # fmt: skip
    sec.summary = f"{rates['on']:.1f} images/s with speed features, {rates['off']:.1f} without ({r['speedup']:.2f}x)"

