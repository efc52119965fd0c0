"""Full-size rehearsal on the CPU: Cityscapes' size and shape, generated, through the real data path.

Cityscapes ships 2975 training and 500 validation images at 2048×1024 as two zips. This writes exactly that
(`segmodels synth --zip`, the official archive layout), packs it from the zips as a user would (`segmodels
prepare --source cityscapes`) and reports what the study will meet on real data:

- generation time, and packing time with the peak resident memory of `prepare` and its workers together
  (sampled every 0.2 s; the packing must stream, so it stays flat whatever the dataset size);
- the archives' and the packed arrays' size on disk;
- training-loader samples/s at the study's crop (memory-mapped arrays, crops read without whole images);
- the time to evaluate one image at full resolution per model of the study (packed-size forward pass, scores
  upsampled to 2048×1024, scored against the raw label read from the zip) on this CPU, and the share of it that
  the benchmark's instance-level and Boundary IoU statistics take (``segmodels.scoring``, against the raw instance
  ids read from the zip).

    .venv/bin/python benchmarks/bench_fullsize.py                        # 2975 + 500 at 1024×2048 (~30 min, 2 cores)
    .venv/bin/python benchmarks/bench_fullsize.py --train 40 --val 10     # a quick look

The packed folder is rebuilt on every run (so the packing is timed); the archives are kept and reused when
their parameters match. Results: ``{out}/rehearsal.json`` and ``{out}/rehearsal.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _segmodels(*args: str) -> list[str]:
    return [str(BIN / "segmodels"), *args]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just ended
            total += p.memory_info().rss
    return total


def run_measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its wall time and the peak resident memory of it and all its workers, summed."""
    start = time.perf_counter()
    with log.open("w") as fh:
        child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        proc, peak, done = psutil.Process(child.pid), 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while True:
                with contextlib.suppress(psutil.Error):  # the command may be gone already
                    peak = max(peak, _tree_rss(proc))
                if done.wait(0.2):
                    return

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = child.wait()
        done.set()
        thread.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log}")
    # A command shorter than one sampling period: the kernel's own peak of the largest process it waited for.
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": time.perf_counter() - start, "peak_rss_gb": max(peak, largest) / 2**30}


def _size_gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**30


def loader_rate(packed: Path, crop: tuple[int, int], batch: int, batches: int) -> dict[str, float]:
    """Samples/s of the training loader at ``crop`` (the study's scale range 0.5-2.0, flips, photometric)."""
    from segmodels.data.loader import PackedSplit, TrainLoader

    loader = TrainLoader(PackedSplit(packed / "train"), batch_size=batch, crop_size=crop, scale_range=(0.5, 2.0))
    loader.batch(0)  # warm-up
    # Batches made one by one in this thread: iterate()'s prefetch would hide the cost of short timings.
    start = time.perf_counter()
    for step in range(1, batches + 1):
        loader.batch(step)
    seconds = time.perf_counter() - start
    return {"samples_per_s": batches * batch / seconds, "batch": batch, "crop": list(crop),
            "how": "TrainLoader.batch(step), one thread, no prefetch"}  # fmt: skip


def full_resolution_seconds(config: Path, packed: Path) -> list[dict[str, object]]:
    """Seconds to evaluate validation image 0 at full resolution, per model of ``config`` (random weights)."""
    import torch
    import torch.nn.functional as F

    from segmodels.data.labelset import label_set_of
    from segmodels.data.loader import PackedSplit, normalize
    from segmodels.engine.evaluate import RawLabels
    from segmodels.engine.inference import predict_scores
    from segmodels.engine.run import with_data_classes
    from segmodels.metrics import batch_confusion
    from segmodels.models import build_model, catalog
    from segmodels.scoring import ImageScorer, score_layout
    from segmodels.study.config import load_config
    from segmodels.study.matrix import run_config, run_names

    study = with_data_classes(load_config(config), packed)
    split = PackedSplit(packed / "val")
    raw = RawLabels(packed / "val", list(split.names))
    x = normalize(torch.from_numpy(np.array(split.images[0:1])))
    rows = []
    for name in run_names(study):
        cfg = run_config(study, name)
        backbone, head = catalog.arch_of(name)
        model = build_model(backbone, head, num_classes=cfg.model.num_classes, output_stride=cfg.model.output_stride,
                            aux=catalog.head(head).cascade, pretrained=None, head_options=cfg.model.head_options).eval()
        predict_scores(model, x)  # warm-up: thread pools, allocator
        start = time.perf_counter()
        target = torch.from_numpy(raw.read(0))
        scores = predict_scores(model, x)
        pred = F.interpolate(scores, size=target.shape, mode="bilinear", align_corners=False).argmax(1)
        batch_confusion(pred, target.unsqueeze(0), cfg.model.num_classes)
        seconds = time.perf_counter() - start
        start = time.perf_counter()  # what the other metrics' statistics add (boundary, instance-level counts)
        ids = raw.read_instances(0)
        layout = score_layout(label_set_of(packed), instances=ids is not None)
        ImageScorer(1, layout, pred.device).add(
            [0], pred, target.unsqueeze(0), None if ids is None else torch.from_numpy(ids.astype(np.int32))[None])
        extra = time.perf_counter() - start
        rows.append({"model": name, "seconds": seconds, "statistics_seconds": extra,
                     "scored": f"{target.shape[0]}x{target.shape[1]}"})  # fmt: skip
        print(f"  {name}: {seconds:.1f} s, statistics {extra:.2f} s", file=sys.stderr, flush=True)
    return rows


