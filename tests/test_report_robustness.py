"""The report's robustness section: the table, the findings and the figures from summary.csv's robustness columns,
robustness.csv, robustness_comparisons.csv and the run folders' corrupted samples; and its place in the PDF."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pypdf import PdfReader
from test_figures import fabricate_results

from segmodels.data.labels import NUM_CLASSES, colorize
from segmodels.models.catalog import display_name
from segmodels.report import figures
from segmodels.report.figures import FIGURES, make_figures
from segmodels.report.figures_robustness import _sample_severity, fig_robustness_samples
from segmodels.report.results import load_study
from segmodels.report.robustness import ROBUSTNESS_TITLE, robustness_findings, robustness_section, robustness_table
from segmodels.report.typeset import report_data, write_report
from segmodels.study.robustness import COMPARISONS, TABLE, robustness_columns, robustness_folder
from segmodels.study.summary import run_dir

GROUPS = ["noise", "blur", "weather", "digital"]
ASPP = display_name("resnet18-aspp")  # the catalog's label: "ResNet18-ASPP (1,2,3,6)"
# model → clean, mean, noise, blur, weather, digital, relative: (value, lo, hi); mIoU in %, relative a ratio
SCORES = {
    "resnet18-ppm": [(62.0, 60.5, 63.5), (37.2, 35.0, 39.4), (30.0, 28.0, 32.0), (35.0, 33.0, 37.0),
                     (42.0, 40.0, 44.0), (41.8, 39.8, 43.8), (0.60, 0.57, 0.63)],
    "resnet50-ppm": [(70.0, 68.5, 71.5), (49.0, 47.0, 51.0), (40.0, 38.0, 42.0), (45.0, 43.0, 47.0),
                     (55.0, 53.0, 57.0), (56.0, 54.0, 58.0), (0.70, 0.67, 0.73)],
    "resnet18-aspp": [(63.0, 61.5, 64.5), (45.36, 43.0, 47.7), (33.0, 31.0, 35.0), (50.0, 48.0, 52.0),
                      (48.0, 46.0, 50.0), (50.4, 48.4, 52.4), (0.72, 0.69, 0.75)],
}  # fmt: skip
# robustness.csv's corruptions, not in the registry's order: the report sorts them by group and registry
CORRUPTIONS = {"contrast": "digital", "gaussian_noise": "noise", "snow": "weather", "defocus_blur": "blur",
               "shot_noise": "noise", "motion_blur": "blur", "fog": "weather", "jpeg_compression": "digital"}  # fmt: skip
SEVERITIES = [1, 3, 5]
SAMPLED = {"gaussian_noise": 0, "defocus_blur": 1, "contrast": 3}  # corruption → row; weather has no samples
# metric, a, b, diff, lo, hi, p_holm: one significant difference in relative robustness, none in mean mIoU
COMPARED = [
    ("robustness_rel", "resnet50-ppm", "resnet18-ppm", 0.10, -0.01, 0.21, 0.09),
    ("robustness_rel", "resnet18-aspp", "resnet18-ppm", 0.12, 0.08, 0.16, 0.004),
    ("miou_c_mean", "resnet50-ppm", "resnet18-ppm", 11.8, -1.0, 24.0, 0.08),
    ("miou_c_mean", "resnet18-ppm", "resnet18-aspp", -8.16, -20.0, 3.0, 0.16),
]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def add_robustness(cfg, results, *, samples: bool = True) -> None:
    """Robustness columns in summary.csv, robustness.csv, robustness_comparisons.csv and the samples of each scored
    model's first seed at severity 3 (none for weather, none for ResNet18-ASPP under contrast)."""
    cfg.robustness.enabled, cfg.robustness.severities = True, SEVERITIES
    folder = results / cfg.experiment
    keys = ["miou_c_clean", "miou_c_mean", *(f"miou_c_{g}" for g in GROUPS), "robustness_rel"]
    rows = {m: {"robust_images": 16} | {f"{k}{end}": v for k, t in zip(keys, s, strict=True)
                                        for end, v in zip(("", "_lo", "_hi"), t, strict=True)}
            for m, s in SCORES.items()}  # fmt: skip
    summary = pd.read_csv(folder / "summary.csv", dtype={"mlflow_run_ids": str})
    scored = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=robustness_columns(GROUPS))
    summary.join(scored, on="model").to_csv(folder / "summary.csv", index=False)
    drop = {"noise": 0.10, "blur": 0.08, "weather": 0.05, "digital": 0.04}  # per severity step
    table = [{"model": m, "corruption": c, "group": g, "severity": k, "miou": s[0][0] * (1 - drop[g] * k),
              "miou_clean": s[0][0], "seeds": 2, "images": 16}
             for m, s in SCORES.items() for c, g in CORRUPTIONS.items() for k in SEVERITIES]  # fmt: skip
    pd.DataFrame(table).to_csv(folder / TABLE, index=False)
    compared = [{"metric": metric, "pair": f"{a} vs {b}", "group": "backbones" if "50" in a else "context modules",
                 "a": a, "b": b, "diff": d, "lo": lo, "hi": hi, "significant": p <= 0.05, "seeds_a": 2, "seeds_b": 2,
                 "resamples": 2000, "confidence": 0.95, "p_value": p / 2, "p_holm": p, "family": 2}
                for metric, a, b, d, lo, hi, p in COMPARED]  # fmt: skip
    pd.DataFrame(compared).to_csv(folder / COMPARISONS, index=False)
    if not samples:
        return
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), 4)[None, :].repeat(24, 0)[:, :64]
    for m in SCORES:
        for corruption in SAMPLED:
            if (m, corruption) == ("resnet18-aspp", "contrast"):
                continue
            out = robustness_folder(run_dir(results, cfg, m, 0), corruption, 3) / "samples"
            out.mkdir(parents=True)
            for index in (2, 5):  # the first index that exists: 2
                stem = f"{index:04d}_frankfurt_000000_{index:06d}_leftImg8bit"
                pred = np.where(rng.random(truth.shape) > 0.7, rng.integers(0, NUM_CLASSES, truth.shape), truth)
                (out / f"{stem}.png").write_bytes(_png(colorize(pred.astype(np.uint8))))
                (out / f"{stem}_input.png").write_bytes(_png(rng.integers(0, 255, (24, 64, 3), dtype=np.uint8)))
                (out / f"{stem}_gt.png").write_bytes(_png(colorize(truth)))


