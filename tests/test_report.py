"""The PDF report, typeset from fabricated results: rows, missing models, computed findings, pages and images."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader
from test_figures import FAKE_MODELS, fabricate_results

from segmodels.cli.report import COMMANDS
from segmodels.metrics import majority_baseline
from segmodels.models.catalog import backbone, display_name, head
from segmodels.report.figures import make_figures
from segmodels.report.findings import findings, interval_coverage, verdict_rule
from segmodels.report.results import Study, load_study
from segmodels.report.typeset import DEFAULT_TEMPLATE, report_data, write_report
from segmodels.report.uncertainty import uncertainty_section
from segmodels.study.config import StudyConfig
from segmodels.study.stats import Comparison, comparisons_from_table, with_holm

PPM, ASPP, OCR = head("ppm").label, head("aspp").label, head("ocr").label


def _by_title(found: list[dict[str, str]]) -> dict[str, str]:
    return {f["title"]: f["text"] for f in found}


def _text(pdf) -> str:
    # Typst may break a line inside a hyphenated model name; join such breaks before searching.
    return re.sub(r"-\s*\n\s*", "-", "\n".join(page.extract_text() for page in PdfReader(pdf).pages))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg, results = fabricate_results(root)
    make_figures(cfg, results, root / "figures", log=lambda _: None)
    out = root / "reports" / "report.pdf"
    write_report(cfg, results, root / "figures", out, data_root=root / "data" / "packed", log=lambda _: None)
    summary = pd.read_csv(results / cfg.experiment / "summary.csv", dtype={"mlflow_run_ids": str}).set_index("model")
    return cfg, results, root, out, summary


def test_every_model_row_has_its_numbers(built):
    cfg, _, _, out, summary = built
    text = _text(out)
    finished = [m for m, spec in FAKE_MODELS.items() if spec is not None]
    assert list(summary.index[summary["status"] != "missing"]) == finished
    for model in finished:
        row = summary.loc[model]
        expected = f"{row['miou']:.2f} ± {row['miou_std']:.2f}" if row["seeds"] > 1 else f"{row['miou']:.2f}"
        numbers = [expected, f"{row['latency_ms']:.1f}", f"{row['miou_per_speed']:.2f}", f"{row['gflops']:.1f}"]
        label = backbone(model.partition("-")[0]).label
        line = next((ln for ln in text.splitlines() if ln.startswith(label) and all(n in ln for n in numbers)), None)
        assert line is not None, f"no row with {numbers} for {model}"
        for run_id in str(row["mlflow_run_ids"]).split():
            assert run_id in text
    assert "Missing (no results yet): ResNet101-PPM" in text
    assert "MobileNetV3-PPM (1 of 2 seeds)" in text
    assert "Fake GPU 9000" in text and "48 train, 16 val images, from 1024×2048 originals" in text


def test_the_earlier_study_is_compared_only_on_cityscapes_classes(built, monkeypatch):
    from segmodels.data.sources.voc import voc_label_set
    from segmodels.report import results as results_module

    cfg, results, root, out, _ = built
    text = " ".join(_text(out).split())
    assert "Semantic segmentation on Cityscapes (19 classes)" in text
    assert "Comparison with the earlier study" in text and "The earlier study ranked" in text
    monkeypatch.setattr(results_module, "label_set_of_study", lambda study: voc_label_set())
    data = report_data(cfg, results, root / "figures", data_root=root / "data" / "packed")
    assert data["subtitle"] == "Semantic segmentation on Pascal VOC (21 classes): backbones × context modules"
    assert data["earlier"] is None and data["published"] is None
    found = _by_title(data["findings"])
    assert "The earlier study" not in found and "mIoU/speed column" not in found
    assert found["Published results"] == ("This study is on Pascal VOC (21 classes); the earlier study and "
                                          "mmsegmentation's published numbers are on Cityscapes, so they are not "
                                          "compared.")  # fmt: skip
    assert not any("earlier study" in t for title, t in found.items() if title != "Published results")


def test_findings_are_computed_from_the_numbers(built):
    cfg, results, _, out, s = built
    text = " ".join(_text(out).split())
    first = s.index[s["status"] != "missing"][0]
    base = majority_baseline(np.load(results / cfg.experiment / first / "seed0" / "confusion.npy"))
    assert (f"Predicting {base['class']}, the most frequent class of the validation labels, everywhere scores "
            f"{base['miou'] * 100:.2f} mIoU") in text  # fmt: skip
    low = s["miou"].idxmin()
    assert f"the models score from {s.at[low, 'miou']:.2f} ({display_name(low)}, " in text
    speedup = s.at["resnet50-ppm", "latency_ms"] / s.at["mobilenetv2-ppm", "latency_ms"]
    drop = s.at["resnet50-ppm", "miou"] - s.at["mobilenetv2-ppm", "miou"]
    assert f"runs {speedup:.2f}× faster than ResNet50-PPM" in text
    assert f"drop of {drop:.2f} mIoU points" in text
    gain = s.at["resnet50-ppm", "miou"] - s.at["resnet18-ppm", "miou"]
    assert f"ResNet18 → ResNet50: {gain:+.2f} mIoU" in text
    assert "ResNet50 → ResNet101: not available (missing ResNet101-PPM)" in text
    best = "PPM" if s.at["resnet18-ppm", "miou"] > s.at["resnet18-aspp", "miou"] else "ASPP"
    assert f"Best context module on ResNet18: {best}" in text
    v3 = s.at["mobilenetv3-ppm", "miou"] - s.at["mobilenetv2-ppm", "miou"]
    assert f"({v3:+.2f} against MobileNetV2-PPM)" in text
    assert "25.17 where 59.25 / 22 × 10 = 26.93" in text and "5.45 where 71.07 / 183 × 10 = 3.88" in text
    assert "not Cityscapes" in text  # the fabricated data is not the real dataset


def test_pages_images_and_fonts(built):
    _, _, root, out, _ = built
    reader = PdfReader(out)
    # Title, findings and tables fill three pages, the eight figures and the run ids three more (report.typ).
    assert len(reader.pages) == 6
    images = [img.name for page in reader.pages for img in page.images]
    assert len(images) == 8  # one raster per figure
    fonts = {str(f["/BaseFont"]) for page in reader.pages for f in page["/Resources"]["/Font"].values()}
    assert all(re.search(r"Libertinus|DejaVu", f) for f in fonts), fonts  # Typst's embedded fonts only
    assert not list((out.parent).glob(".*.tmp"))


def test_best_values_are_marked(built):
    cfg, results, root, _, s = built
    data = report_data(cfg, results, root / "figures", data_root=root / "data" / "packed")
    summary = data["tables"][0]
    miou_col = summary["header"].index("mIoU")
    bold = [row[0]["t"] for row in summary["rows"] if row[miou_col]["b"]]
    best = s["miou"].idxmax()
    assert bold == [display_name(best).split("-")[0]]
    latency_col = summary["header"].index("Latency (ms)")
    assert [r[0]["t"] for r in summary["rows"] if r[latency_col]["b"]] == ["MobileNetV2"]


def _study(tmp_path, rows: dict[str, tuple], comparisons: list[Comparison] = ()) -> Study:
    """A Study over a summary table given as {model: (mIoU, latency ms, GFLOPs)}, one seed each."""
    summary = pd.DataFrame(
        {"status": "complete", "seeds": 1, "miou": [r[0] for r in rows.values()],
         "latency_ms": [r[1] for r in rows.values()], "gflops": [r[2] for r in rows.values()]},
        index=list(rows),
    )  # fmt: skip
    summary["backbone"] = [m.partition("-")[0] for m in rows]
    summary["head"] = [m.partition("-")[2] for m in rows]
    cfg = StudyConfig(experiment="old", models=list(rows))
    return Study(cfg=cfg, root=tmp_path, summary=summary, comparisons=list(comparisons))


def test_earlier_study_numbers_reproduce_its_claims(tmp_path):
    """Fed the earlier study's own table, the findings give its 3.6× speed-up and 9.72-point drop."""
    rows = {"resnet18-ppm": (62.89, 34, None), "resnet50-ppm": (68.97, 79, None), "resnet101-ppm": (71.07, 183, None),
            "mobilenetv2-ppm": (59.25, 22, None), "resnet18-aspp": (62.09, 36, None), "resnet18-ocr": (61.86, 40, None)}  # fmt: skip
    by_title = {f["title"]: f["text"] for f in findings(_study(tmp_path, rows))}
    assert "3.59× faster" in by_title["MobileNetV2 against ResNet50"]
    assert "drop of 9.72 mIoU points" in by_title["MobileNetV2 against ResNet50"]
    depth = by_title["Depth (PPM head)"]
    assert "+6.08 mIoU for 2.32×" in depth and "+2.10 mIoU for 2.32×" in depth
    assert by_title["Context modules"].startswith(f"Best context module on ResNet18: {PPM} ({PPM} 62.89 > {ASPP} 62.09 > "
                                                  f"{OCR}")  # fmt: skip
    assert "lead over the runner-up is 0.80 points, from a single seed" in by_title["Context modules"]
    assert by_title["MobileNetV3"] == "Not available, inputs missing: MobileNetV3-PPM (not among this study's models)."


