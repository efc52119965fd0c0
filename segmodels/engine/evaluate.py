"""Evaluation of a trained model on the packed validation split.

Whole-image inference at the packed resolution by default; sliding windows, flip and multi-scale
test-time augmentation, and scoring at the raw dataset's resolution are options (``evaluate`` section of
the config). Writes into the output folder (the run folder by default):

* ``confusion.npy`` (C×C int64, rows ground truth) and ``confusion_per_image.npy`` (N×C×C int32, in split
  order, for bootstrap intervals over images);
* ``per_class.csv`` (IoU and accuracy per class; empty cells where undefined);
* ``samples/{index:04d}_{image_id}.png`` colourised predictions of the configured images, with
  ``…_input.png`` and ``…_gt.png`` beside them;
* ``metrics.json`` last, so that its presence means the evaluation is complete. Undefined scores (NaN)
  are written as ``null``, which strict JSON readers accept. Its ``cost`` entry is what the evaluation
  cost (wall and CPU time, device, images, GPU-hours and energy where measurable; see
  :mod:`segmodels.engine.cost`), also logged to the run's MLflow run as ``cost/eval_*`` metrics.

Every file is written atomically.

Full resolution: the packed labels were resized with the images, so scoring at the original resolution
(1024×2048 for Cityscapes) needs the original label files. The packed manifest records the raw dataset's
root and each image's label file; with ``full_resolution`` the scores at the packed resolution are
upsampled bilinearly to each raw label's size and scored against it. When the raw dataset is gone the
evaluation stops with a message saying so, rather than scoring upsampled packed labels and calling that
full resolution.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segmodels.study.config import EvaluateConfig, StudyConfig

__all__ = ["RawLabels", "evaluate", "json_safe", "protocol", "resolve_split", "settings_tag"]


def json_safe(obj: Any) -> Any:
    """NaN and infinities → None, recursively, so ``json.dumps(..., allow_nan=False)`` succeeds."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


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