@pytest.fixture(scope="module")
def robust(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    cfg, results = fabricate_results(root)
    add_robustness(cfg, results)
    index = make_figures(cfg, results, root / "figures", log=lambda _: None)
    return cfg, results, root, index


def _cells(table: dict) -> dict[str, dict[str, dict]]:
    """Display name → header → cell, no-break spaces plain."""
    return {row[0]["t"]: {h: {**c, "t": c["t"].replace("\u00a0", " ")} for h, c in zip(table["header"], row, strict=True)}
            for row in table["rows"]}  # fmt: skip


def _flat(pdf) -> str:
    text = re.sub(r"-\s*\n\s*", "-", "\n".join(page.extract_text() for page in PdfReader(pdf).pages))
    return " ".join(text.replace("\u00a0", " ").split())


def test_the_table_has_a_row_per_scored_model_with_intervals_and_the_best_in_bold(robust):
    cfg, results, _, _ = robust
    table = robustness_table(load_study(cfg, results))
    assert table["title"] == ROBUSTNESS_TITLE
    assert table["header"] == ["Model", "Clean", "Mean", "Noise", "Blur", "Weather", "Digital", "Relative"]
    assert table["groups"] == [["", 1], ["mIoU (%)", 6], ["", 1]] and table["align"] == "lrrrrrrr"
    cells = _cells(table)
    assert list(cells) == ["ResNet18-PPM", "ResNet50-PPM", ASPP]  # the summary's order; others unscored
    assert cells["ResNet50-PPM"]["Mean"]["t"] == "49.00 (47.00 to 51.00)"
    assert cells[ASPP]["Relative"]["t"] == "0.72 (0.69 to 0.75)"
    bold = {h: [m for m, row in cells.items() if row[h]["b"]] for h in table["header"][1:]}
    assert bold == {"Clean": ["ResNet50-PPM"], "Mean": ["ResNet50-PPM"], "Noise": ["ResNet50-PPM"],
                    "Blur": [ASPP], "Weather": ["ResNet50-PPM"], "Digital": ["ResNet50-PPM"],
                    "Relative": [ASPP]}  # fmt: skip
    note = table["note"]
    assert "first 16 validation images" in note and "severities 1, 3, 5" in note and "95% paired bootstrap" in note
    assert "Noise: Gaussian noise, Shot noise; Blur: Defocus blur, Motion blur; Weather: Snow, Fog" in note


def test_the_findings_name_the_models_and_their_numbers(robust):
    cfg, results, _, _ = robust
    found = {f["title"]: f["text"] for f in robustness_findings(load_study(cfg, results))}
    ranking = found["Most and least robust"]
    assert ranking.startswith(f"Most robust: {ASPP} keeps 0.72 of its clean mIoU under corruption (95% CI "
                              "0.69–0.75): 45.36 mean corruption mIoU against 63.00 clean; least robust")  # fmt: skip
    assert "least robust: ResNet18-PPM keeps 0.60 of its clean mIoU under corruption (95% CI 0.57–0.63)" in ranking
    assert "The highest mean corruption mIoU is ResNet50-PPM's, 49.00 (95% CI 47.00–51.00)" in ranking
    groups = found["By corruption group"]
    assert "hardest first: noise, 0.57 (ResNet50-PPM) to 0.48 (ResNet18-PPM);" in groups  # 40/70 and 30/62
    assert groups.index("noise,") < groups.index("blur,") and f"blur, 0.79 ({ASPP})" in groups
    differences = found["Differences"]
    assert ("In relative robustness (1 of 2 pairs significant, Holm-adjusted over 2 pairs): "
            f"{ASPP} keeps 0.72 "
            "of its clean mIoU against ResNet18-PPM's 0.60 (+0.120; 95% CI [+0.080, +0.160], Holm p = 0.004: "
            "significant).") in differences  # fmt: skip
    assert "ResNet50-PPM keeps 0.70" not in differences  # not significant: not listed
    assert ("In mean corruption mIoU no difference among the 2 pairs is significant, Holm-adjusted over 2 pairs; the "
            "largest: ResNet50-PPM scores 49.00 mean corruption mIoU against ResNet18-PPM's 37.20 (+11.80 points; 95% "
            "CI [-1.00, +24.00], Holm p = 0.080: not distinguishable).") in differences  # fmt: skip


def test_the_findings_say_so_without_comparisons(robust, tmp_path):
    cfg, results, _, _ = robust
    study = load_study(cfg, results)
    study.root = tmp_path  # no robustness_comparisons.csv there
    found = {f["title"]: f["text"] for f in robustness_findings(study)}
    assert (
        found["Differences"] == f"Not tested: no {COMPARISONS} beside summary.csv (written by 'segmodels summarize')."
    )


def test_the_figures_are_drawn_and_listed(robust):
    cfg, _, root, index = robust
    names = [f["name"] for f in index["figures"]]
    assert names == [*FIGURES, "robustness_heatmap", "robustness_severity", "robustness_samples"]
    assert index["skipped"] == []
    assert json.loads((root / "figures" / "figures.json").read_text()) == index
    by_name = {f["name"]: f for f in index["figures"]}
    for name in ("robustness_heatmap", "robustness_severity", "robustness_samples"):
        assert (root / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (root / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert by_name[name]["models"] == list(SCORES)  # the summary's order
    assert "mean over severities 1, 3, 5" in by_name["robustness_heatmap"]["caption"]
    samples = by_name["robustness_samples"]["caption"]
    assert "image #2 under each corruption group at severity 3" in samples
    assert "rows: Gaussian noise, Defocus blur, Contrast)" in samples  # weather: no samples, no row


def test_the_samples_at_the_nearest_severity_and_skipped_without_any(robust, tmp_path, monkeypatch):
    cfg, results, _, _ = robust
    study = load_study(cfg, results)
    assert _sample_severity(study, pd.DataFrame({"severity": [1, 2, 4, 5]})) == 2
    assert _sample_severity(study, pd.DataFrame({"severity": [4, 5]})) == 4
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("robustness"))
    monkeypatch.setattr(figures, "FIGURES", {})  # the robustness figures alone
    index = make_figures(cfg, copy, tmp_path / "figures", log=lambda _: None)
    skipped = {s["name"]: s["reason"] for s in index["skipped"]}
    assert list(skipped) == ["robustness_samples"] and "no sample images" in skipped["robustness_samples"]
    assert isinstance(fig_robustness_samples(load_study(cfg, copy)), str)


def test_no_section_without_the_columns(tmp_path):
    cfg, results = fabricate_results(tmp_path)
    study = load_study(cfg, results)
    assert robustness_section(study) is None and robustness_table(study) is None
    data = report_data(cfg, results, tmp_path / "no-figures", data_root=tmp_path / "data" / "packed")
    assert data["robustness"] is None
    summary = results / cfg.experiment / "summary.csv"  # the columns there, every one blank: none scored yet
    table = pd.read_csv(summary, dtype={"mlflow_run_ids": str})
    table.reindex(columns=[*table.columns, *robustness_columns(GROUPS)]).to_csv(summary, index=False)
    assert robustness_section(load_study(cfg, results)) is None


def test_the_report_has_the_robustness_section(robust):
    cfg, results, root, index = robust
    out = root / "report.pdf"
    write_report(cfg, results, root / "figures", out, data_root=root / "data" / "packed", log=lambda _: None)
    flat = _flat(out)
    sections = ("Uncertainty and cost", "Robustness", "Comparison with the earlier study", "Figures")
    at = [re.search(rf"\d\. {s}", flat).start() for s in sections]  # the numbered headings
    assert at == sorted(at)
    robustness = flat[at[1] : at[2]]
    assert "49.00 (47.00 to 51.00)" in robustness and "0.72 (0.69 to 0.75)" in robustness
    assert f"Most robust: {ASPP} keeps 0.72" in robustness and "Holm p = 0.004: significant" in robustness
    for entry in index["figures"][-3:]:  # the robustness figures in their section, not again under Figures
        words = " ".join(entry["caption"].split()[:6])
        assert words in robustness and flat.count(words) == 1