def test_mobilenet_sentence_says_which_way_the_difference_goes(tmp_path):
    inverted = _study(tmp_path, {"resnet50-ppm": (10.0, 60.0, 9.0), "mobilenetv2-ppm": (11.0, 8.0, 1.0)})
    text = _by_title(findings(inverted))["MobileNetV2 against ResNet50"]
    assert "7.50× faster than ResNet50-PPM (8.0 vs 60.0 ms) and, against expectation, gains 1.00 mIoU points" in text
    assert "(10.00 → 11.00, +10.0 % relative)" in text and "-" not in text.split("points")[1]
    usual = _study(tmp_path, {"resnet50-ppm": (60.0, 60.0, 9.0), "mobilenetv2-ppm": (57.0, 8.0, 1.0)})
    assert (
        "for a drop of 3.00 mIoU points (60.00 → 57.00, -5.0 % relative)"
        in _by_title(findings(usual))["MobileNetV2 against ResNet50"]
    )


def test_mobilenetv3_sentence_follows_its_numbers(tmp_path):
    slower = _study(tmp_path, {"mobilenetv2-ppm": (59.0, 20.0, 10.0), "mobilenetv3-ppm": (57.0, 30.0, 16.0)})
    text = _by_title(findings(slower))["MobileNetV3"]
    assert "(-2.00 against MobileNetV2-PPM) at 30.0 ms (1.50× MobileNetV2's); it is slower and less accurate" in text
    assert "1.60× MobileNetV2's: the extra arithmetic covers all of the extra time" in text
    assert "is off the study's mIoU-latency Pareto front" in text
    faster = _study(tmp_path, {"mobilenetv2-ppm": (59.0, 20.0, 10.0), "mobilenetv3-ppm": (60.0, 15.0, 8.0)})
    text = _by_title(findings(faster))["MobileNetV3"]
    assert "it is faster and more accurate" in text and "lies on the study's" in text
    # The two trades: each names the positive amount it trades.
    cases = {(57.0, 15.0): ", trading 2.00 points for speed", (61.0, 30.0): ", buying 2.00 points with time",
             (57.0, 20.0): "; it is as fast and less accurate"}  # fmt: skip
    for (miou, ms), words in cases.items():
        text = _by_title(findings(_study(tmp_path, {"mobilenetv2-ppm": (59.0, 20.0, 10.0),
                                                    "mobilenetv3-ppm": (miou, ms, 8.0)})))["MobileNetV3"]  # fmt: skip
        assert words in text and "-2.00 points" not in text


