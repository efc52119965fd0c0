"""What a family of comparisons can show at a resample count, which runs the report's design tests, and the
variance of the bootstrap over seeds and images on a simulated crossed design: known answers throughout."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segmodels.cli import main
from segmodels.metrics import compute_metrics
from segmodels.report import design
from segmodels.report.design import fixed_pairs
from segmodels.report.findings import findings
from segmodels.report.results import Study
from segmodels.report.uncertainty import uncertainty_section
from segmodels.report.verdicts import verdict, verdict_rule
from segmodels.study import stats
from segmodels.study.config import StatsConfig, StudyConfig, load_config
from segmodels.study.matrix import run_names
from segmodels.study.significance import (
    auto_resamples,
    holm_floor,
    resample_count,
    resamples_needed,
    with_holm,
)
from segmodels.study.stats import bootstrap_models, bootstrap_study, compare, study_family, study_pairs

ROOT = Path(__file__).resolve().parents[1]


# --- how many resamples a family needs ------------------------------------------------------------------------


def test_the_floor_and_the_resamples_a_family_needs():
    """The smallest Holm-adjusted p of R resamples in a family of m is 2m / (R + 1): 1,000 resamples leave the
    demo's family of 12 at 24/1001 and a family of 26 at 52/1001, above 5%; 2m/alpha − 1 resamples reach alpha
    exactly, one fewer does not; auto asks for ten times that, at least 1,000."""
    assert holm_floor(1000, 12) == pytest.approx(24 / 1001) and holm_floor(1000, 26) == pytest.approx(52 / 1001)
    assert holm_floor(1000, 26) > 0.05 and holm_floor(1, 3) == 1.0 and math.isnan(holm_floor(1000, 0))
    assert resamples_needed(26, 0.05) == 1039 and resamples_needed(25, 0.05) == 999
    for family in (1, 5, 12, 17, 26, 153):
        need = resamples_needed(family, 0.05)
        assert holm_floor(need, family) <= 0.05 < holm_floor(need - 1, family)
    assert auto_resamples(12, 0.95) == 4799 and holm_floor(4799, 12) == pytest.approx(0.005)
    assert auto_resamples(17, 0.95) == 6799 and auto_resamples(26, 0.95) == 10399
    assert auto_resamples(12, 0.99) == 23999  # alpha 1%: the floor at 0.001
    assert auto_resamples(1, 0.95) == auto_resamples(0, 0.95) == 1000  # never fewer than 1,000
    assert resample_count("auto", 0.95, 12) == resample_count(None, 0.95, 12) == 4799
    assert resample_count(300, 0.95, 12) == 300  # a number is used as given
    with pytest.raises(ValueError, match="stats.resamples must be auto or a number"):
        resample_count("many", 0.95, 12)


def _better_worse(n: int = 30) -> dict[str, list[np.ndarray]]:
    """Two models on ``n`` images, one better on every image: every resample's difference is positive."""
    rng = np.random.default_rng(3)
    worse = rng.integers(0, 20, size=(n, 4, 4))
    worse[:, np.arange(4), np.arange(4)] = rng.integers(100, 300, size=(n, 4))
    better = worse.copy()
    better[:, np.arange(4), np.arange(4)] += 40
    return {"better": [better], "worse": [worse]}


def test_at_1000_resamples_a_family_of_26_rejects_nothing_and_auto_does():
    """The same clear difference tested 26 times: at 1,000 resamples every Holm p is 52/1001 > 5%, so none may be
    called significant, and the comparison says it was not testable; auto draws 10,399 resamples, every Holm p is
    52/10400 = 0.005, at the floor, and all are significant."""
    boots = bootstrap_models(_better_worse(), StatsConfig(resamples=1000))
    family = with_holm([compare(boots, "better", "worse")] * 26)
    c = family[0]
    assert c.p_value == pytest.approx(2 / 1001) and c.p_holm == pytest.approx(52 / 1001) and c.resamples == 1000
    assert c.lo > 0 and not c.significant and not c.testable and c.at_floor
    boots = bootstrap_models(_better_worse(), StatsConfig(), family=26)
    assert boots["better"].resamples == 10399
    c = with_holm([compare(boots, "better", "worse")] * 26)[0]
    assert c.p_holm == pytest.approx(0.005) and c.floor == pytest.approx(0.005)
    assert c.significant and c.testable and c.at_floor


