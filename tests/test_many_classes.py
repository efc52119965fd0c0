"""A 150-class study stays readable: the per-class table and figure show the best and worst classes, the
confusion figure the most frequent ones, the prediction legend only the classes in the shown images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmodels.data.labelset import LabelSet
from segmodels.metrics import compute_metrics
from segmodels.report.figures_grids import CONFUSION_CLASSES, fig_backbones, fig_confusion, fig_per_class
from segmodels.report.results import MANY_CLASSES, class_selection, load_study
from segmodels.report.tables import _per_class_table
from segmodels.study.config import StudyConfig
from segmodels.study.summary import run_dir, summarize

C = 150
LABELS = LabelSet("ade-like", tuple(f"thing{i}" for i in range(C)))
MODELS = ("resnet18-ppm", "mobilenetv2-ppm")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _run(folder: Path, model: str, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    frequency = rng.pareto(1.5, C) + 0.01  # a long tail of rare classes, as in ADE20K
    matrix = rng.integers(0, 3, size=(C, C)).astype(np.int64)
    matrix[np.diag_indices(C)] = (frequency * 200 * rng.uniform(0.2, 1.0, C)).astype(np.int64) + 1
    np.save(folder / "confusion.npy", matrix)
    np.save(folder / "confusion_per_image.npy", np.stack([matrix // 2, matrix - matrix // 2]).astype(np.int32))
    m = compute_metrics(matrix, LABELS.classes)
    per_class = {n: {"iou": m["iou"][c], "acc": m["acc"][c]} for c, n in enumerate(m["class_names"])}
    metrics = {"model": model, "miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"], "per_class": per_class,
               "num_images": 2, "label_set": LABELS.to_manifest()}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics).replace("NaN", "null"))
    samples = folder / "samples"
    samples.mkdir()
    truth = np.repeat(np.arange(12, dtype=np.uint8) * 11, 6)[None, :].repeat(20, 0)  # 12 of the 150 classes
    pred = np.where(rng.random(truth.shape) < 0.2, 140, truth).astype(np.uint8)  # and one more predicted
    stem = "0000_img"
    (samples / f"{stem}.png").write_bytes(_png(LABELS.colorize(pred)))
    (samples / f"{stem}_gt.png").write_bytes(_png(LABELS.colorize(truth)))
    (samples / f"{stem}_input.png").write_bytes(_png(rng.integers(0, 255, (*truth.shape, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    cfg = StudyConfig(experiment="many", models=list(MODELS), seeds=[0])
    cfg.data.dataset = "not-packed-here"
    rng = np.random.default_rng(0)
    for model in MODELS:
        _run(run_dir(root, cfg, model, 0), model, rng)
    summarize(cfg, root, root / cfg.experiment / "summary.csv")
    return load_study(cfg, root)


def test_the_label_set_comes_from_the_evaluations(study):
    assert study.labels.num_classes == C and study.labels.classes[3] == "thing3"
    assert np.array_equal(study.labels.palette, LABELS.palette)


def test_selection_keeps_the_best_and_the_worst():
    values = np.arange(C, dtype=float)
    values[5] = np.nan
    shown, note = class_selection(values)
    assert len(shown) == MANY_CLASSES and shown[0] == C - 1 and shown[-1] == 0 and 5 not in shown
    assert "150 classes" in note
    assert class_selection(np.arange(19.0)) == (list(range(19)), "")


def test_per_class_table_and_figure_show_forty_classes(study):
    table = _per_class_table(study)
    assert len(table["rows"]) == MANY_CLASSES + 1  # and the mean row
    assert "150 classes" in table["note"]
    drawn = fig_per_class(study)
    ax = drawn.fig.axes[0]
    assert len(ax.get_xticklabels()) == MANY_CLASSES
    assert "150 classes" in drawn.caption


def test_confusion_shows_the_most_frequent_classes_and_the_rest(study):
    drawn = fig_confusion(study)
    ax = drawn.fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == CONFUSION_CLASSES + 1 and labels[-1] == "(other)"
    assert f"the {CONFUSION_CLASSES} with the most true pixels" in drawn.caption


def test_prediction_legend_lists_only_the_classes_shown(study):
    drawn = fig_backbones(study)
    assert not isinstance(drawn, str), drawn
    legend = drawn.fig.legends[0]
    names = sorted(t.get_text() for t in legend.get_texts())
    assert names == sorted([f"thing{i * 11}" for i in range(12)] + ["thing140"])