def test_direction_words_follow_the_sign_of_the_number(tmp_path):
    """Every sentence with a direction word, each sign: the word changes, the number printed stays positive."""
    r50_mv2 = {  # (MobileNetV2 mIoU, ms) against ResNet50-PPM at 60.0 mIoU, 20.0 ms
        (57.0, 8.0): "runs 2.50× faster than ResNet50-PPM (8.0 vs 20.0 ms) for a drop of 3.00 mIoU points",
        (61.0, 8.0): "runs 2.50× faster than ResNet50-PPM (8.0 vs 20.0 ms) and, against expectation, gains 1.00 mIoU",
        (57.0, 25.0): "runs, against expectation, 1.25× slower than ResNet50-PPM (25.0 vs 20.0 ms) and drops 3.00 mIoU",
        (61.0, 25.0): "runs, against expectation, 1.25× slower than ResNet50-PPM (25.0 vs 20.0 ms) and gains 1.00 mIoU",
        (60.0, 20.0): "runs as fast as ResNet50-PPM (20.0 vs 20.0 ms) and drops 0.00 mIoU points",
    }  # fmt: skip
    for (miou, ms), words in r50_mv2.items():
        text = _by_title(findings(_study(tmp_path, {"resnet50-ppm": (60.0, 20.0, 9.0),
                                                    "mobilenetv2-ppm": (miou, ms, 1.0)})))  # fmt: skip
        sentence = text["MobileNetV2 against ResNet50"]
        assert words in sentence, sentence
        assert "× faster" not in sentence or ms < 20.0
        assert not re.search(r"(drop of|drops|gains) -", sentence) and "0.80× faster" not in sentence
    # Depth: a signed change, "per extra ms" only when the deeper model is slower.
    worse = _study(tmp_path, {"resnet18-ppm": (62.0, 30.0, 1.0), "resnet50-ppm": (61.0, 60.0, 1.0)})
    depth = _by_title(findings(worse))["Depth (PPM head)"]
    assert "ResNet18 → ResNet50: -1.00 mIoU for 2.00× the latency, -0.033 points per extra ms" in depth
    faster = _study(tmp_path, {"resnet18-ppm": (62.0, 30.0, 1.0), "resnet50-ppm": (63.0, 20.0, 1.0)})
    depth = _by_title(findings(faster))["Depth (PPM head)"]
    assert "ResNet18 → ResNet50: +1.00 mIoU for 0.67× the latency;" in depth + ";" and "per extra ms" not in depth
    # Context modules: a significant pair is named best first, whichever way it was stored.
    for stored in (Comparison("resnet18-ocr", "resnet18-ppm", -2.0, -3.0, -1.0),
                   Comparison("resnet18-ppm", "resnet18-ocr", 2.0, 1.0, 3.0)):  # fmt: skip
        rows = {"resnet18-ppm": (63.0, 30.0, 1.0), "resnet18-ocr": (61.0, 30.0, 1.0)}
        context = _by_title(findings(_study(tmp_path, rows, [stored])))["Context modules"]
        assert "its lead over the runner-up is 2.00 points (95% CI [+1.00, +3.00]: significant)" in context
    rows = {"resnet18-ppm": (63.0, 30.0, 1.0), "resnet18-ocr": (61.0, 30.0, 1.0), "resnet18-aspp": (60.0, 30.0, 1.0)}
    # The order of a significant pair follows its difference, even one that disagrees with the ranked means.
    pairs = [Comparison("resnet18-aspp", "resnet18-ppm", -3.0, -4.0, -2.0),
             Comparison("resnet18-ocr", "resnet18-aspp", -1.5, -2.5, -0.5),
             Comparison("resnet18-ppm", "resnet18-ocr", 2.0, -1.0, 3.0)]  # fmt: skip
    context = _by_title(findings(_study(tmp_path, rows, pairs)))["Context modules"]
    assert f"2 differ significantly ({PPM} > {ASPP}, {ASPP} > {OCR})" in context