# --- the report's words ----------------------------------------------------------------------------------------

ROWS = {"resnet18-ppm": 63.0, "resnet50-ppm": 64.0, "resnet18-aspp": 62.0, "resnet18-ocr": 61.5}


def _study(tmp_path: Path, comparisons, resamples: int | str | None = "auto", rows=ROWS) -> Study:
    summary = pd.DataFrame({"status": "complete", "seeds": 1, "miou": list(rows.values())}, index=list(rows))
    summary["miou_lo"], summary["miou_hi"] = summary["miou"] - 1, summary["miou"] + 1
    cfg = StudyConfig(experiment="s", models=list(rows))
    cfg.stats = StatsConfig(resamples=resamples)
    return Study(cfg=cfg, root=tmp_path, summary=summary, comparisons=list(comparisons))


def _family(resamples: int, size: int, p_value: float) -> list:
    """A Holm family of ``size``: the four ROWS pairs first, the rest among them again (as a larger study would)."""
    pairs = [("resnet50-ppm", "resnet18-ppm"), ("resnet18-ppm", "resnet18-aspp"), ("resnet18-ppm", "resnet18-ocr"),
             ("resnet18-aspp", "resnet18-ocr")]  # fmt: skip
    return with_holm([stats.Comparison(*pairs[i % 4], 1.0, 0.4, 1.6, p_value=p_value, resamples=resamples)
                      for i in range(size)])  # fmt: skip


def test_the_report_never_calls_significant_what_the_resamples_could_not_reach(tmp_path):
    family = _family(1000, 26, 2 / 1001)
    study = _study(tmp_path, family, resamples=1000)
    rule = verdict_rule(study)
    assert ("1,000 resamples, as set in stats.resamples: the smallest Holm-adjusted p-value they allow over the "
            "family of 26 is 2·26 / (1,000 + 1) = 0.0519, above 5%, so no comparison can be declared significant at this resample "
            "count; that needs at least 1,039 resamples (auto: 10,399).") in rule  # fmt: skip
    assert verdict(study, "resnet50-ppm", "resnet18-ppm") == (
        "95% CI [+0.40, +1.60], Holm p ≤ 0.052: not testable at 1,000 resamples")
    table = next(t for t in uncertainty_section(study)["tables"] if t["title"] == "Pairwise mIoU differences")
    assert {row[-1]["t"] for row in table["rows"]} == {"not testable at 1,000 resamples"}
    assert not any(row[-1]["b"] for row in table["rows"]) and "0.0519, above 5%" in table["note"]
    text = " ".join(f["text"] for f in findings(study))
    assert ": significant" not in text and "not testable at 1,000 resamples" in text


def test_the_report_says_which_count_was_used_and_why(tmp_path):
    auto = _study(tmp_path, _family(10399, 26, 2 / 10400))
    assert ("10,399 resamples, chosen for the family's size (stats.resamples: auto): the smallest Holm-adjusted "
            "p-value they allow over the family of 26 is 2·26 / (10,399 + 1) = 0.0050, at most a tenth of 5%; ≤: no "
            "resample crossed zero, so the p-value is at most that floor.") in verdict_rule(auto)  # fmt: skip
    assert verdict(auto, "resnet50-ppm", "resnet18-ppm") == "95% CI [+0.40, +1.60], Holm p ≤ 0.005: significant"
    # The demo's family of 12 at 1,000 resamples: reachable, but a p-value at 0.024 says more about R than the data.
    demo = _study(tmp_path, _family(1000, 12, 2 / 1001), resamples=1000)
    assert ("the family of 12 is 2·12 / (1,000 + 1) = 0.0240, more than a tenth of 5%: a p-value near it is "
            "bounded by the resample count, not by the data (auto: 4,799 resamples)") in verdict_rule(demo)
    assert verdict(demo, "resnet50-ppm", "resnet18-ppm").endswith("Holm p ≤ 0.024: significant")
    assert "1,000 resamples, not sized for this family: " in verdict_rule(replace(demo, cfg=StudyConfig()))  # auto
    inside = _study(tmp_path, _family(1000, 12, 0.003), resamples=1000)  # not at the floor: an ordinary p
    assert verdict(inside, "resnet50-ppm", "resnet18-ppm").endswith("Holm p = 0.036: significant")
    assert "no resample crossed zero" not in verdict_rule(inside)


