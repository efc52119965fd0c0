"""The report's small objects and boundaries: the benchmark metrics' table and the finding on which context module
gains most in iIoU and Boundary IoU, from run folders scored the way ``segmodels evaluate`` scores them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pypdf import PdfReader

from segmodels.data.labels import LABELS, TRAINID_TO_ID
from segmodels.data.labelset import LabelSet, cityscapes_label_set
from segmodels.data.sources.voc import voc_label_set
from segmodels.metrics import compute_metrics, metric_scores
from segmodels.models.catalog import head
from segmodels.report.design import fixed_pairs
from segmodels.report.findings import findings
from segmodels.report.results import Study, load_study
from segmodels.report.tables import BENCHMARK_TITLE, CITYSCAPES_BENCHMARK_TITLE, result_tables
from segmodels.report.typeset import write_report
from segmodels.report.uncertainty import uncertainty_section
from segmodels.report.verdicts import p_text
from segmodels.scoring import ImageScorer, score_layout
from segmodels.study.config import StatsConfig, StudyConfig
from segmodels.study.stats import bootstrap_study, compare, with_holm
from segmodels.study.summary import run_dir, summarize

FCN, PPM, ASPP, OCR = "resnet18-fcn", "resnet18-ppm", "resnet18-aspp", "resnet18-ocr"
R50 = "resnet50-ppm"
# (seeds, right on pixels of classes with instances, right elsewhere): ASPP finds the small objects, OCR the rest
MODELS = {FCN: (1, 0.45, 0.45), PPM: (1, 0.5, 0.5), ASPP: (2, 0.9, 0.45), OCR: (1, 0.45, 0.95), R50: (1, 0.6, 0.6)}
SHAPE, IMAGES = (48, 96), 6
# the performance table's columns, as they were before the benchmark metrics: theirs is a table of its own
PERFORMANCE = ["Backbone", "Module", "mIoU", "95% CI", "mAcc", "allAcc", "Latency (ms)", "mIoU/speed", "Params (M)",
               "GFLOPs", "Train cost", "Status"]  # fmt: skip
INSTANCE_TRAIN_IDS = [label.train_id for label in LABELS if label.has_instances and label.train_id != 255]


def _scenes(rng: np.random.Generator, classes: int, instances: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(class indices with 255 ignored, instance ids or None) of each validation image: rectangles of random classes,
    each rectangle of a class with instances one instance (``labelId * 1000 + k``), from 8×8 down to a few pixels."""
    h, w = SHAPE
    scenes = []
    for _ in range(IMAGES):
        values = np.append(np.arange(classes), 255)
        target = np.kron(rng.choice(values, size=(h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
        blob = np.kron(np.arange(h // 8 * (w // 8)).reshape(h // 8, w // 8), np.ones((8, 8), dtype=np.int64))
        for k in range(30):  # smaller rectangles on top: small objects
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            box = (slice(y, y + rng.integers(2, 6)), slice(x, x + rng.integers(2, 6)))
            target[box], blob[box] = rng.choice(values), 500 + k
        inst = None
        if instances:
            has = np.isin(target, INSTANCE_TRAIN_IDS)
            label_ids = np.asarray(TRAINID_TO_ID, dtype=np.int64)[np.where(target == 255, 0, target)]
            inst = np.where(has, label_ids * 1000 + blob + 1, 0)
        scenes.append((target, inst))
    return scenes


def _write_study(root, cfg: StudyConfig, label_set: LabelSet, *, instances: bool, statistics: bool = True) -> None:
    """Run folders as ``segmodels evaluate`` leaves them: metrics.json with every metric and the label set,
    confusion_per_image.npy and, with ``statistics``, statistics_per_image.npz."""
    rng = np.random.default_rng(7)
    scenes = _scenes(rng, label_set.num_classes, instances)
    layout = score_layout(label_set, instances=instances)
    for model in cfg.models:
        seeds, small, rest = MODELS[model]
        for seed in cfg.seeds[:seeds]:
            scorer = ImageScorer(IMAGES, layout, torch.device("cpu"))
            for i, (target, inst) in enumerate(scenes):
                right = np.where(np.isin(target, INSTANCE_TRAIN_IDS) if instances else False, small, rest)
                pred = np.where(rng.random(SHAPE) < right, target, rng.integers(0, label_set.num_classes, SHAPE))
                pred = np.where(target == 255, rng.integers(0, label_set.num_classes, SHAPE), pred)
                tensors = [torch.from_numpy(a)[None] for a in (pred, target)]
                scorer.add([i], *tensors, None if inst is None else torch.from_numpy(inst)[None])
            folder = run_dir(root, cfg, model, seed)
            folder.mkdir(parents=True)
            np.save(folder / "confusion_per_image.npy", scorer.confusion)
            totals = scorer.totals() if statistics else scorer.totals()["confusion"]
            if statistics:
                scorer.save(folder / "statistics_per_image.npz")
            scores = compute_metrics(totals, label_set.classes, axes=layout.axes())
            (folder / "metrics.json").write_text(json.dumps({**metric_scores(scores), "iou": scores["iou"],
                                                             "label_set": label_set.to_manifest()}))  # fmt: skip


def _load(tmp_path, label_set: LabelSet, models: tuple[str, ...] = tuple(MODELS),
          **kwargs) -> tuple[StudyConfig, Study, pd.DataFrame]:  # fmt: skip
    cfg = StudyConfig(experiment="bench", models=list(models), seeds=[0, 1])
    cfg.stats = StatsConfig(resamples=400)
    _write_study(tmp_path, cfg, label_set, **kwargs)
    summary = summarize(cfg, tmp_path, tmp_path / cfg.experiment / "summary.csv", design=fixed_pairs(cfg))
    return cfg, load_study(cfg, tmp_path), summary.set_index("model")


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    return _load(tmp_path_factory.mktemp("cityscapes"), cityscapes_label_set(), instances=True)


def _by_title(tables: list[dict]) -> dict[str, dict]:
    return {t["title"]: t for t in tables}


def _text(table: dict, row: int, column: str) -> str:
    return table["rows"][row][table["header"].index(column)]["t"]


def test_the_benchmark_table_shows_the_summary_numbers(cityscapes):
    _, study, s = cityscapes
    assert s.loc[ASPP, "seeds"] == 2 and s.loc[FCN, "seeds"] == 1
    tables = _by_title(result_tables(study))
    assert tables["Performance summary"]["header"] == PERFORMANCE  # the benchmark metrics are not in it
    scores, intervals = tables[CITYSCAPES_BENCHMARK_TITLE], tables[f"{CITYSCAPES_BENCHMARK_TITLE}: 95% intervals"]
    assert scores["header"] == ["Backbone", "Module", "mIoU", "iIoU", "IoU cat", "iIoU cat", "BIoU"]
    assert intervals["header"] == ["Model", "iIoU 95% CI", "IoU cat 95% CI", "iIoU cat 95% CI", "BIoU 95% CI"]
    assert len(scores["align"]) == len(scores["header"]) and len(intervals["align"]) == len(intervals["header"])
    models = list(s.index)
    assert [r[1]["t"] for r in scores["rows"]] == [head(m.partition("-")[2]).label for m in models]
    for row, model in enumerate(models):
        for key, label in [("miou", "mIoU"), ("iiou", "iIoU"), ("miou_category", "IoU cat"),
                           ("iiou_category", "iIoU cat"), ("biou", "BIoU")]:  # fmt: skip
            value = s.loc[model, key]
            assert np.isfinite(value), (model, key)
            expected = f"{value:.2f} ± {s.loc[model, f'{key}_std']:.2f}" if model == ASPP else f"{value:.2f}"
            assert _text(scores, row, label) == expected
            if key != "miou":
                assert _text(intervals, row, f"{label} 95% CI") == f"{s.loc[model, f'{key}_lo']:.2f}–" \
                                                                   f"{s.loc[model, f'{key}_hi']:.2f}"  # fmt: skip
    bold = [models[r] for r, row in enumerate(scores["rows"]) if row[scores["header"].index("iIoU")]["b"]]
    assert bold == [s["iiou"].idxmax()] == [ASPP]
    note = scores["note"]
    assert "so that a small object counts as much as a large one" in note and "2 % of the image diagonal" in note
    assert "exist only for Cityscapes-format data with instance ids" in note
    ci = next(t for t in uncertainty_section(study)["tables"] if t["title"].startswith("Scores with"))
    assert [h for h in ci["header"] if h.endswith("CI")] == ["mIoU 95% CI", "mAcc 95% CI", "allAcc 95% CI"]


def test_the_tables_are_typeset(cityscapes, tmp_path):
    cfg, study, s = cityscapes
    out = write_report(cfg, study.root.parent, tmp_path / "figures", tmp_path / "report.pdf", log=lambda _: None)
    text = " ".join(page.extract_text() for page in PdfReader(out).pages)
    assert CITYSCAPES_BENCHMARK_TITLE in text and f"{CITYSCAPES_BENCHMARK_TITLE}: 95% intervals" in text
    assert f"{s.loc[ASPP, 'iiou']:.2f} ± {s.loc[ASPP, 'iiou_std']:.2f}" in text
    assert f"{s.loc[OCR, 'biou_lo']:.2f}–{s.loc[OCR, 'biou_hi']:.2f}" in text


def _family(cfg: StudyConfig, results, base: str, members: list[str], key: str):
    boots, _ = bootstrap_study(cfg, results, design=fixed_pairs(cfg))
    return with_holm([compare(boots, m, base, metric=key, confidence=cfg.stats.confidence) for m in members])


def test_the_finding_names_the_module_that_gains_most(cityscapes):
    cfg, study, _ = cityscapes
    text = {f["title"]: f["text"] for f in findings(study)}["Small objects and boundaries"]
    assert text.startswith("Over the plain FCN head on ResNet18 (paired bootstrap, Holm-adjusted over the 3 modules for each metric): ")
    for key, word, winner in [("iiou", "iIoU", ASPP), ("biou", "boundary IoU", OCR)]:
        family = _family(cfg, study.root.parent, FCN, [PPM, ASPP, OCR], key)
        best = max(family, key=lambda c: c.diff)
        assert best.a == winner and best.diff > 0
        p = p_text(best)
        holm = f"Holm p {p}" if p[0] in "<≤" else f"Holm p = {p}"
        verdict = "significant" if best.significant else "not distinguishable"
        assert (f"{head(winner.partition('-')[2]).label} gains most in {word}, {best.diff:.2f} points (95% CI "
                f"[{best.lo:+.2f}, {best.hi:+.2f}], {holm}: {verdict})") in text  # fmt: skip
        assert best.family == 3 and best.significant
    (pair,) = _family(cfg, study.root.parent, PPM, [R50], "iiou")
    assert f"the largest iIoU difference is ResNet50 over ResNet18, {pair.diff:.2f} points" in text


def test_confusion_matrices_alone_give_no_benchmark_scores(tmp_path):
    _, study, s = _load(tmp_path, cityscapes_label_set(), instances=True, statistics=False)
    assert s[["iiou", "biou"]].isna().all().all() and s["miou"].notna().all()
    tables = _by_title(result_tables(study))
    assert tables["Performance summary"]["header"] == PERFORMANCE
    assert not any("benchmark" in title or title.startswith(BENCHMARK_TITLE) for title in tables)
    text = {f["title"]: f["text"] for f in findings(study)}["Small objects and boundaries"]
    assert text.startswith("Not available: no run has iIoU or boundary IoU scores")
    assert "gains most" not in text


def test_without_instance_ids_boundary_iou_stands_alone(tmp_path):
    cfg, study, s = _load(tmp_path, voc_label_set(), instances=False)
    assert s["iiou"].isna().all() and s["biou"].notna().all()
    tables = _by_title(result_tables(study))
    assert tables["Performance summary"]["header"] == PERFORMANCE
    assert CITYSCAPES_BENCHMARK_TITLE not in tables
    table = tables[BENCHMARK_TITLE]
    assert table["header"] == ["Backbone", "Module", "mIoU", "BIoU", "BIoU 95% CI"]  # one table: it fits
    assert _text(table, 2, "BIoU") == f"{s.loc[ASPP, 'biou']:.2f} ± {s.loc[ASPP, 'biou_std']:.2f}"
    assert "No model here defines iIoU, IoU cat, iIoU cat" in table["note"]
    text = {f["title"]: f["text"] for f in findings(study)}["Small objects and boundaries"]
    assert "iIoU" not in text
    family = _family(cfg, study.root.parent, FCN, [PPM, ASPP, OCR], "biou")
    best = max(family, key=lambda c: c.diff)
    assert f"{head(best.a.partition('-')[2]).label} gains most in boundary IoU, {best.diff:.2f} points" in text


def test_missing_inputs_are_named(tmp_path):
    cfg, study, _ = _load(tmp_path, cityscapes_label_set(), (PPM, ASPP, R50), instances=True)
    (run_dir(tmp_path, cfg, R50, 0) / "statistics_per_image.npz").unlink()  # evaluated before the file existed
    text = {f["title"]: f["text"] for f in findings(study)}["Small objects and boundaries"]
    assert text.startswith("Not available for the context modules: no ResNet18-FCN run to measure their gains from.")
    diff = study.value(R50, "iiou") - study.value(PPM, "iiou")
    assert (f"Among the backbones (PPM head): the largest iIoU difference is ResNet50 over ResNet18, {diff:.2f} points "
            "(not tested: no per-image statistics)") in text  # fmt: skip