def test_partial_study_without_figures_and_the_command(tmp_path):
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text("experiment: fab\nmodels: [resnet18-ppm, resnet50-ppm, mobilenetv2-ppm]\nseeds: [0, 1]\n")
    _, results = fabricate_results(tmp_path)  # the config above keeps three of the fabricated models
    (results / "fab" / "comparisons.csv").unlink()  # the intervals are then bootstrapped in memory
    parser = argparse.ArgumentParser()
    _, add_arguments, run = COMMANDS["report"]
    add_arguments(parser)
    out = tmp_path / "out" / "report.pdf"
    args = parser.parse_args(
        ["--config", str(cfg_path), "--results", str(results), "--figures", str(tmp_path / "none"), "--out", str(out)]
    )
    assert args.template is None and DEFAULT_TEMPLATE.is_file()
    assert run(args) == 0
    text = " ".join(_text(out).split())
    assert "figures.json not found" in text and "Missing (no results yet)" not in text
    assert "comparisons.csv not found" in text and "the per-image matrices directly" in text  # Typst may hyphenate
    assert "MobileNetV3. Not available, inputs missing: MobileNetV3-PPM (not among this study's models)." in text
    assert len(PdfReader(out).pages) >= 1 and not any(p.images for p in PdfReader(out).pages)

    # A template that does not compile: a clear error, and the previous PDF stays as it was.
    before = out.read_bytes()
    broken = tmp_path / "broken.typ"
    broken.write_text("#let x = (\n")
    args.template = broken
    with pytest.raises(ValueError, match="broken.typ: Typst could not typeset"):
        run(args)
    assert out.read_bytes() == before