def test_runs_in_no_comparison_are_named(tmp_path):
    rows = {**ROWS, "mitb0-segformer": 60.0}
    study = _study(tmp_path, _family(4799, 4, 0.01), rows=rows)
    assert verdict_rule(study).endswith("In no comparison, so untested: MiT-B0-SegFormer (MLP).")
    assert "untested" not in verdict_rule(_study(tmp_path, _family(4799, 4, 0.01)))


# --- which runs the design compares ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "family"), [("cityscapes-mmseg.yaml", 17), ("voc.yaml", 7), ("demo.yaml", 12)])
def test_every_run_of_the_bundled_studies_enters_a_comparison(config, family):
    """Heads are compared on every backbone the study runs several on; a head run only as a variant (DeepLabV3's
    ASPP as ``aspp_deeplabv3``) through that run. The mmsegmentation study: its 5 backbone pairs and 3 head pairs
    on each of its 4 backbones."""
    cfg = load_config(ROOT / "config" / config)
    names = run_names(cfg)
    pairs = study_pairs(names, fixed_pairs(cfg))
    assert len(pairs) == study_family(names, fixed_pairs(cfg)) == family
    assert {m for _, a, b in pairs for m in (a, b)} == set(names)
    assert len(set(map(frozenset, (p[1:] for p in pairs)))) == family  # no pair twice
    if config == "cityscapes-mmseg.yaml":
        for backbone in ("resnet18c", "resnet50c", "resnet101c", "mobilenetv2"):
            group = f"context modules ({design.catalog.backbone(backbone).label})"
            assert [(a, b) for g, a, b in pairs if g == group] == [
                (f"{backbone}-ppm", f"{backbone}-aspp_deeplabv3"), (f"{backbone}-ppm", f"{backbone}-fcn"),
                (f"{backbone}-aspp_deeplabv3", f"{backbone}-fcn")]  # fmt: skip


def test_a_variant_stands_in_only_where_the_head_has_no_reference_run():
    both = StudyConfig(models=["resnet18-ppm", "resnet18-aspp", "resnet18-aspp_deeplabv3"])
    pairs = study_pairs(run_names(both), fixed_pairs(both))
    assert ("context modules (ResNet18)", "resnet18-ppm", "resnet18-aspp") in pairs
    assert ("variants", "resnet18-aspp_deeplabv3", "resnet18-aspp") in pairs  # compared with its plain head instead
    assert not any("resnet18-aspp_deeplabv3" in (a, b) for g, a, b in pairs if g.startswith("context"))
    two = StudyConfig(models=["resnet50-ppm", "resnet50-aspp_x", "resnet50-aspp_y"])  # ambiguous: no stand-in
    assert study_pairs(run_names(two), fixed_pairs(two)) == []


# --- the resample count reaches the files ---------------------------------------------------------------------


def _per_image(rng: np.random.Generator, n: int, diag: float) -> np.ndarray:
    m = rng.integers(0, 20, size=(n, 19, 19))
    m[:, np.arange(19), np.arange(19)] = (rng.integers(20, 60, size=(n, 19)) * diag).astype(int)
    return m