class RawLabels:
    """The raw ``*_gtFine_labelIds.png`` of every packed image of a split, as train ids at full resolution.

    Only the raw labels carry the full resolution (the packed ones were resized); the packed manifest
    names the raw dataset's root and each image's label file, which is read through the same
    :class:`~segmodels.data.cityscapes.CityscapesSource` as ``prepare`` (extracted tree or zip). All headers
    are checked here, before inference; a missing manifest, root or file raises naming it.
    """

    def __init__(self, split_dir: Path, names: list[str]) -> None:
        from segmodels.data.cityscapes import CityscapesSource, Sample
        from segmodels.data.pack import read_manifest

        split = split_dir.name
        try:
            manifest = read_manifest(split_dir)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"full-resolution evaluation needs the raw labels: {exc}") from None
        entry = manifest.get("splits", {}).get(split)
        if not entry or "inputs" not in entry or "root" not in manifest:
            raise ValueError(
                f"the manifest of {split_dir.parent} records no raw files for split '{split}', so the full-resolution "
                "labels cannot be found; evaluate at the packed resolution instead (drop --full-resolution)"
            )
        if entry.get("names") != names:
            raise ValueError(f"the manifest of {split_dir.parent} lists other images than {split_dir}; re-run prepare")
        root = Path(manifest["root"])
        if not root.exists():
            raise FileNotFoundError(f"raw dataset not found: {root} (the root recorded in the manifest of {split_dir})")
        self.source = CityscapesSource.open(root)
        self.samples = [Sample(n, i["image"], i["label"]) for n, i in zip(names, entry["inputs"], strict=True)]
        self.sizes = [self.source.check_headers(sample) for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> np.ndarray:
        from PIL import Image

        from segmodels.data.labels import ID_TO_TRAINID

        sample = self.samples[index]
        with Image.open(io.BytesIO(self.source.labels.read(sample.label))) as img:
            ids = np.asarray(img)
        if ids.shape != self.sizes[index]:
            raise ValueError(f"{self.source.labels.describe(sample.label)}: decoded size differs from its header")
        return ID_TO_TRAINID[ids]


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
) -> dict[str, Any]:
    """Evaluate the checkpoint of ``run_dir`` with the settings of ``cfg.evaluate``; return metrics.json's dict.

    The settings are those of the run the checkpoint records (:func:`segmodels.study.matrix.run_config`; a run's own
    effective config passes unchanged), and metrics.json's ``model`` is that run's name. ``model_name`` (by
    default the run folder's name) and ``cfg.model.num_classes`` must match the checkpoint. All inputs are
    checked before the model runs.
    """
    from segmodels.atomic import write_bytes_atomic, write_text_atomic
    from segmodels.engine.cost import CostMeter, cost_metrics
    from segmodels.data._io import Progress
    from segmodels.data.labels import colorize
    from segmodels.data.loader import PackedSplit, val_batches
    from segmodels.data.pack import check_num_classes
    from segmodels.devices import resolve_device
    from segmodels.engine.inference import (
        amp_dtype,
        environment,
        load_model,
        model_name_from_path,
        predict_scores,
        recorded_run,
    )
    from segmodels.study.matrix import run_config
    from segmodels.metrics import ConfusionMatrix, batch_confusion, class_names_for, compute_metrics

    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir
    ckpt_path = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    run_name = recorded_run(ckpt_path)
    cfg = run_config(cfg, run_name)
    ev = cfg.evaluate
    _check_settings(ev)
    split_dir = resolve_split(cfg, data)
    check_num_classes(split_dir, cfg.model.num_classes)
    split = PackedSplit(split_dir)
    n = len(split)
    bad = [i for i in ev.samples if not 0 <= i < n]
    if bad:
        raise ValueError(f"evaluate.samples: index {bad[0]} is out of range for the {n} images of {split_dir}")
    names = list(split.names)
    raw_labels = RawLabels(split_dir, names) if ev.full_resolution else None

    dev = resolve_device(device or ev.device)
    with CostMeter("evaluate", device=dev) as meter:  # model loading and inference; not the file writes
        expected = model_name or model_name_from_path(run_dir)
        model, meta = load_model(ckpt_path, device=dev, expect_model=expected, expect_num_classes=cfg.model.num_classes)
        num_classes = int(meta["num_classes"])
        amp = ev.amp and dev.type == "cuda"

        confusion = ConfusionMatrix(num_classes, device=dev)
        packed_confusion = ConfusionMatrix(num_classes, device=dev) if raw_labels is not None else None
        per_image = np.zeros((n, num_classes, num_classes), dtype=np.int32)
        samples = set(ev.samples)
        sample_files: dict[str, bytes] = {}
        start = time.monotonic()
        with Progress(n, f"evaluate {run_name}", enabled=progress) as bar:
            for images, labels, indices in val_batches(split, batch_size=ev.batch_size, device=dev):
                idx = [int(i) for i in indices]
                scores = predict_scores(
                    model, images, scales=ev.scales, flip=ev.flip, sliding=ev.sliding,
                    window=ev.window, stride=ev.stride, amp=amp,
                )  # fmt: skip
                preds, targets = [scores.argmax(1)], [labels]
                if raw_labels is not None:
                    # One forward pass, scored twice: at the packed size (the earlier study's protocol) and,
                    # upsampled, against the raw labels (the benchmark's). Raw sizes may differ: one at a time.
                    packed_confusion.add_(batch_confusion(preds[0], labels, num_classes).sum(0))
                    preds, targets = [], []
                    for row, i in enumerate(idx):
                        target = torch.from_numpy(raw_labels.read(i)).to(dev)
                        up = F.interpolate(scores[row : row + 1].float(), size=target.shape, mode="bilinear",
                                           align_corners=False)  # fmt: skip
                        preds.append(up.argmax(1))
                        targets.append(target.unsqueeze(0))
                rows = []
                for pred, target in zip(preds, targets, strict=True):
                    batch = batch_confusion(pred, target.to(pred.device), num_classes)
                    confusion.add_(batch.sum(0))
                    rows.append(batch.cpu().numpy())
                per_image[idx] = np.concatenate(rows)
                wanted = [(row, i) for row, i in enumerate(idx) if i in samples]
                if wanted:
                    pred_rows = [p for batch in preds for p in batch]
                    gt_rows = [t for batch in targets for t in batch]
                    for row, i in wanted:
                        stem = f"samples/{i:04d}_{names[i].replace('/', '_')}"
                        sample_files[f"{stem}.png"] = _png(colorize(pred_rows[row].cpu().numpy()))
                        sample_files[f"{stem}_input.png"] = _png(np.asarray(split.images[i]))
                        sample_files[f"{stem}_gt.png"] = _png(colorize(gt_rows[row].cpu().numpy()))
                bar.update(len(idx))
        confusion.reduce_()
        matrix = confusion.matrix.cpu().numpy()
        result = compute_metrics(matrix, class_names_for(num_classes))
        packed_scores = None
        if packed_confusion is not None:
            packed_scores = compute_metrics(packed_confusion.reduce_().matrix.cpu().numpy())
        elapsed = time.monotonic() - start
        meter.images = n
    cost = meter.result()
    del cost["segments"]  # one segment: its numbers are the totals

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # its presence must keep meaning "all files are new"
    for rel, data_bytes in sample_files.items():
        write_bytes_atomic(out_dir / rel, data_bytes)
    write_bytes_atomic(out_dir / "confusion.npy", _npy(matrix))
    write_bytes_atomic(out_dir / "confusion_per_image.npy", _npy(per_image))
    write_text_atomic(out_dir / "per_class.csv", _per_class_csv(result, matrix))
    dtype = str(amp_dtype(dev)).removeprefix("torch.") if amp else None
    packed_size = "x".join(map(str, split.size))
    settings = dataclasses.asdict(ev) | {
        "amp": amp,
        "amp_dtype": dtype,
        "resolution": list(split.size) if raw_labels is None else sorted({f"{h}x{w}" for h, w in raw_labels.sizes}),
        "data": str(split_dir),
        "tag": settings_tag(ev),
    }
    precision = f"amp {dtype}" if amp else "fp32"
    full_size = "/".join(settings["resolution"]) if raw_labels is not None else packed_size
    scored = protocol(ev, precision=precision, resolution=full_size)
    metrics = {
        "model": run_name,
        "miou": result["miou"],
        "macc": result["macc"],
        "allacc": result["allacc"],
        "per_class": {
            name: {"iou": result["iou"][c], "acc": result["acc"][c]} for c, name in enumerate(result["class_names"])
        },
        "absent": result["absent"],
        "no_truth": result["no_truth"],
        "num_images": n,
        "labelled_pixels": result["labelled_pixels"],
        "protocol": scored,
        # With full-resolution scoring, the same predictions scored at the packed size too: the earlier
        # study's protocol (its 1024×512), for the comparison with its table.
        "packed": None if packed_scores is None else {
            "miou": packed_scores["miou"], "macc": packed_scores["macc"], "allacc": packed_scores["allacc"],
            "protocol": protocol(dataclasses.replace(ev, full_resolution=False), precision=precision,
                                 resolution=packed_size),
        },
        "settings": settings,
        "device": environment(dev),
        "checkpoint": {"path": str(ckpt_path), "iteration": meta.get("iteration")},
        "iteration": meta.get("iteration"),
        "seconds": round(elapsed, 3),
        "cost": cost,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=1, allow_nan=False) + "\n")

    if log_mlflow:
        from segmodels.tracking import log_to_run, tracking_uri

        # Inference variants (TTA, sliding windows) get their own keys; full-resolution scoring is the protocol the
        # run is scored by (its "protocol" tag says which), so the study's headline stays val_miou.
        tag = settings_tag(dataclasses.replace(ev, full_resolution=False))
        prefix = f"val_{tag}_" if tag else "val_"
        # Artifacts land at the run's root by file name: only the run's own evaluation may take those names.
        canonical = not tag and out_dir.resolve() == run_dir.resolve() and checkpoint is None
        scores = {f"{prefix}{k}": metrics[k] for k in ("miou", "macc", "allacc") if not math.isnan(metrics[k])}
        if packed_scores is not None and not math.isnan(packed_scores["miou"]):
            scores[f"{prefix}packed_miou"] = packed_scores["miou"]
        log_to_run(
            run_dir,
            metrics=scores | cost_metrics(cost, f"cost/eval_{tag}_" if tag else "cost/eval_"),
            tags={f"protocol.{tag}" if tag else "protocol": scored["label"]},
            artifacts=[out_dir / "metrics.json", out_dir / "per_class.csv"] if canonical else [],
            step=meta.get("iteration"),
            uri=tracking_uri(cfg.tracking.uri),
        )
    return metrics


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _per_class_csv(result: dict[str, Any], matrix: np.ndarray) -> str:
    def cell(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6f}"

    lines = ["train_id,class,iou,acc,truth_pixels,predicted_pixels,true_positives"]
    for c, name in enumerate(result["class_names"]):
        lines.append(
            f"{c},{name},{cell(result['iou'][c])},{cell(result['acc'][c])},"
            f"{int(matrix[c].sum())},{int(matrix[:, c].sum())},{int(matrix[c, c])}"
        )
    return "\n".join(lines) + "\n"
