"""Figures drawn from a fabricated set of results files: every figure, its caption, skipped inputs, the command."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segmodels.data.labels import CLASS_NAMES, NUM_CLASSES, colorize
from segmodels.metrics import compute_metrics
from segmodels.report.design import fixed_pairs
from segmodels.report.figures import FIGURES, fig_differences, make_figures
from segmodels.report.results import load_study, pareto_front, read_samples
from segmodels.study.config import StudyConfig
from segmodels.study.stats import bootstrap_study, comparisons_from_table, comparisons_table
from segmodels.study.summary import run_dir, summarize

# model → (per-seed diagonal strength, per-seed latency ms, params M, GFLOPs); None: no results (missing).
FAKE_MODELS = {
    "resnet18-ppm": ((6.0, 6.6), (34.0, 35.0), 13.1, 110.0),
    "resnet50-ppm": ((9.0, 9.8), (79.0, 80.0), 49.0, 380.0),
    "resnet101-ppm": None,
    "mobilenetv2-ppm": ((4.5, 4.8), (22.0, 23.0), 3.5, 40.0),
    "mobilenetv3-ppm": ((3.6,), (24.5,), 3.2, 30.0),  # one seed of two: partial
    "resnet18-aspp": ((6.2, 6.6), (38.0, 39.0), 14.2, 120.0),  # close to resnet18-ppm: not distinguishable
}
SAMPLES = [0, 2]
ABSENT_CLASS = 16  # "train": in neither truth nor prediction, so its IoU is undefined (NaN)
VAL_IMAGES = 16  # per-image confusion matrices of every run, for the bootstrap intervals


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _confusion(rng: np.random.Generator, strength: float) -> np.ndarray:
    matrix = rng.integers(0, 40, size=(NUM_CLASSES, NUM_CLASSES)).astype(np.int64)
    matrix[np.diag_indices(NUM_CLASSES)] = (rng.integers(100, 200, NUM_CLASSES) * strength).astype(np.int64)
    matrix[ABSENT_CLASS, :] = 0
    matrix[:, ABSENT_CLASS] = 0
    return matrix


def _write_run(folder: Path, model: str, seed: int, strength: float, latency: float, params: float, gflops: float):
    rng = np.random.default_rng(int(hashlib.md5(f"{model}/{seed}".encode()).hexdigest()[:8], 16))
    folder.mkdir(parents=True)
    per_image = np.stack([_confusion(rng, strength) for _ in range(VAL_IMAGES)]).astype(np.int32)
    matrix = per_image.sum(axis=0, dtype=np.int64)
    np.save(folder / "confusion.npy", matrix)
    np.save(folder / "confusion_per_image.npy", per_image)
    m = compute_metrics(matrix, CLASS_NAMES)  # a Cityscapes study, as evaluate records it
    per_class = {n: {"iou": m["iou"][c], "acc": m["acc"][c]} for c, n in enumerate(m["class_names"])}
    hours = gflops / 400  # a fabricated but monotone training cost
    cost = {"job": "train", "device_type": "cuda", "device": "Fake GPU 9000", "gpus": 1, "wall_hours": hours,
            "gpu_hours": hours, "cpu_hours": hours * 1.5, "energy_wh": 300.0 * hours, "images": 1600}  # fmt: skip
    (folder / "cost.json").write_text(json.dumps(cost))
    metrics = {"model": model, "miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"], "per_class": per_class,
               "num_images": VAL_IMAGES, "cost": {"job": "evaluate", "wall_hours": hours / 50}}  # fmt: skip
    # The evaluator writes undefined scores as null (strict JSON).
    text = json.dumps(metrics).replace("NaN", "null")
    (folder / "metrics.json").write_text(text)
    device = {"type": "cuda", "name": "Fake GPU 9000", "torch": "2.6.0", "cuda": "12.4", "python": "3.11.9"}
    modes = {
        "fp32": {"status": "ok", "median_ms": latency, "p90_ms": latency * 1.08, "fps": 1000 / latency},
        "amp": {"status": "skipped", "reason": "not asked"},
    }
    latency_json = {
        "size": [512, 1024],
        "batch_size": 1,
        "params_m": params,
        "gflops": gflops,
        "modes": modes,
        "device": device,
    }
    (folder / "latency.json").write_text(json.dumps(latency_json))
    steps = np.arange(10, 210, 10)
    loss = 2.5 * np.exp(-steps / (60 * strength)) + 0.2 + rng.random(len(steps)) * 0.05
    val = [f"{m['miou'] * s / 200:.4f}" if s % 50 == 0 else "" for s in steps]
    rows = ["iteration,loss,loss_aux,lr,val_miou"] + [
        f"{s},{loss[i]:.4f},{loss[i] * 0.4:.4f},{0.01 * (1 - s / 200) ** 0.9:.6f},{val[i]}" for i, s in enumerate(steps)
    ]
    (folder / "train_log.csv").write_text("\n".join(rows) + "\n")
    (folder / "mlflow_run_id").write_text(hashlib.md5(f"run/{model}/{seed}".encode()).hexdigest() + "\n")
    samples = folder / "samples"
    samples.mkdir()
    for index in SAMPLES:
        truth = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), 4)[None, :].repeat(24, 0)[:, :64]
        truth = np.roll(truth, index * 7, axis=1)
        noise = rng.random(truth.shape) > strength / 10
        pred = np.where(noise, rng.integers(0, NUM_CLASSES, truth.shape), truth).astype(np.uint8)
        stem = f"{index:04d}_frankfurt_000000_{index:06d}_leftImg8bit"
        (samples / f"{stem}.png").write_bytes(_png(colorize(pred)))
        (samples / f"{stem}_input.png").write_bytes(_png(rng.integers(0, 255, (*truth.shape, 3), dtype=np.uint8)))
        (samples / f"{stem}_gt.png").write_bytes(_png(colorize(truth)))


def fabricate_results(root: Path) -> tuple[StudyConfig, Path]:
    """A study of six models, two seeds, one model without results; summary.csv written by ``summarize``."""
    cfg = StudyConfig(experiment="fab", models=list(FAKE_MODELS), seeds=[0, 1])
    cfg.data.dataset = "fabdata"
    results = root / "results"
    for model, spec in FAKE_MODELS.items():
        if spec is None:
            continue
        strengths, latencies, params, gflops = spec
        for seed, (strength, latency) in enumerate(zip(strengths, latencies, strict=True)):
            _write_run(run_dir(results, cfg, model, seed), model, seed, strength, latency, params, gflops)
    summarize(cfg, results, results / cfg.experiment / "summary.csv")
    boots, _ = bootstrap_study(cfg, results)  # what `segmodels compare` writes
    table = comparisons_table(boots, cfg.stats, design=fixed_pairs())
    table.to_csv(results / cfg.experiment / "comparisons.csv", index=False)
    (results / cfg.experiment / "mlflow_experiment_id").write_text("7\n")
    splits = {"train": {"count": 48, "source_sizes": {"1024×2048": 48}}, "val": {"count": 16}}
    manifest = {"dataset": "fabdata", "source": "synthetic", "size": [512, 1024], "splits": splits}
    (root / "data" / "packed" / "fabdata").mkdir(parents=True)
    (root / "data" / "packed" / "fabdata" / "manifest.json").write_text(json.dumps(manifest))
    return cfg, results


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    cfg, results = fabricate_results(root)
    index = make_figures(cfg, results, root / "figures", log=lambda _: None)
    return cfg, results, root / "figures", index


def test_every_figure_is_drawn_with_caption_and_files(drawn):
    cfg, _, out, index = drawn
    assert [f["name"] for f in index["figures"]] == list(FIGURES)
    assert index["skipped"] == []
    for entry in index["figures"]:
        assert entry["caption"] and "\n" not in entry["caption"]
        png, pdf = out / entry["png"], out / entry["pdf"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
        with Image.open(png) as img:
            assert img.width > 600 and img.height > 300
        assert "resnet101-ppm" not in entry["models"]  # no results: never drawn
    assert json.loads((out / "figures.json").read_text()) == index


def test_figure_contents_follow_the_results(drawn):
    cfg, results, _, index = drawn
    by_name = {f["name"]: f for f in index["figures"]}
    assert by_name["backbones"]["models"] == ["resnet18-ppm", "resnet50-ppm", "mobilenetv2-ppm", "mobilenetv3-ppm"]
    assert by_name["context_modules"]["models"] == ["resnet18-ppm", "resnet18-aspp"]
    study = load_study(cfg, results)
    best = max(study.finished(), key=lambda m: study.value(m, "miou"))
    assert by_name["confusion"]["models"] == [best]
    assert f"{study.value(best, 'miou'):.2f} mIoU" in by_name["confusion"]["caption"]
    # Pareto front of the fabricated numbers, named in the scatter plot's caption.
    points = {m: (study.value(m, "latency_ms"), study.value(m, "miou")) for m in study.finished()}
    front = pareto_front(points)
    assert front[0] == min(points, key=lambda m: points[m][0]) and front[-1] == best
    assert "ResNet50-PPM" in by_name["miou_latency"]["caption"]
    assert "validation mIoU" in by_name["training_curves"]["caption"]
    assert sorted(read_samples(run_dir(results, cfg, "resnet18-ppm", 0))) == SAMPLES
    # mIoU against training cost: every finished model, GPU-hours, bootstrap error bars.
    assert by_name["miou_cost"]["models"] == study.finished()
    assert "(GPU-h)" in by_name["miou_cost"]["caption"] and "95% bootstrap interval" in by_name["miou_cost"]["caption"]
    # The differences: the models of the discussed pairs, read from comparisons.csv.
    assert [(c.a, c.b) for c in study.comparisons][:2] == [("resnet50-ppm", "resnet18-ppm"),
                                                            ("resnet50-ppm", "mobilenetv2-ppm")]  # fmt: skip
    assert by_name["differences"]["models"] == sorted({m for c in study.comparisons for m in (c.a, c.b)})
    assert "resnet101-ppm" not in by_name["differences"]["models"]
    # Filled markers: significant by the Holm-adjusted p of comparisons.csv's family, as the caption says.
    study.comparisons = comparisons_from_table(pd.read_csv(results / cfg.experiment / "comparisons.csv"))
    caption = fig_differences(study).caption
    assert "significant (Holm-adjusted p ≤ 5% over 5 comparisons)" in caption
    assert "intervals over the training seeds and validation images" in caption


def test_pareto_front_drops_dominated_points():
    points = {"a": (10.0, 50.0), "b": (20.0, 60.0), "c": (25.0, 55.0), "d": (5.0, 40.0), "e": (30.0, 70.0)}
    assert pareto_front(points) == ["d", "a", "b", "e"]


def test_figures_without_inputs_are_skipped_with_a_note(tmp_path):
    cfg = StudyConfig(experiment="empty", models=["resnet18-ppm", "resnet50-ppm"])
    index = make_figures(cfg, tmp_path / "results", tmp_path / "figures", log=lambda _: None)
    assert index["figures"] == []
    assert {s["name"] for s in index["skipped"]} == set(FIGURES)
    assert all(s["reason"] for s in index["skipped"])
    assert "summary.csv not found" in index["notes"][0]
    assert (tmp_path / "figures" / "figures.json").is_file()


def test_figures_command_and_bad_summary(tmp_path, capsys):
    from segmodels.cli.report import COMMANDS
    from segmodels.study.summary import summary_columns

    config = tmp_path / "study.yaml"
    config.write_text("experiment: x\nmodels: [resnet18-ppm]\n")
    summary = tmp_path / "results" / "x" / "summary.csv"
    summary.parent.mkdir(parents=True)
    summary.write_text(",".join(c for c in summary_columns() if c != "miou") + "\n")
    parser = argparse.ArgumentParser()
    _, add_arguments, run = COMMANDS["figures"]
    add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(config), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "figs")]
    )
    with pytest.raises(ValueError, match=r"summary\.csv: column 'miou' is missing"):
        run(args)
    summary.unlink()
    assert run(args) == 0
    assert "skipped" in capsys.readouterr().out
    assert (tmp_path / "figs" / "figures.json").is_file()
