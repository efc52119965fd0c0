"""Evaluation of a trained model on the packed validation split.

Whole-image inference at the packed resolution by default; sliding windows, flip and multi-scale
test-time augmentation, and scoring at the raw dataset's resolution are options (``evaluate`` section of
the config). Writes into the output folder (the run folder by default):

* ``confusion.npy`` (C×C int64, rows ground truth) and ``confusion_per_image.npy`` (N×C×C int32, in split
  order, for bootstrap intervals over images), and ``statistics_per_image.npz``: the other metrics' per-image
  statistics (Boundary IoU counts; Cityscapes' category matrices and instance-level counts; :mod:`segmodels.scoring`);
* ``per_class.csv`` (IoU, accuracy, iIoU for classes with instances and Boundary IoU per class; empty cells where
  undefined);
* ``samples/{index:04d}_{image_id}.png`` colourised predictions of the configured images, with
  ``…_input.png`` and ``…_gt.png`` beside them;
* ``metrics.json`` last, so that its presence means the evaluation is complete. Undefined scores (NaN)
  are written as ``null``, which strict JSON readers accept. Its ``cost`` entry is what the evaluation
  cost (wall and CPU time, device, images, GPU-hours and energy where measurable; see
  :mod:`segmodels.engine.cost`), also logged to the run's MLflow run as ``cost/eval_*`` metrics.

The run's MLflow run gets the scores in percent, as the summary and the report show them, under the metrics'
keys (``miou``, ``macc``, ``allacc``; see :func:`logged_scores`), at the checkpoint's iteration.

Every file is written atomically.

Full resolution: the packed labels were resized with the images, so scoring at the original resolution
(1024×2048 for Cityscapes) needs the original label files. The packed manifest records the raw dataset's
root and each image's label file; with ``full_resolution`` the scores at the packed resolution are
upsampled bilinearly to each raw label's size and scored against it (and against its raw instance ids, where
the source has them). When the raw dataset is gone the
evaluation stops with a message saying so, rather than scoring upsampled packed labels and calling that
full resolution.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from segmodels.engine.onnx_model import check_backend, onnx_model
from segmodels.engine.raw_labels import RawLabels
from segmodels.engine.run import OpenRun, open_run, with_data_classes
from segmodels.study import runs
from segmodels.study.config import EvaluateConfig, StudyConfig

if TYPE_CHECKING:
    from segmodels.data.labelset import LabelSet
    from segmodels.scoring import ImageScorer

__all__ = ["RawLabels", "evaluate", "logged_scores", "protocol", "resolve_split", "settings_tag"]


def resolve_split(cfg: StudyConfig, data: str | Path | None, split: str = "val") -> Path:
    """The packed split folder: ``data`` (a split folder, or a dataset folder holding ``{split}/``), by default
    ``data/packed/{dataset}/{split}``."""
    path = Path(data) if data is not None else Path("data/packed") / cfg.data.dataset / split
    if not (path / "images.npy").is_file() and (path / split / "images.npy").is_file():
        path = path / split
    for name in ("images.npy", "labels.npy"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"packed split not found: {path / name} (run 'segmodels prepare' first)")
    return path


def _check_settings(ev: EvaluateConfig) -> None:
    if ev.batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be positive, got {ev.batch_size}")
    if not ev.scales or min(ev.scales) <= 0:
        raise ValueError(f"evaluate.scales must be positive numbers, got {ev.scales}")
    for key in ("window", "stride"):
        value = getattr(ev, key)
        if ev.sliding and (len(value) != 2 or min(value) <= 0):
            raise ValueError(f"evaluate.{key} must be [height, width] of positive integers, got {value}")


def settings_tag(ev: EvaluateConfig) -> str:
    """A short name of the inference settings, empty for the default (whole image, one scale, no flip)."""
    parts = []
    if ev.sliding:
        parts.append("slide")
    if ev.flip:
        parts.append("flip")
    if list(ev.scales) != [1.0]:
        parts.append("ms" + "-".join(f"{s:g}" for s in ev.scales))
    if ev.full_resolution:
        parts.append("fullres")
    return "_".join(parts)


def protocol(ev: EvaluateConfig, *, precision: str, resolution: str) -> dict[str, str]:
    """What a score means: scored at which resolution, in which precision, with which inference and TTA. The
    label is what tables and MLflow show beside the number (e.g. "1024×2048 labels, fp32, whole image, no TTA")."""
    inference = f"sliding {ev.window[0]}×{ev.window[1]}" if ev.sliding else "whole image"
    views = ([f"scales {'/'.join(f'{s:g}' for s in ev.scales)}"] if list(ev.scales) != [1.0] else [])
    tta = " + ".join(views + (["flip"] if ev.flip else [])) or "no TTA"
    scoring = "full" if ev.full_resolution else "packed"
    where = f"{resolution.replace('x', '×')} {'raw' if scoring == 'full' else 'packed'} labels"
    return {"scoring": scoring, "resolution": resolution, "precision": precision, "inference": inference, "tta": tta,
            "label": f"{where}, {precision}, {inference}, {tta}"}


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def evaluate(
    cfg: StudyConfig,
    run_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    model_name: str | None = None,
    device: str | None = None,
    log_mlflow: bool = True,
    progress: bool = True,
    backend: str = "torch",
    calibration: int | None = None,
    amp: bool | None = None,
    log_tag: str | None = None,
    fold: bool = False,
    images: np.ndarray | None = None,
    corruption: dict[str, Any] | None = None,
    statistics: str = "all",
) -> dict[str, Any]:
    """Evaluate the checkpoint of ``run_dir`` with the settings of ``cfg.evaluate``; return metrics.json's dict.

    ``backend`` ``onnx`` / ``onnx-int8`` scores the exported (and, for INT8, quantized with ``calibration``
    training images) graph in ONNX Runtime on the CPU instead (:mod:`segmodels.engine.onnx_model`), into
    ``RUN/eval-{backend}/`` unless ``out`` says otherwise; its MLflow keys end in ``_{backend}``.

    ``amp`` None: ``evaluate.amp`` where reduced precision is native (:func:`~segmodels.engine.inference.amp_available`);
    True: autocast even where the CPU emulates bf16 (slower, the same numbers: what a deployment path's score
    needs); False: fp32. ``log_tag`` replaces the MLflow keys' suffix (``miou_{log_tag}``). ``fold``: score the
    inference-ready model (:func:`segmodels.models.fold.inference_model`, BatchNorm folded into the convolutions),
    the model a ``+fold`` benchmark mode times; metrics.json's ``settings.folded`` says which was scored.

    ``images`` (N', H, W, 3) uint8: score the split's first N' images with these pixels instead of the packed ones
    (:meth:`segmodels.data.loader.PackedSplit.with_images`; corrupted copies, :mod:`segmodels.engine.robustness`),
    against the same labels at the same protocol; ``corruption`` is what they are, kept as metrics.json's
    ``corruption``. Sample images beyond N' are left out. ``statistics`` ``"pixels"`` counts the pixel-level
    statistics alone (the confusion matrices, and the categories' for Cityscapes), not the Boundary IoU's nor the
    instances' (their metrics are then undefined): what a robustness pass, which reports mIoU, needs.

    The settings are those of the run the checkpoint records (:func:`segmodels.engine.run.open_run`; a run's own
    effective config passes unchanged), and metrics.json's ``model`` is that run's name. ``model_name`` (by
    default the run folder's name) and ``cfg.model.num_classes`` must match the checkpoint. All inputs are
    checked before the model runs.
    """
    from segmodels.atomic import write_bytes_atomic, write_text_atomic
    from segmodels.data._io import Progress
    from segmodels.data.loader import PackedSplit
    from segmodels.devices import resolve_device
    from segmodels.engine.inference import amp_available, amp_dtype, environment
    from segmodels.metrics import compute_metrics, metric_keys

    if out is None and backend != "torch":
        out = Path(run_dir) / f"eval-{backend}"
    with open_run(cfg, run_dir, job="evaluate", model_name=model_name, checkpoint=checkpoint, log_mlflow=log_mlflow,
                  out=out) as run:  # fmt: skip
        cfg = run.cfg
        ev = cfg.evaluate
        _check_settings(ev)
        if statistics not in ("all", "pixels"):
            raise ValueError(f"statistics must be 'all' or 'pixels', got {statistics!r}")
        check_backend(backend, scales=list(ev.scales), sliding=ev.sliding, calibration=calibration)
        if amp and backend != "torch":
            raise ValueError(f"backend {backend}: its precision is the graph's; autocast is PyTorch's")
        split_dir = resolve_split(cfg, data)
        cfg = with_data_classes(cfg, split_dir)
        split = PackedSplit(split_dir)
        if images is not None:
            split = split.with_images(images)
            ev = dataclasses.replace(ev, samples=[i for i in ev.samples if 0 <= i < len(split)])
        n = len(split)
        bad = [i for i in ev.samples if not 0 <= i < n]
        if bad:
            raise ValueError(f"evaluate.samples: index {bad[0]} is out of range for the {n} images of {split_dir}")
        raw_labels = RawLabels(split_dir, list(split.names)) if ev.full_resolution else None
        folder = runs.RunFolder(out if out is not None else run_dir)

        dev = resolve_device("cpu" if backend != "torch" else device or ev.device)  # ONNX Runtime's CPU provider
        with run.meter(dev) as meter:  # model loading and inference; not the file writes
            model, meta = run.load_model(dev, expect_num_classes=cfg.model.num_classes)
            if fold:
                from segmodels.models.fold import inference_model

                model = inference_model(model)
            label_set = _label_set(split_dir, meta)
            exported = None
            if backend != "torch":
                model, exported = onnx_model(model, backend, size=split.size, folder=folder.path / "onnx",
                                             data_dir=split_dir.parent, calibration=calibration)  # fmt: skip
            if amp is None:
                amp = ev.amp and backend == "torch" and amp_available(dev)  # bf16 on a CPU that has it
            start = time.monotonic()
            with Progress(n, f"evaluate {run.name}", enabled=progress) as bar:
                scored = _score(model, split, raw_labels, ev, dev, label_set=label_set, folder=folder, bar=bar,
                                amp=amp, pixels_only=statistics == "pixels")  # fmt: skip
            totals = scored.scorer.totals()
            matrix = totals["confusion"]
            result = compute_metrics(totals, label_set.classes, axes=scored.scorer.layout.axes())
            packed_scores = None
            if scored.packed is not None:
                packed_scores = compute_metrics(scored.packed.totals(), label_set.classes,
                                                axes=scored.packed.layout.axes())  # fmt: skip
            elapsed = time.monotonic() - start
            meter.images = n
        cost = meter.result()
        del cost["segments"]  # one segment: its numbers are the totals

        folder.path.mkdir(parents=True, exist_ok=True)
        folder.metrics.unlink(missing_ok=True)  # its presence must keep meaning "all files are new"
        for path, data_bytes in scored.samples.items():
            write_bytes_atomic(path, data_bytes)
        runs.write_npy(folder.confusion, matrix)
        runs.write_npy(folder.confusion_per_image, scored.scorer.confusion)
        scored.scorer.save(folder.statistics_per_image)
        write_text_atomic(folder.per_class, _per_class_csv(result, matrix))
        dtype = str(amp_dtype(dev)).removeprefix("torch.") if amp else None
        packed_size = "x".join(map(str, split.size))
        settings = dataclasses.asdict(ev) | {
            "amp": amp,
            "amp_dtype": dtype,
            "folded": fold or backend != "torch",  # an exported graph is the folded model
            "resolution": list(split.size) if raw_labels is None else sorted({f"{h}x{w}" for h, w in raw_labels.sizes}),
            "data": str(split_dir),
            "tag": settings_tag(ev),
        }
        precision = f"amp {dtype}" if amp else "fp32"
        if backend != "torch":
            precision = f"ONNX Runtime {'int8' if backend == 'onnx-int8' else 'fp32'}"
        full_size = "/".join(settings["resolution"]) if raw_labels is not None else packed_size
        metrics = {
            "model": run.name,
            **{key: result[key] for key in metric_keys()},
            "per_class": _per_class(result, scored.scorer.layout.axes().get("instances", [])),
            # the Cityscapes categories' IoU and, for human and vehicle, iIoU (absent for other label sets)
            "categories": result.get("categories"),
            "label_set": label_set.to_manifest(),  # the report's class names and colours
            "absent": result["absent"],
            "no_truth": result["no_truth"],
            "num_images": n,
            "labelled_pixels": result["labelled_pixels"],
            "protocol": protocol(ev, precision=precision, resolution=full_size),
            # With full-resolution scoring, the same predictions scored at the packed size too: the earlier
            # study's protocol (its 1024×512), for the comparison with its table.
            "packed": None if packed_scores is None else {
                **{key: packed_scores[key] for key in metric_keys()},
                "protocol": protocol(dataclasses.replace(ev, full_resolution=False), precision=precision,
                                     resolution=packed_size),
            },
            "settings": settings,
            "corruption": corruption,
            "backend": backend,
            "export": None if exported is None else {"verify": exported["verify"], "int8": exported["int8"]},
            "device": environment(dev),
            "checkpoint": {"path": str(run.checkpoint), "iteration": meta.get("iteration")},
            "iteration": meta.get("iteration"),
            "seconds": round(elapsed, 3),
            "cost": cost,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        runs.write_json(folder.metrics, metrics)
        # Artifacts land at the run's root by file name: only the run's own evaluation may take those names.
        canonical = folder.path.resolve() == Path(run_dir).resolve() and checkpoint is None
        _log(run, metrics, packed_scores, [folder.metrics, folder.per_class] if canonical else [], backend, log_tag)
    return metrics


def logged_scores(metrics: dict[str, Any], tag: str = "", packed: dict[str, Any] | None = None) -> dict[str, float]:
    """The MLflow metrics of an evaluation: each metric of :data:`segmodels.metrics.METRICS` in percent under its
    key, ``_{tag}`` appended for inference settings other than the default (``miou_flip``, ``macc_slide_flip``),
    and with full-resolution scoring the packed-size mIoU as ``miou_packed`` (``miou_{tag}_packed``). Undefined
    scores are left out."""
    from segmodels.metrics import metric_scores

    suffix = f"_{tag}" if tag else ""
    scores = {f"{key}{suffix}": value * 100 for key, value in metric_scores(metrics, finite=True).items()}
    if packed is not None and not math.isnan(packed["miou"]):
        scores[f"miou{suffix}_packed"] = packed["miou"] * 100
    return scores


def _log(run: OpenRun, metrics: dict[str, Any], packed: dict[str, Any] | None, artifacts: list[Path],
         backend: str = "torch", log_tag: str | None = None) -> None:  # fmt: skip
    """The scores, the evaluation's cost and its protocol, to the run's MLflow run."""
    from segmodels.engine.cost import cost_metrics

    # Inference variants (TTA, sliding windows, ONNX backends) get their own keys; full-resolution scoring is the
    # protocol the run is scored by (its "protocol" tag says which), so the study's headline stays miou.
    tag = settings_tag(dataclasses.replace(run.cfg.evaluate, full_resolution=False))
    if backend != "torch":
        tag = "_".join(filter(None, [tag, backend.replace("-", "_")]))
    tag = log_tag or tag
    cost_prefix = f"cost/eval_{tag}_" if tag else "cost/eval_"
    run.log(
        metrics=logged_scores(metrics, tag, packed) | cost_metrics(metrics["cost"], cost_prefix),
        tags={f"protocol.{tag}" if tag else "protocol": metrics["protocol"]["label"]},
        artifacts=[] if tag else artifacts,
        step=metrics["iteration"],
    )


@dataclasses.dataclass
class _Scored:
    """What the forward passes over a split add up to."""

    scorer: ImageScorer  # per-image statistics at the scoring resolution, in split order
    packed: ImageScorer | None  # the same at the packed size, when scoring at full resolution
    samples: dict[Path, bytes]  # the sample PNGs, by path


def _label_set(split_dir: Path, meta: dict[str, Any]) -> LabelSet:
    """The classes the split is scored on: its manifest's (whose count ``with_data_classes`` and the checkpoint
    check have matched with the model's), else the checkpoint's, else numbered classes."""
    from segmodels.data.labelset import checkpoint_label_set, numbered_label_set, recorded_label_set

    return (recorded_label_set(split_dir) or checkpoint_label_set(meta)
            or numbered_label_set(int(meta["num_classes"])))  # fmt: skip


def _score(model: Any, split: Any, raw_labels: RawLabels | None, ev: EvaluateConfig, dev: torch.device, *,
           label_set: LabelSet, folder: runs.RunFolder, bar: Any, amp: bool = False,
           pixels_only: bool = False) -> _Scored:  # fmt: skip
    """Run the model over ``split`` and count its per-image statistics (the pixel-level ones alone with
    ``pixels_only``); render the configured samples."""
    from segmodels.data.loader import val_batches
    from segmodels.engine.inference import predict_scores
    from segmodels.scoring import ImageScorer, score_layout

    n, names = len(split), list(split.names)
    has_ids = (split.instances is not None if raw_labels is None else raw_labels.instances) and not pixels_only
    scorer = ImageScorer(n, score_layout(label_set, instances=has_ids, boundary=not pixels_only), dev)
    packed = None
    if raw_labels is not None:
        packed = ImageScorer(n, score_layout(label_set, instances=split.instances is not None and not pixels_only,
                                             boundary=not pixels_only), dev)  # fmt: skip
    samples = set(ev.samples)
    sample_files: dict[Path, bytes] = {}
    for images, labels, indices in val_batches(split, batch_size=ev.batch_size, device=dev):
        idx = [int(i) for i in indices]
        scores = predict_scores(
            model, images, scales=ev.scales, flip=ev.flip, sliding=ev.sliding,
            window=ev.window, stride=ev.stride, amp=amp,
        )  # fmt: skip
        pred = scores.argmax(1)
        packed_ids = None if split.instances is None else torch.from_numpy(split.instances[idx].astype(np.int32))
        if raw_labels is None:
            scorer.add(idx, pred, labels, packed_ids)
            pred_rows, gt_rows = list(pred), list(labels)
        else:
            # One forward pass, scored twice: at the packed size (the earlier study's protocol) and,
            # upsampled, against the raw labels (the benchmark's). Raw sizes may differ: one at a time.
            packed.add(idx, pred, labels, packed_ids)
            pred_rows, gt_rows = [], []
            for row, i in enumerate(idx):
                target = torch.from_numpy(raw_labels.read(i)).to(dev)
                up = F.interpolate(scores[row : row + 1].float(), size=target.shape, mode="bilinear",
                                   align_corners=False).argmax(1)  # fmt: skip
                raw_ids = raw_labels.read_instances(i)
                scorer.add([i], up, target.unsqueeze(0),
                           None if raw_ids is None else torch.from_numpy(raw_ids.astype(np.int32)).unsqueeze(0))
                pred_rows.append(up[0])
                gt_rows.append(target)
        for row, i in enumerate(idx):
            if i in samples:
                sample_files[folder.sample(i, names[i])] = _png(label_set.colorize(pred_rows[row].cpu().numpy()))
                sample_files[folder.sample(i, names[i], "input")] = _png(np.asarray(split.images[i]))
                sample_files[folder.sample(i, names[i], "gt")] = _png(label_set.colorize(gt_rows[row].cpu().numpy()))
        bar.update(len(idx))
    return _Scored(scorer, packed, sample_files)


def _per_class(result: dict[str, Any], instance_classes: list[str]) -> dict[str, dict[str, float]]:
    """metrics.json's per-class scores: IoU and accuracy, Boundary IoU, and iIoU for the classes with instances."""
    out = {}
    for c, name in enumerate(result["class_names"]):
        entry = {"iou": result["iou"][c], "acc": result["acc"][c]}
        if "biou_per_class" in result:
            entry["biou"] = result["biou_per_class"][c]
        if name in instance_classes and "iiou_per_class" in result:
            entry["iiou"] = result["iiou_per_class"][c]
        out[name] = entry
    return out


def _per_class_csv(result: dict[str, Any], matrix: np.ndarray) -> str:
    def cell(v: float | None) -> str:
        return "" if v is None or math.isnan(v) else f"{v:.6f}"

    iiou = result.get("iiou_per_class") or [None] * len(result["class_names"])
    biou = result.get("biou_per_class") or [None] * len(result["class_names"])
    lines = ["train_id,class,iou,acc,iiou,biou,truth_pixels,predicted_pixels,true_positives"]
    for c, name in enumerate(result["class_names"]):
        lines.append(
            f"{c},{name},{cell(result['iou'][c])},{cell(result['acc'][c])},{cell(iiou[c])},{cell(biou[c])},"
            f"{int(matrix[c].sum())},{int(matrix[:, c].sum())},{int(matrix[c, c])}"
        )
    return "\n".join(lines) + "\n"