def markdown(report: dict) -> str:
    g, p = report["generate"], report["prepare"]
    generated = (f"{g['seconds']:.0f} s, peak RSS {g['peak_rss_gb']:.2f} GB" if g["seconds"] is not None
                 else "archives reused, not timed")  # fmt: skip
    lines = [
        f"# Full-size rehearsal ({report['train']} + {report['val']} images at {report['size'][0]}×{report['size'][1]}, "
        f"packed at {report['packed_size'][0]}×{report['packed_size'][1]}; {report['cpu']}, {report['cores']} cores)",
        "",
        "| step | figure |",
        "|---|---|",
        f"| generation (`synth --zip`) | {generated} |",
        f"| archives on disk | {report['zips_gb']:.2f} GB |",
        f"| packing (`prepare` from the zips) | {p['seconds']:.0f} s, peak RSS {p['peak_rss_gb']:.2f} GB (all workers) |",
        f"| packed arrays on disk | {report['packed_gb']:.2f} GB |",
        f"| loader at crop {report['loader']['crop'][0]}×{report['loader']['crop'][1]}, batch {report['loader']['batch']}"
        f" | {report['loader']['samples_per_s']:.1f} samples/s |",
        "",
        "| model | full-resolution evaluation of one image (s) | all statistics (s) | share |",
        "|---|---|---|---|",
        *[f"| {r['model']} | {r['seconds']:.1f} | {r['statistics_seconds']:.2f} | "
          f"{r['statistics_seconds'] / r['seconds']:.0%} |" for r in report["evaluate"]],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Figures go to OUT/rehearsal.{json,md}.")
    p.add_argument("--raw", type=Path, default=ROOT / "data/raw/rehearsal", help="where the two zips are written")
    p.add_argument("--packed", type=Path, default=ROOT / "data/packed/rehearsal", help="packed folder (rebuilt)")
    p.add_argument("--out", type=Path, default=ROOT / "results/rehearsal", help="report folder")
    p.add_argument("--train", type=int, default=2975, help="training images (Cityscapes: 2975)")
    p.add_argument("--val", type=int, default=500, help="validation images (Cityscapes: 500)")
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"), help="raw size")
    p.add_argument("--packed-size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"),
                   help="packed size (the study's 1024×512)")
    p.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"), help="loader crop")
    p.add_argument("--batch", type=int, default=8, help="loader batch (the study's 8)")
    p.add_argument("--batches", type=int, default=10, help="timed loader batches")
    p.add_argument("--config", type=Path, default=ROOT / "config/config.yaml", help="study whose models to time")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generation and packing processes")
    p.add_argument("--color", action="store_true", help="also write *_gtFine_color.png (prepare does not read them)")
    args = p.parse_args(argv)
    for key in ("train", "val", "batch", "batches", "workers"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be at least 1, got {getattr(args, key)}")

    from segmodels.devices import cpu_name

    args.out.mkdir(parents=True, exist_ok=True)
    synth = _segmodels("synth", "--zip", "--out", str(args.raw), "--train", str(args.train), "--val", str(args.val),
                       "--size", *map(str, args.size), "--workers", str(args.workers), "--quiet",
                       *([] if args.color else ["--no-color"]))  # fmt: skip
    print(f"generating: {' '.join(synth)}", file=sys.stderr, flush=True)
    generated = run_measured(synth, args.out / "synth.log")
    if "is up to date" in (args.out / "synth.log").read_text():
        generated = {"seconds": None, "peak_rss_gb": None}
    shutil.rmtree(args.packed, ignore_errors=True)
    prepare = _segmodels("prepare", "--source", "cityscapes", "--root", str(args.raw), "--out", str(args.packed),
                         "--size", *map(str, args.packed_size), "--workers", str(args.workers), "--quiet")  # fmt: skip
    print(f"packing: {' '.join(prepare)}", file=sys.stderr, flush=True)
    packed = run_measured(prepare, args.out / "prepare.log")
    print("loader and full-resolution evaluation", file=sys.stderr, flush=True)
    report = {
        "train": args.train, "val": args.val, "size": args.size, "packed_size": args.packed_size,
        "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
        "generate": generated, "prepare": packed,
        "zips_gb": sum(_size_gb(z) for z in args.raw.glob("*.zip")), "packed_gb": _size_gb(args.packed),
        "loader": loader_rate(args.packed, tuple(args.crop), args.batch, args.batches),
        "evaluate": full_resolution_seconds(args.config, args.packed),
    }  # fmt: skip
    from segmodels.atomic import write_text_atomic

    write_text_atomic(args.out / "rehearsal.json", json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    write_text_atomic(args.out / "rehearsal.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