EARLIER_ROWS = {"resnet18-ppm": (62.89, 34, None), "resnet50-ppm": (68.97, 79, None),
                "resnet18-aspp": (62.09, 36, None), "resnet18-ocr": (61.86, 40, None)}  # fmt: skip


def test_significance_wording_follows_the_interval(tmp_path):
    """The earlier study's ranking with intervals: a difference is significant only when its interval excludes 0."""
    close = [Comparison("resnet18-ppm", "resnet18-aspp", 0.80, -0.35, 1.95),
             Comparison("resnet18-ppm", "resnet18-ocr", 1.03, 0.12, 1.90),
             Comparison("resnet18-aspp", "resnet18-ocr", 0.23, -0.90, 1.31),
             Comparison("resnet50-ppm", "resnet18-ppm", 6.08, 5.10, 7.02)]  # fmt: skip
    by_title = {f["title"]: f["text"] for f in findings(_study(tmp_path, EARLIER_ROWS, close))}
    context = by_title["Context modules"]
    assert "lead over the runner-up is 0.80 points (95% CI [-0.35, +1.95]: not distinguishable)" in context
    apart = f"Of the 3 pairs of modules, 1 differs significantly ({PPM} > {OCR}); the others are not distinguishable"
    assert apart in context
    assert "ResNet18 → ResNet50: +6.08 mIoU (95% CI [+5.10, +7.02]: significant) for 2.32×" in by_title[
        "Depth (PPM head)"]  # fmt: skip

    # The same ranking with a clear lead: significant; stored the other way round, the comparison is flipped.
    clear = [Comparison("resnet18-aspp", "resnet18-ppm", -0.80, -1.20, -0.41)]
    context = _by_title(findings(_study(tmp_path, EARLIER_ROWS, clear)))["Context modules"]
    assert "lead over the runner-up is 0.80 points (95% CI [+0.41, +1.20]: significant)" in context
    assert "not distinguishable" not in context and "Of the" not in context  # one pair only: nothing to add

    # Without per-image matrices nothing is tested, and the report says so rather than implying a verdict.
    by_title = {f["title"]: f["text"] for f in findings(_study(tmp_path, EARLIER_ROWS))}
    assert "significant" not in by_title["Context modules"] and "distinguishable" not in by_title["Context modules"]
    assert by_title["How sure"].startswith("Not available: no run has per-image confusion matrices")
    assert by_title["Training cost"] == "Not available: no run folder holds a cost.json (written by training)."


