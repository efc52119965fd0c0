"""Subcommands after training: ``evaluate``, ``benchmark``, ``deploy``, ``export`` and ``predict``.

argparse only at import time; torch and the engine load inside the handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

__all__ = ["COMMANDS"]

_DEVICE_HELP = "auto (a free GPU if any, else the CPU), cpu, cuda or cuda:N (default: the config's)"


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); its 'evaluate' section")
    p.add_argument("--run", type=Path, required=True, help="run folder, results/{experiment}/{model}/seed{seed}")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate (default: RUN/checkpoint.pt)")
    p.add_argument("--model", help="expected run, {backbone}-{head}[_tag...] (default: the run folder's name)")
    p.add_argument("--data", type=Path, help="packed split folder, or the dataset folder holding val/ "
                   "(default: data/packed/{dataset}/val)")  # fmt: skip
    p.add_argument("--out", type=Path, help="folder for metrics.json and the other outputs (default: RUN)")
    p.add_argument("--flip", action="store_true", default=None, help="test-time horizontal flip")
    p.add_argument("--scales", type=float, nargs="+", metavar="S", help="test-time scales, e.g. 0.75 1.0 1.25")
    p.add_argument("--sliding", action="store_true", default=None, help="sliding-window inference (evaluate.window, "
                   "evaluate.stride) instead of whole-image")  # fmt: skip
    p.add_argument("--full-resolution", action="store_true", default=None,
                   help="score at the raw labels' resolution (read through the packed manifest)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: evaluate.batch_size)")
    p.add_argument("--no-amp", action="store_true", help="full precision (fp32) on the GPU, and on a CPU "
                   "with bf16 (AVX512-BF16, AMX), where amp means bf16 autocast")  # fmt: skip
    p.add_argument("--device", help=_DEVICE_HELP)
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")
    p.add_argument("--backend", choices=("torch", "onnx", "onnx-int8"), default="torch",
                   help="torch (default); onnx: export the checkpoint and score the graph in ONNX Runtime on the "
                   "CPU; onnx-int8: quantize it too and score the INT8 graph. Writes to RUN/eval-BACKEND/ unless "
                   "--out; MLflow keys end in _onnx / _onnx_int8")  # fmt: skip
    p.add_argument("--calibration", type=int, metavar="N", help="onnx-int8: packed training images to calibrate "
                   "on (default 100, at most the split's)")  # fmt: skip
    p.add_argument("--corruption", metavar="NAME", help="score the images under this corruption (e.g. fog; "
                   "robustness.images of them) into RUN/robustness/NAME/sK/, from `segmodels corrupt`'s images "
                   "where made, else corrupted now")  # fmt: skip
    p.add_argument("--severity", type=int, choices=range(1, 6), metavar="K", help="the corruption's severity, 1 to 5")


def _run_evaluate(args: argparse.Namespace) -> int:
    from segmodels.engine.evaluate import evaluate
    from segmodels.engine.run import resolve_run
    from segmodels.metrics import METRICS
    from segmodels.study.config import load_config

    # The run's own settings, then the flags given here on top.
    _, cfg, _ = resolve_run(load_config(args.config), args.run, checkpoint=args.checkpoint, where=str(args.config))
    changes = {
        k: v
        for k, v in {
            "flip": args.flip,
            "scales": args.scales,
            "sliding": args.sliding,
            "full_resolution": args.full_resolution,
            "batch_size": args.batch_size,
            "amp": False if args.no_amp else None,
        }.items()
        if v is not None
    }
    cfg.evaluate = dataclasses.replace(cfg.evaluate, **changes)
    if (args.corruption is None) != (args.severity is None):
        raise ValueError("--corruption and --severity go together: e.g. --corruption fog --severity 3")
    if args.corruption is not None:
        if args.backend != "torch" or args.checkpoint or args.out or args.model:
            raise ValueError("--corruption scores the run's checkpoint with PyTorch into RUN/robustness/; drop "
                             "--backend, --checkpoint, --out and --model")  # fmt: skip
        from segmodels.engine.robustness import score_corruption

        metrics = score_corruption(cfg, args.run, args.corruption, args.severity, data=args.data, device=args.device,
                                   log_mlflow=not args.no_mlflow)  # fmt: skip
    else:
        metrics = evaluate(
            cfg, args.run, checkpoint=args.checkpoint, data=args.data, out=args.out, model_name=args.model,
            device=args.device, log_mlflow=not args.no_mlflow, backend=args.backend, calibration=args.calibration,
        )  # fmt: skip
    scores = "  ".join(  # undefined scores (no instance ids outside Cityscapes) are left out
        f"{m.label} {metrics[m.key] * 100:.{m.digits}f}" for m in METRICS
        if metrics.get(m.key) is not None and math.isfinite(metrics[m.key])
    )  # fmt: skip
    absent = f"; absent: {', '.join(metrics['absent'])}" if metrics["absent"] else ""
    how = "" if args.backend == "torch" else f", {metrics['protocol']['precision']}"
    if metrics.get("corruption"):
        how += f", {metrics['corruption']['name']} severity {metrics['corruption']['severity']}"
    print(f"{metrics['model']}: {scores}  ({metrics['num_images']} images{how}{absent})")
    return 0


def _add_benchmark(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="study config (YAML); its 'benchmark' and 'model' sections "
                   "(required with --run; defaults are used with --model alone)")  # fmt: skip
    p.add_argument("--run", type=Path, help="run folder: times its checkpoint, writes RUN/latency.json")
    p.add_argument("--model", help="{backbone}-{head}[_tag...]: with --run, the expected run; without, time a "
                   "freshly built model (random weights, the run's config) and write to --out")  # fmt: skip
    p.add_argument("--out", type=Path, help="latency.json path, or a folder for it (default: RUN/latency.json)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input height and width "
                   "(default: benchmark.size, 512 1024)")  # fmt: skip
    p.add_argument("--modes", nargs="+", metavar="MODE", help="fp32, amp (bf16 autocast on a CPU "
                   "with AVX512-BF16 or AMX, skipped on others), each optionally +fold (BatchNorm folded) "
                   "+channels_last +compile +cudagraphs (e.g. amp+channels_last), or onnx, onnx-int8 (ONNX Runtime, "
                   "the folded model; INT8 calibrated on the timed input) (default: benchmark.modes)")  # fmt: skip
    p.add_argument("--repeats", type=int, help="timed forward passes per mode (default: benchmark.repeats on a "
                   "GPU, capped at benchmark.cpu_repeats on the CPU)")  # fmt: skip
    p.add_argument("--warmup", type=int, help="untimed passes first (default: benchmark.warmup, capped at "
                   "benchmark.cpu_warmup on the CPU)")  # fmt: skip
    p.add_argument("--device", help=_DEVICE_HELP)
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")


def _run_benchmark(args: argparse.Namespace) -> int:
    from segmodels.engine.benchmark import benchmark_run
    from segmodels.study.config import StudyConfig, load_config

    if args.run is not None and args.config is None:
        raise ValueError("--config is required with --run")
    cfg = load_config(args.config) if args.config else StudyConfig()
    result = benchmark_run(
        cfg, args.run, model_name=args.model, out=args.out, size=args.size, modes=args.modes,
        repeats=args.repeats, warmup=args.warmup, device=args.device, log_mlflow=not args.no_mlflow,
    )  # fmt: skip
    if result.get("miou_per_speed") is not None:
        print(f"mIoU/Speed: {result['miou_per_speed']:.2f} (mIoU % / {result['primary_mode']} latency ms × 10)")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder whose checkpoint.pt is exported")
    src.add_argument("--checkpoint", type=Path, help="checkpoint file to export")
    src.add_argument("--model", help="{backbone}-{head}[_tag...] with random weights (for deployment tests)")
    p.add_argument("--config", type=Path, help="study config: benchmark.size and benchmark.onnx_opset defaults, "
                   "and data.dataset for --int8 (default: the one the checkpoint was trained with)")  # fmt: skip
    p.add_argument("--out", type=Path, help="output file (default: RUN/model.onnx, or ./{model}.onnx); the record "
                   "goes beside it as {stem}.export.json")  # fmt: skip
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="fixed input height and width "
                   "(default: benchmark.size)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch size of the graph (default: 1)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: benchmark.onnx_opset, 18)")
    p.add_argument("--atol", type=float, default=None, metavar="TOL", help="largest absolute difference of the "
                   "logits allowed between onnxruntime (CPU) and PyTorch on one random input; above it the command "
                   "fails with exit status 1 (default: 1e-3, fp32 logits)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison with PyTorch")
    p.add_argument("--int8", action="store_true", help="also write an INT8 model ({stem}.int8.onnx, onnxruntime "
                   "static quantization) and print how many pixels keep their class on validation images")  # fmt: skip
    p.add_argument("--calibration", type=int, metavar="N", help="with --int8: packed training images to calibrate "
                   "on (default: 100, at most the split's size)")  # fmt: skip
    p.add_argument("--data", type=Path, help="with --int8: packed dataset folder holding train/ and val/ "
                   "(default: data/packed/{data.dataset})")  # fmt: skip
    p.add_argument("--no-mlflow", action="store_true", help="with --run: do not log the files to the run's MLflow "
                   "run (under onnx/)")  # fmt: skip


def _int8_data(args: argparse.Namespace, dataset: str) -> Path | None:
    """The packed dataset folder --int8 calibrates on; usage errors for INT8 flags that cannot apply."""
    if not args.int8:
        if args.calibration is not None or args.data is not None:
            raise ValueError("--calibration and --data are for --int8 only")
        return None
    if args.format != "onnx":
        raise ValueError(f"--int8 quantizes the ONNX graph: use it with --format onnx, not {args.format}")
    data = args.data or Path("data/packed") / dataset
    if not (data / "train" / "images.npy").is_file():
        raise FileNotFoundError(f"--int8 calibrates on packed training images, and {data / 'train'} holds none: "
                                "give --data DIR (a packed dataset folder) or --config of the study whose "
                                "data.dataset was packed (segmodels prepare)")  # fmt: skip
    return data


def _run_export(args: argparse.Namespace) -> int:
    import sys

    from segmodels.engine.export import ONNX_ATOL, OnnxMismatchError, export_model, record_path
    from segmodels.study.config import StudyConfig, load_config

    cfg = load_config(args.config) if args.config else StudyConfig()
    size = tuple(args.size or cfg.benchmark.size)
    if len(size) != 2 or min(size) <= 0 or args.batch_size < 1:
        raise ValueError(f"--size must be positive H W and --batch-size >= 1, got {list(size)}, {args.batch_size}")
    atol = ONNX_ATOL if args.atol is None else args.atol
    if not atol >= 0:
        raise ValueError(f"--atol must be >= 0, got {args.atol}")
    dataset = cfg.data.dataset
    if args.model:
        from segmodels.engine.run import num_classes_of
        from segmodels.models import build_model, catalog
        from segmodels.study.matrix import run_config
        from segmodels.study.schema import effective_norm

        backbone, head = catalog.arch_of(args.model)
        data = _int8_data(args, dataset)  # usage errors before the model is built
        cfg = run_config(cfg, args.model)
        model = build_model(
            backbone,
            head,
            num_classes=num_classes_of(cfg, data),
            output_stride=cfg.model.output_stride,
            aux=catalog.head(head).cascade,
            pretrained=None,
            head_options=cfg.model.head_options,
            norm=effective_norm(cfg),
        )
        out = args.out or Path(f"{args.model}.onnx")
        inputs = {}
    else:
        import torch

        from segmodels.engine.inference import load_model, model_name_from_path
        from segmodels.study.runs import RunFolder

        ckpt = args.checkpoint or RunFolder(args.run).checkpoint
        expected = model_name_from_path(args.run) if args.run else None
        model, meta = load_model(ckpt, device=torch.device("cpu"), expect_model=expected)
        if args.config is None:  # the store and the data the run was trained with
            trained = meta.get("config") or {}
            cfg.tracking.uri = (trained.get("tracking") or {}).get("uri")
            dataset = (trained.get("data") or {}).get("dataset") or dataset
        data = _int8_data(args, dataset)
        out = args.out or (args.run / "model.onnx" if args.run else ckpt.with_suffix(".onnx"))
        inputs = {"checkpoint": ckpt}
    if data is not None:
        inputs["packed dataset (--data)"] = data
    try:
        record = export_model(
            model, out, size=size, batch_size=args.batch_size, opset=args.opset or cfg.benchmark.onnx_opset,
            verify=not args.no_verify, atol=atol, int8=args.int8, data_dir=data, calibration=args.calibration,
            inputs=inputs,
        )  # fmt: skip
    except OnnxMismatchError as exc:  # the graph is kept for inspection; the exit status says it is wrong
        print(f"segmodels export: verification failed: {exc}", file=sys.stderr)
        return 1
    if args.run is not None and not args.no_mlflow:
        from segmodels.tracking import log_to_run, tracking_uri

        files = [Path(record["path"]), record_path(record["path"])]
        if record["int8"]:
            files.insert(1, Path(record["int8"]["path"]))
        log_to_run(args.run, artifacts=files, artifact_path="onnx", uri=tracking_uri(cfg.tracking.uri))
    return 0


_MAX_PIXELS = 89_478_485  # segmodels.data.images.MAX_PIXELS, written out to keep numpy and Pillow out of --help


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (any format Pillow reads; "
                   "16-bit and float [0, 1] images are scaled to 8 bits) or folders, each standing for the "
                   ".png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp files directly inside it")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of a trained model")
    p.add_argument("--out", type=Path, required=True, help="output folder for {stem}_trainid/_color/_overlay.png")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize for the forward pass, e.g. the "
                   "training resolution (masks are always written at the input's size)")  # fmt: skip
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--no-amp", action="store_true", help="full precision (fp32) on the GPU, and on a CPU "
                   "with bf16 (AVX512-BF16, AMX), where amp means bf16 autocast")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--max-pixels", type=int, default=_MAX_PIXELS, metavar="N", help="refuse, before any work, "
                   f"images with more pixels than N, read from their headers (default: {_MAX_PIXELS}, Pillow's "
                   "decompression-bomb limit); the masks are written at the input's size, which takes about 9 bytes a pixel "
                   "besides the forward pass")  # fmt: skip


def _run_predict(args: argparse.Namespace) -> int:
    import sys

    from segmodels.engine.predict import predict_images

    try:
        written = predict_images(
            args.checkpoint, args.images, args.out, device=args.device, size=args.size, flip=args.flip,
            amp=not args.no_amp, max_pixels=args.max_pixels,
        )  # fmt: skip
    except MemoryError as exc:  # names the image and the options that help; a traceback would hide that
        print(f"segmodels predict: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote masks of {len(written)} image(s) to {args.out}")
    return 0


def _add_deploy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="study config (YAML); its 'deploy' section")
    p.add_argument("--run", type=Path, required=True, help="run folder, results/{experiment}/{model}/seed{seed}")
    from segmodels.study.deploy import PATHS

    p.add_argument("--paths", nargs="+", choices=PATHS, metavar="PATH",
                   help="paths to score: fp32 (PyTorch), bf16 (PyTorch under bf16 autocast; emulated, so slow, "
                   "where the CPU lacks AVX512-BF16 and AMX), onnx (ONNX Runtime, fp32), onnx-int8 (quantized, "
                   "calibrated on deploy.calibration training images) (default: fp32 and deploy.paths)")  # fmt: skip
    p.add_argument("--data", type=Path, help="packed dataset folder holding train/ (INT8's calibration images) and "
                   "val/ (default: data/packed/{data.dataset})")  # fmt: skip
    p.add_argument("--no-scores", action="store_true", help="time only: skip the validation scores")
    p.add_argument("--no-latency", action="store_true", help="score only: skip the timing")
    p.add_argument("--repeats", type=int, help="timed passes per mode (default: benchmark.cpu_repeats)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the run's MLflow run")


def _run_deploy(args: argparse.Namespace) -> int:
    from segmodels.engine.deploy import deploy_run
    from segmodels.engine.run import resolve_run
    from segmodels.study.config import load_config

    if args.no_scores and args.no_latency:
        raise ValueError("--no-scores and --no-latency together leave nothing to do")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    _, cfg, _ = resolve_run(load_config(args.config), args.run, where=str(args.config))
    print(f"deploy {args.run}: files in {args.run / 'deploy'}")
    out = deploy_run(cfg, args.run, paths=args.paths, data=args.data, scores=not args.no_scores,
                     latency=not args.no_latency,
                     log_mlflow=not args.no_mlflow, repeats=args.repeats)  # fmt: skip
    if out["latency"]:
        for name, mode in out["latency"]["modes"].items():
            timed = f"{mode['median_ms']:.1f} ms" if mode.get("status") == "ok" else f"skipped: {mode.get('reason')}"
            print(f"  {name:<24} {timed}")
    return 0


COMMANDS = {
    "evaluate": ("Score a trained model on the validation split (mIoU, mAcc, allAcc, samples)",
                 _add_evaluate, _run_evaluate),
    "benchmark": ("Time inference per precision mode (latency, FPS, memory, GFLOPs)", _add_benchmark, _run_benchmark),
    "deploy": ("The run on the CPU, path by path: fp32, bf16, ONNX Runtime and INT8, each scored on the validation "
               "split (RUN/deploy/PATH/) and timed (RUN/deploy/latency.json)", _add_deploy, _run_deploy),
    "export": ("Export a model to ONNX and check it against PyTorch", _add_export, _run_export),
    "predict": ("Segment your own images with a trained checkpoint", _add_predict, _run_predict),
}  # fmt: skip
