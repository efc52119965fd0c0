"""The one metric spec: the vectorised formulas against a plain loop, and a metric added from outside the package
reaching the scores, the bootstrap, summary.csv and the report's tables with no other edit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from toys import fwiou as toy_fwiou

from segmodels.metrics import (
    METRICS,
    Metric,
    acc_per_class,
    compute_metrics,
    iou_per_class,
    mean_acc,
    mean_iou,
    metric_keys,
    metric_scores,
    metrics_of_matrices,
    pixel_acc,
    register_metric,
    unregister_metric,
)
from segmodels.report.results import load_study
from segmodels.report.tables import result_tables
from segmodels.report.uncertainty import uncertainty_section
from segmodels.study.config import StatsConfig, StudyConfig
from segmodels.study.stats import bootstrap_models
from segmodels.study.summary import run_dir, summarize, summary_columns

BUILT_IN = ("miou", "macc", "allacc", "iiou", "miou_category", "iiou_category", "biou")
CONFUSION_ONLY = BUILT_IN[:3]  # the metrics of a confusion matrix alone; the others need more statistics


def _random_stack(rng: np.random.Generator, shape: tuple[int, ...], c: int) -> np.ndarray:
    """Sparse random confusion matrices with classes missing from the truth, the prediction or both."""
    m = rng.integers(0, 30, size=(*shape, c, c)) * (rng.random((*shape, c, c)) < 0.5)
    m[..., 0, :] = 0  # class 0 never true ...
    m[..., :, 0] = 0  # ... nor predicted: IoU and accuracy undefined
    m[..., 1, :] = 0  # class 1 predicted but never true: IoU 0, accuracy undefined
    m[..., 2, 1] = 5
    m.reshape(-1, c, c)[0] = 0  # one matrix with nothing labelled: every score NaN
    return m


def _plain(matrix: np.ndarray) -> dict[str, object]:
    """The definitions written out class by class on one matrix, in Python floats."""
    c = len(matrix)
    rows = [sum(float(matrix[t, p]) for p in range(c)) for t in range(c)]
    cols = [sum(float(matrix[t, p]) for t in range(c)) for p in range(c)]
    tp = [float(matrix[i, i]) for i in range(c)]
    iou = [tp[i] / (rows[i] + cols[i] - tp[i]) if rows[i] + cols[i] - tp[i] > 0 else math.nan for i in range(c)]
    acc = [tp[i] / rows[i] if rows[i] > 0 else math.nan for i in range(c)]

    def mean(values: list[float]) -> float:
        defined = [v for v in values if not math.isnan(v)]
        return sum(defined) / len(defined) if defined else math.nan

    total = sum(rows)
    fwiou = sum(rows[i] * iou[i] for i in range(c) if rows[i] > 0) / total if total > 0 else math.nan
    return {"iou": iou, "acc": acc, "miou": mean(iou), "macc": mean(acc),
            "allacc": sum(tp) / total if total > 0 else math.nan, "fwiou": fwiou}  # fmt: skip


@pytest.fixture
def fwiou():
    """The toy metric, registered for one test and removed afterwards."""
    metric = register_metric("fwiou", "fwIoU", toy_fwiou, digits=1, training=False)
    yield metric
    unregister_metric("fwiou")
    assert metric_keys() == BUILT_IN


def _close(a: object, b: object) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=1e-12,
                            equal_nan=True))  # fmt: skip


def test_vectorised_formulas_equal_a_plain_loop():
    rng = np.random.default_rng(0)
    stack = _random_stack(rng, (3, 4), c=6)
    formulas = {"iou": iou_per_class, "acc": acc_per_class, "miou": mean_iou, "macc": mean_acc, "allacc": pixel_acc}
    vectorised = {key: f(stack) for key, f in formulas.items()}
    assert vectorised["iou"].shape == (3, 4, 6) and vectorised["miou"].shape == (3, 4)
    scores = metrics_of_matrices(stack)
    assert list(scores) == list(BUILT_IN)
    assert all(np.isnan(scores[key]).all() for key in BUILT_IN if key not in CONFUSION_ONLY)  # undefined, not 0
    for index in np.ndindex(3, 4):
        plain = _plain(stack[index])
        one = compute_metrics(stack[index], [f"c{i}" for i in range(6)])
        for key in formulas:
            assert _close(vectorised[key][index], plain[key]), (key, index)
            assert _close(one[key], plain[key]), (key, index)
        for key in CONFUSION_ONLY:
            assert _close(scores[key][index], plain[key])
    assert np.isnan(scores["miou"][0, 0]) and np.isnan(scores["allacc"][0, 0])  # nothing labelled
    assert np.isnan(vectorised["acc"][1, 1, 1]) and vectorised["iou"][1, 1, 1] == 0.0  # predicted, never true
    with pytest.raises(ValueError, match=r"\(\.\.\., C, C\)"):
        mean_iou(np.zeros((3, 4)))


def test_the_list_checks_what_it_is_given():
    assert metric_keys() == BUILT_IN and metric_keys(training=True) == ("miou", "allacc")
    assert [m.label for m in METRICS] == ["mIoU", "mAcc", "allAcc", "iIoU", "IoU cat", "iIoU cat", "BIoU"]
    assert METRICS["miou"].digits == 2
    with pytest.raises(ValueError, match="'miou' is already registered"):
        register_metric("miou", "mIoU again", mean_iou)
    with pytest.raises(ValueError, match="'iou' must be lowercase"):
        register_metric("iou", "IoU", mean_iou)  # would shadow compute_metrics' per-class list
    with pytest.raises(ValueError, match="'perclass'.*shape \\(2, 2\\)"):
        register_metric("perclass", "per class", iou_per_class)  # one value per matrix, not per class
    with pytest.raises(KeyError, match="no metric 'nope'"):
        unregister_metric("nope")
    assert metric_keys() == BUILT_IN
    scores = {"miou": 0.5, "macc": None, "allacc": float("nan")}
    assert metric_scores(scores, "val_") == {"val_miou": 0.5, "val_macc": None, "val_allacc": scores["allacc"],
                                             **{f"val_{key}": None for key in BUILT_IN[3:]}}
    with pytest.raises(ValueError, match="'miou_std' is already another metric's"):
        register_metric("miou_std", "a clash", mean_iou)  # summary.csv's column of mIoU's std
    with pytest.raises(ValueError, match="inputs \\['masks'\\] must be statistics"):
        register_metric("masked", "masked", mean_iou, inputs=("masks",))
    assert metric_scores(scores, "val_", finite=True) == {"val_miou": 0.5}
    assert list(metric_scores(scores, training=True)) == ["miou", "allacc"]


def test_a_toy_metric_reaches_the_scores_and_the_bootstrap(fwiou: Metric):
    assert metric_keys() == (*BUILT_IN, "fwiou")
    rng = np.random.default_rng(1)
    per_image = _random_stack(rng, (12,), c=5)
    full = compute_metrics(per_image.sum(0), list("abcde"))
    assert list(full)[: len(BUILT_IN) + 1] == [*BUILT_IN, "fwiou"]
    assert full["fwiou"] == pytest.approx(_plain(per_image.sum(0))["fwiou"], abs=1e-12)
    boots = bootstrap_models({"m": [per_image]}, StatsConfig(resamples=40))["m"]
    # confusion matrices alone: the metrics of other statistics get no interval
    assert list(boots.interval) == [*CONFUSION_ONLY, "fwiou"] and boots.samples["fwiou"].shape == (40,)
    assert boots.interval["fwiou"].estimate == pytest.approx(full["fwiou"] * 100, abs=1e-10)
    assert boots.interval["fwiou"].lo <= boots.interval["fwiou"].hi


def _study(root, cfg: StudyConfig) -> None:
    """Run folders as ``segmodels evaluate`` leaves them: every metric in metrics.json, per-image matrices."""
    rng = np.random.default_rng(2)
    for i, model in enumerate(cfg.models):
        for seed in cfg.seeds:
            folder = run_dir(root, cfg, model, seed)
            folder.mkdir(parents=True)
            per_image = rng.integers(0, 20, size=(8, 19, 19)) + np.eye(19, dtype=np.int64) * (100 + 40 * i + seed)
            np.save(folder / "confusion_per_image.npy", per_image)
            scores = compute_metrics(per_image.sum(0))
            (folder / "metrics.json").write_text(json.dumps({**metric_scores(scores), "iou": scores["iou"]}))


def test_a_toy_metric_reaches_the_summary_and_the_report_tables(fwiou: Metric, tmp_path):
    cfg = StudyConfig(experiment="toy", models=["resnet18-ppm", "resnet50-ppm"], seeds=[0, 1])
    cfg.stats = StatsConfig(resamples=60)
    _study(tmp_path, cfg)
    columns = summary_columns()
    assert columns[columns.index("biou_std") + 1 : columns.index("biou_std") + 3] == ["fwiou", "fwiou_std"]
    assert columns[columns.index("biou_hi") + 1 : columns.index("biou_hi") + 3] == ["fwiou_lo", "fwiou_hi"]
    out = tmp_path / "toy" / "summary.csv"
    table = summarize(cfg, tmp_path, out).set_index("model")
    assert out.read_text().splitlines()[0].split(",") == columns
    r50 = table.loc["resnet50-ppm"]
    seeds = [json.loads((run_dir(tmp_path, cfg, "resnet50-ppm", s) / "metrics.json").read_text()) for s in (0, 1)]
    assert r50["fwiou"] == pytest.approx(np.mean([s["fwiou"] for s in seeds]) * 100)
    assert r50["fwiou_std"] > 0 and r50["fwiou_lo"] <= r50["fwiou_hi"]

    study = load_study(cfg, tmp_path)
    summary = result_tables(study)[0]
    header = summary["header"]
    assert header[header.index("allAcc") + 1] == "fwIoU"
    cell = summary["rows"][1][header.index("fwIoU")]
    assert cell["t"] == f"{r50['fwiou']:.1f} ± {r50['fwiou_std']:.1f}" and cell["b"]  # one decimal, best bold
    assert "mIoU, mAcc, allAcc, fwIoU in %" in summary["note"]
    intervals = uncertainty_section(study)["tables"][0]
    level = f"{cfg.stats.confidence * 100:g}%"
    assert f"fwIoU {level} CI" in intervals["header"] and len(intervals["align"]) == len(intervals["header"])
    ci = intervals["rows"][1][intervals["header"].index(f"fwIoU {level} CI")]["t"]
    assert ci == f"{r50['fwiou_lo']:.1f}–{r50['fwiou_hi']:.1f}"