def test_summary_and_compare_use_the_count_sized_for_the_family(tmp_path, capsys):
    """Four runs whose design tests 4 pairs (two backbones under PPM, three heads on ResNet18): auto gives
    2·4·10/0.05 − 1 = 1,599 resamples, and summary.csv and comparisons.csv both record them; a family of 12:
    4,799. At 30 resamples the floor 8/31 is above 5%: nothing is testable, 159 resamples would be needed."""
    rng = np.random.default_rng(0)
    models = ["resnet18-ppm", "resnet50-ppm", "resnet18-aspp", "resnet18-ocr"]
    for i, model in enumerate(models):
        run = tmp_path / "s" / model / "seed0"
        run.mkdir(parents=True)
        per_image = _per_image(rng, 12, 5.0 + i)
        np.save(run / "confusion_per_image.npy", per_image)
        (run / "metrics.json").write_text(json.dumps({k: compute_metrics(per_image.sum(0))[k]
                                                      for k in ("miou", "macc", "allacc")}))  # fmt: skip
    cfg = StudyConfig(experiment="s", models=models)
    assert study_family(models, fixed_pairs(cfg)) == 4
    boots, _ = bootstrap_study(cfg, tmp_path, design=[("x", "resnet18-ppm", "resnet50-ppm")] * 12)
    assert {b.resamples for b in boots.values()} == {4799}
    assert {b.resamples for b in bootstrap_study(cfg, tmp_path)[0].values()} == {1000}  # no design: no family
    config = tmp_path / "study.yaml"
    config.write_text(f"experiment: s\nmodels: [{', '.join(models)}]\n")
    assert main(["summarize", "--config", str(config), "--results", str(tmp_path)]) == 0
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 0
    assert "4 pairs, one Holm family at alpha 0.05, 4 models, 1599 resamples" in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert summary["boot_resamples"].tolist() == [1599] * 4
    assert pd.read_csv(tmp_path / "s" / "comparisons.csv")["resamples"].tolist() == [1599] * 4
    config.write_text(f"experiment: s\nmodels: [{', '.join(models)}]\nstats: {{resamples: 30}}\n")
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ": significant" not in out and out.count(": not testable at 30 resamples") == 4
    assert "needs at least 159 resamples" in out


# --- the variance over seeds and images on a crossed design ------------------------------------------------------

S, N, PIXELS = 3, 100, 2000


def _crossed(rng: np.random.Generator, seed_sd: float, image_sd: float, both_sd: float) -> list[np.ndarray]:
    """S seeds × N images of a model whose per-image accuracy (points) is 50 + seed effect + image effect +
    interaction, every image of PIXELS pixels: allAcc is then the mean over images, and its seed mean the grand
    mean of the S × N table, whose variance is seed_sd²/S + image_sd²/N + both_sd²/(S·N)."""
    accuracy = (50 + rng.normal(0, seed_sd, (S, 1)) + rng.normal(0, image_sd, (1, N))
                + rng.normal(0, both_sd, (S, N)))  # fmt: skip
    correct = np.round(accuracy / 100 * PIXELS).astype(np.int64)
    m = np.zeros((S, N, 2, 2), dtype=np.int64)
    m[:, :, 0, 0], m[:, :, 0, 1] = correct, PIXELS - correct
    return list(m)


def _mean_bootstrap_variance(datasets: int, sds: tuple[float, float, float]) -> float:
    """The bootstrap variance of the seed-mean allAcc, averaged over simulated studies, each with its own draws."""
    rng = np.random.default_rng(12)
    variances = [bootstrap_models({"m": _crossed(rng, *sds)}, StatsConfig(resamples=200, seed=k))["m"]
                 .samples["allacc"].var(ddof=1) for k in range(datasets)]  # fmt: skip
    return float(np.mean(variances))


def test_the_bootstrap_variance_matches_the_variance_of_the_mean_of_a_crossed_design(monkeypatch):
    """Seeds dominating (sd 2 points against 5 over 100 images): the mean bootstrap variance over 600 simulated
    studies is the analytic 4/3 + 25/100 + 1/300 = 1.587 within 10%. Without the sqrt(S/(S−1)) scaling the seed part
    shrinks to (S−1)/S of itself and the variance to about 0.72 of the truth. Interaction alone: counted twice
    (once in each part), so the variance is about twice the analytic one: too wide, never too narrow."""
    sds = (2.0, 5.0, 1.0)
    truth = sds[0] ** 2 / S + sds[1] ** 2 / N + sds[2] ** 2 / (S * N)
    assert _mean_bootstrap_variance(600, sds) / truth == pytest.approx(1.0, abs=0.1)
    monkeypatch.setattr(stats, "seed_scale", lambda seeds: 1.0)  # the plug-in seed draw
    assert _mean_bootstrap_variance(600, sds) / truth < 0.8
    monkeypatch.undo()
    interaction = (0.0, 5.0, 20.0)
    truth = interaction[1] ** 2 / N + interaction[2] ** 2 / (S * N)
    assert 1.6 < _mean_bootstrap_variance(200, interaction) / truth < 2.4