def test_report_shows_intervals_verdicts_and_cost(built):
    cfg, results, root, out, s = built
    text = _text(out)
    flat = " ".join(text.split())
    study_comparisons = pd.read_csv(results / cfg.experiment / "comparisons.csv")
    assert study_comparisons["significant"].any() and not study_comparisons["significant"].all()  # both cases
    for row in study_comparisons.itertuples():
        verdict = "significant" if row.significant else "not distinguishable"
        pair = f"{display_name(row.a)} − {display_name(row.b)}"
        line = next((ln for ln in text.splitlines() if pair in ln), None)
        assert line is not None and f"{row.diff:+.2f}" in line and line.rstrip().endswith(verdict), (pair, line)
    ppm_aspp = study_comparisons.set_index("pair").loc["resnet18-ppm vs resnet18-aspp"]
    lead_word = "significant" if ppm_aspp["significant"] else "not distinguishable"
    assert f"{abs(ppm_aspp['diff']):.2f} points (95% CI" in flat and f": {lead_word})" in flat
    for model in ("resnet18-ppm", "resnet50-ppm"):
        row = s.loc[model]
        assert f"{row['miou_lo']:.2f}–{row['miou_hi']:.2f}" in text  # the summary's interval, in the tables
        assert f"{row['train_gpu_hours']:.3g}" in text
    assert "Train (GPU-h)" in text and "Scores with 95% intervals" in text and "Pairwise mIoU differences" in text
    assert "the training seed dominates for ResNet18-PPM" in flat  # fabricated seeds differ more than images do
    assert f"{s['train_gpu_hours'].min():.3g} GPU-h (MobileNetV3-PPM)" in flat
    assert "kWh of GPU energy measured" in flat


