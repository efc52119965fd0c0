"""``segmodels synth``, ``prepare`` and ``bench-data``: argparse only here, the work is imported when a command runs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from segmodels.data.layouts import LAYOUTS, MASK_KINDS
from segmodels.data.sources import source_names

__all__ = ["COMMANDS"]


def _config(args: argparse.Namespace):
    if getattr(args, "config", None):
        from segmodels.study.config import load_config

        return load_config(args.config)
    return None


def _size(values: list[int] | None, option: str) -> tuple[int, int] | None:
    if values is None:
        return None
    if min(values) <= 0:
        raise ValueError(f"{option} must be HEIGHT WIDTH, positive integers; got {values}")
    return values[0], values[1]


def _add_config(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--config", metavar="PATH", help=f"study YAML; {what} (explicit options below override it)")


def _add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: the usable CPU cores; 1: none)")


# --- synth ------------------------------------------------------------------------------------------------
def _synth_args(p: argparse.ArgumentParser) -> None:
    _add_config(p, "takes data.synthetic and writes to data/raw/{data.dataset}")
    p.add_argument("--out", metavar="DIR", help="output root (default: data/raw/{data.dataset}, or data/raw/synthetic)")
    p.add_argument("--train", type=int, metavar="N", help="training images (default 48)")
    p.add_argument("--val", type=int, metavar="N", help="validation images (default 16)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image height and width (default 256 512)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed; the same seed gives the same files (default 0)")
    p.add_argument("--layout", choices=LAYOUTS, help="the file layout written: cityscapes (leftImg8bit/, gtFine/), voc "
                   "(JPEGImages/, SegmentationClass/, 21 classes), ade20k (images/, annotations/, 150 classes) or folder "
                   "(images/, masks/, classes.yaml); `prepare --source synthetic` or --source LAYOUT reads each "
                   "(default: data.synthetic.layout, else cityscapes)")
    p.add_argument("--masks", choices=MASK_KINDS, default="index", help="folder layout: masks of class indices or of "
                   "the class colours listed in classes.yaml (default index)")
    p.add_argument("--no-color", action="store_true", help="cityscapes layout: do not write the *_gtFine_color.png "
                   "previews")
    p.add_argument("--zip", action="store_true", help="cityscapes layout: write the two official archives "
                   "(leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip) instead of a folder tree; "
                   "`prepare --source cityscapes` reads them")
    _add_workers(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _synth_run(args: argparse.Namespace) -> int:
    from segmodels.data.layouts import generate_layout
    from segmodels.data.synthetic import SynthParams, generate_zips

    cfg = _config(args)
    syn = cfg.data.synthetic if cfg else None
    layout = args.layout or (syn.layout if syn else "cityscapes")
    if args.zip and layout != "cityscapes":
        raise ValueError(f"--zip writes Cityscapes' two archives; the {layout} layout is written as a folder tree "
                         "(drop --zip)")  # fmt: skip
    size = _size(args.size, "--size") or (tuple(syn.size) if syn else (256, 512))
    params = SynthParams(
        train=args.train if args.train is not None else (syn.train if syn else 48),
        val=args.val if args.val is not None else (syn.val if syn else 16),
        size=size,
        seed=args.seed if args.seed is not None else (syn.seed if syn else 0),
        color=not args.no_color,
    )
    out = Path(args.out) if args.out else Path("data/raw") / (cfg.data.dataset if cfg else "synthetic")
    start = time.perf_counter()
    if args.zip:
        n = generate_zips(out, params, workers=args.workers, progress=not args.quiet)
    else:
        n = generate_layout(out, layout, params, masks=args.masks, workers=args.workers, progress=not args.quiet)
    what = f"{layout} layout, train={params.train} val={params.val} size={size[0]}×{size[1]} seed={params.seed}"
    if n == 0:
        print(f"synth: {out} is up to date ({what})")
    else:
        print(f"synth: wrote {n} images to {out} ({what}) in {time.perf_counter() - start:.1f} s")
    return 0


# --- prepare ----------------------------------------------------------------------------------------------
def _prepare_args(p: argparse.ArgumentParser) -> None:
    _add_config(p, "takes data.source, data.root, data.dataset and data.size")
    p.add_argument(
        "--source",
        choices=source_names(),
        help="the reader of the raw data: cityscapes, synthetic (what `segmodels synth` wrote, in any layout), voc, "
        "ade20k, folder (images/, masks/, classes.yaml), or one registered by a plugin (default: data.source)",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="raw data: a Cityscapes folder with leftImg8bit/ and gtFine/ or the two official zips, a VOC2012 "
        "folder, ADEChallengeData2016, or a folder dataset "
        "(default: data.root, else $CITYSCAPES_DATASET for cityscapes, else data/raw/{dataset})",
    )
    p.add_argument("--dataset", metavar="NAME", help="dataset name for the default folders (default: data.dataset)")
    p.add_argument("--out", metavar="DIR", help="packed output folder (default: data/packed/{dataset}); replaced only "
                   "when it is empty or holds an earlier pack and nothing else, and never the --root folder or one "
                   "around or inside it")  # fmt: skip
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="packed height and width (default 512 1024)")
    _add_workers(p)
    p.add_argument("--force", action="store_true", help="pack again even if the output is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _raw_root(source: str, root: str | None, dataset: str) -> Path:
    if source == "cityscapes":
        from segmodels.data.sources.cityscapes import find_root

        return find_root(root, dataset=dataset)  # as cityscapesScripts: $CITYSCAPES_DATASET when not given
    return Path(root) if root else Path("data/raw") / dataset


def _prepare_run(args: argparse.Namespace) -> int:
    from segmodels.data.pack import prepare
    from segmodels.study.config import DataConfig

    cfg = _config(args)
    data = cfg.data if cfg else DataConfig()
    source = args.source or data.source
    dataset = args.dataset or data.dataset
    root = _raw_root(source, args.root or data.root, dataset)
    out = Path(args.out) if args.out else Path("data/packed") / dataset
    size = _size(args.size, "--size") or tuple(data.size)
    start = time.perf_counter()
    result = prepare(
        root=root, out=out, size=size, source=source, workers=args.workers, force=args.force, progress=not args.quiet
    )
    for note in result.notes:  # inputs the source left out on purpose, e.g. archive members outside its layout
        print(f"prepare: warning: {note}", file=sys.stderr)
    counts = ", ".join(f"{s} {info['count']}" for s, info in result.manifest["splits"].items())
    if result.skipped:
        print(f"prepare: {out} is up to date ({counts} at {size[0]}×{size[1]} from {root})")
    else:
        took = time.perf_counter() - start
        print(f"prepare: packed {counts} images at {size[0]}×{size[1]} from {root} into {out} in {took:.1f} s")
    return 0


# --- bench-data -------------------------------------------------------------------------------------------
def _bench_args(p: argparse.ArgumentParser) -> None:
    _add_config(p, "takes data.synthetic, data.size, train.batch_size, train.crop_size and train.scale_range")
    p.add_argument("--work", metavar="DIR", help="where to generate and pack the data (default: a temporary folder)")
    p.add_argument(
        "--batches", type=int, default=30, metavar="N", help="timed batches per pipeline, at least (default 30)"
    )
    p.add_argument("--batch-size", type=int, metavar="B", help="samples per batch (default 4, as config/demo.yaml)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop height and width (default 96 96)")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers of both pipelines: DataLoader processes of the plain path, prefetch threads of ours; also "
        "the processes for generating and packing (default: the usable CPU cores; 0: the plain path loads in "
        "the main process and ours uses one thread)",
    )
    p.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="time each pipeline for at least S seconds (default 3)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")


def _bench_run(args: argparse.Namespace) -> int:
    import tempfile

    cfg = _config(args)
    if args.work:
        return _bench(args, cfg, Path(args.work))
    with tempfile.TemporaryDirectory(prefix="segmodels-bench-data-") as work:
        return _bench(args, cfg, Path(work))


def _bench(args: argparse.Namespace, cfg, work: Path) -> int:
    from segmodels.data._io import atomic_write_json, default_workers
    from segmodels.data.bench import bench_data, bench_generate_and_pack

    syn = cfg.data.synthetic if cfg else None
    workers = default_workers() if args.workers is None else args.workers
    timing, raw, packed = bench_generate_and_pack(
        work,
        train=syn.train if syn else 48,
        val=syn.val if syn else 16,
        raw_size=syn.size if syn else (256, 512),
        packed_size=cfg.data.size if cfg else (128, 256),
        seed=syn.seed if syn else 0,
        workers=max(workers, 1),
    )
    size = "×".join(map(str, timing["generated_size"])), "×".join(map(str, timing["packed_size"]))
    print(f"generate {timing['images']} images at {size[0]}: {timing['generate_s']:.1f} s; "
          f"pack at {size[1]}: {timing['pack_s']:.1f} s")  # fmt: skip
    result = bench_data(
        raw,
        packed,
        batch_size=args.batch_size or (cfg.train.batch_size if cfg else 4),
        crop_size=_size(args.crop, "--crop") or (tuple(cfg.train.crop_size) if cfg else (96, 96)),
        scale_range=tuple(cfg.train.scale_range) if cfg else (0.5, 2.0),
        workers=workers,
        batches=args.batches,
        min_seconds=args.seconds,
    )
    result["generate_and_pack"] = timing
    print(f"batches of {result['batch_shape']} on {result['device']}, torch {result['torch']}:")
    print(f"  packed + batched augmentation : {result['ours_samples_per_s']:9.1f} samples/s")
    print(f"  torchvision Cityscapes + PIL  : {result['plain_samples_per_s']:9.1f} samples/s ({workers} workers)")
    print(f"  ratio                         : {result['speedup']:9.2f}×")
    print(
        f"CPU time per sample: {result['ours_cpu_ms_per_sample']:.3f} ms vs {result['plain_cpu_ms_per_sample']:.3f} ms "
        f"({result['cpu_speedup']:.1f}×); load average {result['load_average'][0]:.1f}"
    )
    if args.json:
        atomic_write_json(Path(args.json), result)
    sys.stdout.flush()
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "synth": (
        "Generate street scenes for the demo study, in the Cityscapes layout (leftImg8bit/, gtFine/ labelIds) or "
        "in Pascal VOC's, ADE20K's or a folder dataset's",
        _synth_args,
        _synth_run,
    ),
    "prepare": (
        "Pack a raw dataset (Cityscapes folders or zips, Pascal VOC, ADE20K, a folder of one's own) into "
        "memory-mappable uint8 arrays",
        _prepare_args,
        _prepare_run,
    ),
    "bench-data": (
        "Generate and pack a dataset (default: the demo's 48 + 16 images at 256×512, packed at 128×256), then "
        "compare samples/s of the training data path with a plain torchvision per-sample pipeline",
        _bench_args,
        _bench_run,
    ),
}