def test_verdicts_and_method_follow_the_holm_adjusted_p(tmp_path):
    """Four differences whose intervals all exclude zero; as one family Holm keeps two (the textbook p-values of
    tests/test_stats.py), and the findings, the differences table and the method sentence say so."""
    rows = {"resnet18-ppm": (63.0, 30.0, None), "resnet50-ppm": (64.0, 60.0, None),
            "resnet18-aspp": (62.0, 31.0, None), "resnet18-ocr": (61.5, 32.0, None)}  # fmt: skip
    family = with_holm([Comparison("resnet50-ppm", "resnet18-ppm", 1.0, 0.1, 1.9, p_value=0.01),
                        Comparison("resnet18-ppm", "resnet18-aspp", 1.0, 0.2, 1.8, p_value=0.04),
                        Comparison("resnet18-ppm", "resnet18-ocr", 1.5, 0.3, 2.7, p_value=0.03),
                        Comparison("resnet18-aspp", "resnet18-ocr", 0.5, 0.1, 0.9, p_value=0.005)])  # fmt: skip
    study = _study(tmp_path, rows, family)
    study.summary["miou_lo"], study.summary["miou_hi"] = study.summary["miou"] - 1, study.summary["miou"] + 1
    by_title = _by_title(findings(study))
    assert "ResNet18 → ResNet50: +1.00 mIoU (95% CI [+0.10, +1.90], Holm p = 0.030: significant)" in by_title[
        "Depth (PPM head)"]  # fmt: skip
    context = by_title["Context modules"]
    assert "runner-up is 1.00 points (95% CI [+0.20, +1.80], Holm p = 0.060: not distinguishable)" in context
    assert f"Of the 3 pairs of modules, 1 differs significantly ({ASPP} > {OCR})" in context
    how = by_title["How sure"]
    assert "adjusted by the Holm–Bonferroni method over the family of 4 pairwise comparisons, is at most 5%" in how
    assert "Each model has one training seed, so the interval covers image sampling only" in how
    diffs = next(t for t in uncertainty_section(study)["tables"] if t["title"] == "Pairwise mIoU differences")
    assert diffs["header"][-2:] == ["Holm p", "Verdict"]
    assert [[c["t"] for c in row[-2:]] for row in diffs["rows"]] == [
        ["0.030", "significant"], ["0.060", "not distinguishable"], ["0.060", "not distinguishable"],
        ["0.020", "significant"]]  # fmt: skip
    assert "family of 4 pairwise comparisons" in diffs["note"] and "image sampling only" in diffs["note"]
    # A family the report shows part of: both sizes are given.
    assert "family of 4 pairwise comparisons (2 of them shown here)" in verdict_rule(_study(tmp_path, rows, family[:2]))
    # Untested comparisons (no family): the verdict is the interval's, and the sentence says it is unadjusted.
    alone = _study(tmp_path, rows, [replace(c, p_holm=math.nan, family=0) for c in family])
    assert "each of the 4 comparisons on its own: not adjusted for multiple comparisons" in verdict_rule(alone)
    assert "Holm" not in _by_title(findings(alone))["Depth (PPM head)"]
    # Several seeds for some models: their intervals hold the seeds, the others' the images only.
    study.summary.loc[["resnet18-ppm", "resnet50-ppm"], "seeds"] = 3
    coverage = interval_coverage(study, list(rows))
    assert "Where a model has several seeds, the training seeds and the validation images are resampled" in coverage
    one = f"{display_name('resnet18-aspp')}, {display_name('resnet18-ocr')}"
    assert f"with one seed ({one}), the interval covers image sampling only" in coverage


def test_report_reads_the_holm_family_of_comparisons_csv(built):
    """The fabricated study's comparisons.csv as the report reads it: one Holm family of five, two seeds for all
    models but MobileNetV3-PPM, whose one-seed spread is blank, never 0."""
    cfg, results, _, _, s = built
    study = load_study(cfg, results)
    study.comparisons = comparisons_from_table(pd.read_csv(results / cfg.experiment / "comparisons.csv"))
    how = _by_title(findings(study))["How sure"]
    assert "over the family of 5 pairwise comparisons, is at most 5%" in how
    assert "with one seed (MobileNetV3-PPM), the interval covers image sampling only" in how
    assert pd.isna(s.at["mobilenetv3-ppm", "miou_std"]) and s.at["resnet18-ppm", "miou_std"] > 0
    scores = next(t for t in uncertainty_section(study)["tables"] if t["title"].startswith("Scores with"))
    row = next(r for r in scores["rows"] if r[0]["t"] == "MobileNetV3-PPM")
    assert row[scores["header"].index("Seed std")]["t"] == "–"



def test_built_report_states_the_holm_family(built):
    _, _, _, out, _ = built
    assert "family of 5 pairwise comparisons" in " ".join(_text(out).split())


def test_the_context_finding_gives_each_modules_size(tmp_path):
    """One head width is not one size: the finding names each module's parameters where the summary has them."""
    rows = {"resnet18-ppm": (62.89, 34, None), "resnet18-aspp": (62.09, 36, None), "resnet18-fcn": (60.0, 30, None)}
    study = _study(tmp_path, rows)
    assert "one width is not one size" not in _by_title(findings(study))["Context modules"]  # no sizes: no claim
    study.summary["params_m"] = [5.04, 10.79, 2.37]
    text = _by_title(findings(study))["Context modules"]
    assert f"one width is not one size: {PPM} 5.0 M, {ASPP} 10.8 M, FCN 2.4 M parameters in all." in text
