"""Paired bootstrap intervals: metric definitions, constructed cases with known answers, reproducibility, files."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from segmodels.cli import main
from segmodels.metrics import compute_metrics, metrics_of_matrices
from segmodels.report.design import fixed_pairs
from segmodels.study.config import StatsConfig, StudyConfig
from segmodels.study.stats import (
    COMPARISON_COLUMNS,
    Comparison,
    bootstrap_models,
    bootstrap_p_value,
    bootstrap_study,
    compare,
    comparisons_from_table,
    comparisons_table,
    holm,
    load_per_image,
    resample_counts,
    resample_seeds,
    resampled_matrices,
    study_comparisons,
    study_pairs,
    with_holm,
)

C = 6


def _per_image(rng: np.random.Generator, n: int, c: int = C, diag: float = 5.0) -> np.ndarray:
    """n random per-image matrices; class 0 never occurs (absent), class 1 is only ever predicted (no truth)."""
    m = rng.integers(0, 20, size=(n, c, c))
    m[:, np.arange(c), np.arange(c)] = (rng.integers(20, 60, size=(n, c)) * diag).astype(int)
    m[:, 0, :] = 0
    m[:, :, 0] = 0
    m[:, 1, :] = 0  # nothing labelled 1, but 1 is predicted: IoU 0, accuracy undefined
    return m.astype(np.int32)


def _sparse_per_image(rng: np.random.Generator, n: int) -> np.ndarray:
    """Images that each show only some classes, so resamples leave classes out entirely."""
    m = _per_image(rng, n)
    for i in range(n):
        m[i, :, rng.choice(np.arange(2, C), size=2, replace=False)] = 0
        m[i, rng.choice(np.arange(2, C), size=2, replace=False), :] = 0
    return m


def test_metrics_of_matrices_match_compute_metrics():
    rng = np.random.default_rng(1)
    per_image = _sparse_per_image(rng, 12)
    counts = resample_counts(12, 40, seed=3)
    stack = resampled_matrices(per_image, counts)
    vectorised = metrics_of_matrices(stack)
    for r in range(len(stack)):
        direct = compute_metrics(stack[r], [f"c{i}" for i in range(C)])
        for key in ("miou", "macc", "allacc"):
            assert vectorised[key][r] == pytest.approx(direct[key], abs=1e-12)
    # The full set, recomputed from the per-image matrices, is what compute_metrics gives on their sum.
    full = compute_metrics(per_image.sum(0))
    assert full["absent"] == ["class0"] and full["no_truth"] == ["class1"]
    boots = bootstrap_models({"m": [per_image]}, StatsConfig(resamples=50))
    for key in ("miou", "macc", "allacc"):
        assert boots["m"].interval[key].estimate == pytest.approx(full[key] * 100, abs=1e-10)
    nothing = metrics_of_matrices(np.zeros((2, C, C)))
    assert np.isnan(nothing["miou"]).all() and np.isnan(nothing["allacc"]).all()
    with pytest.raises(ValueError, match="C, C"):
        metrics_of_matrices(np.zeros((3, 4)))


def test_counts_and_resampled_sums():
    counts = resample_counts(7, 30, seed=5)
    assert counts.shape == (30, 7) and (counts.sum(1) == 7).all() and counts.min() >= 0
    np.testing.assert_array_equal(counts, resample_counts(7, 30, seed=5))
    assert not np.array_equal(counts, resample_counts(7, 30, seed=6))
    per_image = _per_image(np.random.default_rng(0), 7)
    stack = resampled_matrices(per_image, counts)
    for r in (0, 17):
        drawn = np.repeat(np.arange(7), counts[r])  # the images of resample r, with their repeats
        np.testing.assert_array_equal(stack[r], per_image[drawn].sum(0))
    with pytest.raises(ValueError, match="at least one image"):
        resample_counts(0, 10, seed=0)


def test_identical_models_are_not_distinguishable():
    per_image = _per_image(np.random.default_rng(2), 40)
    boots = bootstrap_models({"a": [per_image], "b": [per_image.copy()]}, StatsConfig(resamples=300))
    c = compare(boots, "a", "b")
    assert c.diff == 0 and c.lo <= 0 <= c.hi
    assert c.hi - c.lo < 1e-9  # paired: the same images for both, so the noise cancels exactly
    assert not c.significant
    assert boots["a"].interval["miou"].half_width > 0.1  # while each model alone is uncertain


def test_better_on_every_image_is_significant():
    rng = np.random.default_rng(3)
    worse = _per_image(rng, 30)
    better = worse.copy()
    for i in range(30):  # on every image, some mistakes of every labelled class become correct pixels
        for c in range(2, C):
            moved = better[i, c, (c + 1) % C] // 2
            better[i, c, (c + 1) % C] -= moved
            better[i, c, c] += moved
    per_image_miou = [metrics_of_matrices(m)["miou"] for m in (better, worse)]
    assert (per_image_miou[0] > per_image_miou[1]).all()
    boots = bootstrap_models({"better": [better], "worse": [worse]}, StatsConfig(resamples=500))
    c = compare(boots, "better", "worse")
    assert c.lo > 0 and c.significant and c.lo <= c.diff <= c.hi
    flipped = compare(boots, "worse", "better")
    assert flipped.hi < 0 and flipped.significant and flipped.diff == pytest.approx(-c.diff)
    assert c.flipped() == Comparison("worse", "better", -c.diff, -c.hi, -c.lo, p_value=c.p_value, resamples=500)
    assert c.p_value == flipped.p_value == pytest.approx(2 / 501)  # no resample at or below 0: the floor 2 / (1 + R)


def test_interval_width_matches_the_standard_error_of_a_mean():
    """allAcc over images with equal pixel counts is a mean of per-image accuracies: its bootstrap standard
    deviation is the standard error sd / sqrt(N), and the 95% interval spans about ±1.96 of it."""
    rng = np.random.default_rng(4)
    n, pixels = 400, 1000
    correct = rng.integers(500, 950, size=n)
    per_image = np.zeros((n, 2, 2), dtype=np.int32)
    per_image[:, 0, 0] = correct
    per_image[:, 0, 1] = pixels - correct
    boots = bootstrap_models({"m": [per_image]}, StatsConfig(resamples=2000, seed=1))
    se = (correct / pixels * 100).std(ddof=0) / math.sqrt(n)
    assert boots["m"].boot_std["allacc"] == pytest.approx(se, rel=0.1)
    interval = boots["m"].interval["allacc"]
    assert interval.half_width == pytest.approx(1.96 * se, rel=0.12)
    assert interval.lo < interval.estimate < interval.hi


def test_fixed_seed_reproduces_and_seeds_average():
    rng = np.random.default_rng(5)
    s0, s1, other = _per_image(rng, 25), _per_image(rng, 25, diag=4.0), _per_image(rng, 25)
    cfg = StatsConfig(resamples=200, seed=11)
    first = bootstrap_models({"a": [s0, s1], "b": [other]}, cfg)
    again = bootstrap_models({"a": [s0, s1], "b": [other]}, cfg)
    assert first["a"].interval == again["a"].interval
    assert compare(first, "a", "b") == compare(again, "a", "b")
    moved = bootstrap_models({"a": [s0, s1], "b": [other]}, StatsConfig(resamples=200, seed=12))
    assert moved["a"].interval["miou"] != first["a"].interval["miou"]
    # Two training seeds: the estimate is their mean. Each resample adds an image part, both seeds' mean on the
    # resampled images, and a seed part, the mean of two of the two seeds' full-set scores drawn with replacement
    # less the mean of both, scaled by sqrt(2 / 1); the image std is that of the image part.
    alone = [bootstrap_models({"x": [s]}, cfg)["x"] for s in (s0, s1)]
    a = first["a"]
    assert a.seeds == 2 and a.resamples == 200
    full = np.array([x.interval["miou"].estimate for x in alone])
    assert a.interval["miou"].estimate == pytest.approx(full.mean())
    per_seed = np.stack([x.samples["miou"] for x in alone], axis=1)  # one seed alone: image sampling only
    drawn = resample_seeds(2, 200, 11)
    both = per_seed.mean(axis=1)
    np.testing.assert_allclose(a.samples["miou"], both + math.sqrt(2) * (full[drawn].mean(axis=1) - full.mean()))
    assert a.boot_std["miou"] == pytest.approx(per_seed.mean(axis=1).std(ddof=1))
    values = [x.interval["miou"].estimate for x in alone]
    assert a.seed_std["miou"] == pytest.approx(np.std(values, ddof=1))
    assert math.isnan(first["b"].seed_std["miou"])


def test_seed_draws_are_shared_and_reproducible():
    drawn = resample_seeds(3, 3000, seed=4)
    assert drawn.shape == (3000, 3) and drawn.min() == 0 and drawn.max() == 2
    np.testing.assert_array_equal(drawn, resample_seeds(3, 3000, seed=4))  # every model with three seeds: paired
    assert np.bincount(drawn.ravel()) / drawn.size == pytest.approx([1 / 3] * 3, abs=0.02)
    assert (resample_seeds(1, 50, seed=4) == 0).all()  # one seed: nothing to resample
    with pytest.raises(ValueError, match="at least one seed"):
        resample_seeds(0, 10, seed=0)


def _quality_images(rng: np.random.Generator, difficulty: np.ndarray, quality: float, pixels: int = 2000):
    """Two-class per-image matrices whose share of correct pixels is ``quality`` minus the image's difficulty
    (shared by every model and seed, as hard scenes are), plus a little pixel noise of this run's own."""
    share = np.clip(quality - difficulty + rng.normal(0, 0.005, difficulty.size), 0.05, 0.99)
    correct = np.round(share * pixels / 2).astype(np.int64)
    m = np.zeros((difficulty.size, 2, 2), dtype=np.int64)
    m[:, 0, 0], m[:, 1, 1] = correct, correct
    m[:, 0, 1], m[:, 1, 0] = pixels // 2 - correct, pixels // 2 - correct
    return m.astype(np.int32)


def test_a_difference_within_the_seed_spread_is_not_significant():
    """Three seeds per model whose mIoUs differ by less than their seed-to-seed spread, on many images: image
    sampling alone calls the seed means different, the two-level bootstrap does not; one seed of each, the same
    images, the same gap: significant, and the interval covers the image sampling only."""
    rng = np.random.default_rng(8)
    difficulty = rng.normal(0, 0.05, 400)
    a = [_quality_images(rng, difficulty, 0.80 + off) for off in (0.04, -0.04, 0.0)]
    b = [_quality_images(rng, difficulty, 0.79 + off) for off in (-0.04, 0.04, 0.0)]  # seed effects not aligned
    cfg = StatsConfig(resamples=1000, seed=3)
    boots = bootstrap_models({"a": a, "b": b}, cfg)
    c = compare(boots, "a", "b")
    assert 0 < c.diff < min(boots["a"].seed_std["miou"], boots["b"].seed_std["miou"])
    assert not c.significant and c.lo < 0 < c.hi and c.p_value > 0.05
    # The same data through image sampling alone (every seed in every resample): the interval excludes zero.
    counts = resample_counts(400, 1000, seed=3)
    images_only = [np.mean([metrics_of_matrices(resampled_matrices(s, counts))["miou"] for s in runs], axis=0) * 100
                   for runs in (a, b)]  # fmt: skip
    assert np.percentile(images_only[0] - images_only[1], 2.5) > 0
    # One seed each, with the same images and the same one-point gap: significant.
    single = bootstrap_models({"a": [a[2]], "b": [b[2]]}, cfg)
    one = compare(single, "a", "b")
    assert one.significant and one.lo > 0 and one.p_value < 0.01 and one.seeds_a == one.seeds_b == 1
    assert single["a"].interval["miou"].half_width < boots["a"].interval["miou"].half_width


def test_holm_on_a_textbook_case():
    """Four p-values at alpha 0.05: uncorrected all four reject; Holm compares the smallest with 0.05/4, the next
    with 0.05/3, and stops at 0.03 > 0.05/2, so only 0.005 and 0.01 are rejected."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [q <= 0.05 for q in adjusted] == [True, False, False, True]
    nan_kept = holm([0.01, math.nan, 0.04])  # an untested pair is not counted in the family
    assert nan_kept[0] == pytest.approx(0.02) and math.isnan(nan_kept[1]) and nan_kept[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_bootstrap_p_value_counts_both_tails():
    assert bootstrap_p_value(np.full(999, 1.5)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.zeros(999)) == 1.0  # no difference at all
    d = np.r_[np.full(30, -1.0), np.full(969, 2.0)]
    assert bootstrap_p_value(d) == pytest.approx(2 * 31 / 1000) == bootstrap_p_value(-d)
    assert math.isnan(bootstrap_p_value(np.full(5, np.nan)))


def test_verdicts_use_the_adjusted_p_value():
    """Every interval below excludes zero, so alone each is significant; as one family of four, Holm keeps two."""
    alone = [Comparison("a", "b", 1.0, 0.1, 1.9, p_value=p) for p in (0.01, 0.04, 0.03, 0.005)]
    assert all(c.significant and not c.tested for c in alone)
    family = with_holm(alone)
    assert [c.significant for c in family] == [True, False, False, True]
    assert [c.family for c in family] == [4] * 4 and family[1].p_holm == pytest.approx(0.06)
    assert family[1].flipped().p_holm == family[1].p_holm and not family[1].flipped().significant
    strict = [replace(c, confidence=0.99) for c in family]  # alpha 0.01: none of the adjusted p-values is below
    assert not any(c.significant for c in strict)


def test_study_family_is_adjusted_and_round_trips_through_the_table():
    rng = np.random.default_rng(9)
    base = _per_image(rng, 30, c=19)
    models = {m: [_per_image(rng, 30, c=19, diag=d)] for m, d in (("resnet18-ppm", 5.0), ("resnet50-ppm", 5.3),
              ("mobilenetv2-ppm", 4.0), ("resnet18-aspp", 5.0), ("resnet18-ocr", 5.1))}  # fmt: skip
    models["resnet18-fcn"] = [base]
    cfg = StatsConfig(resamples=400, seed=1)
    boots = bootstrap_models(models, cfg)
    family = study_comparisons(boots, cfg, design=fixed_pairs())
    assert len(family) == len(study_pairs(list(models), fixed_pairs())) and {c.family for c in family} == {len(family)}
    assert holm([c.p_value for c in family]) == [c.p_holm for c in family]
    assert all(c.p_holm >= c.p_value for c in family)
    table = comparisons_table(boots, cfg, design=fixed_pairs())
    assert table["significant"].tolist() == [c.p_holm <= 0.05 for c in family]
    assert comparisons_from_table(table) == family


def test_mismatched_image_sets_are_refused():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match=r"per-image matrices of b .*same validation images"):
        bootstrap_models({"a": [_per_image(rng, 10)], "b": [_per_image(rng, 11)]})
    with pytest.raises(ValueError, match="no bootstrap of c"):
        compare(bootstrap_models({"a": [_per_image(rng, 10)]}), "a", "c")


def test_study_pairs_follow_the_report():
    models = ["resnet18-ppm", "resnet50-ppm", "mobilenetv2-ppm", "mobilenetv3-ppm", "resnet18-aspp", "resnet18-ocr"]
    pairs = study_pairs(models, fixed_pairs())
    assert ("backbones (PPM)", "resnet50-ppm", "resnet18-ppm") in pairs
    assert ("MobileNetV3", "mobilenetv3-ppm", "mobilenetv2-ppm") in pairs
    context = [(a, b) for g, a, b in pairs if g.startswith("context")]
    assert context == [("resnet18-ppm", "resnet18-aspp"), ("resnet18-ppm", "resnet18-ocr"),
                       ("resnet18-aspp", "resnet18-ocr")]  # fmt: skip
    assert not any("resnet101-ppm" in (a, b) for _, a, b in pairs)  # not configured: no pair


def _runs(tmp_path, cfg: StudyConfig, spec: dict[str, list[np.ndarray | None]]):
    for model, seeds in spec.items():
        for seed, per_image in enumerate(seeds):
            run = tmp_path / cfg.experiment / model / f"seed{seed}"
            run.mkdir(parents=True)
            m = compute_metrics(per_image.sum(0)) if per_image is not None else compute_metrics(np.eye(19))
            (run / "metrics.json").write_text(json.dumps({"miou": m["miou"], "macc": m["macc"], "allacc": m["allacc"]}))
            if per_image is not None:
                np.save(run / "confusion_per_image.npy", per_image)


def test_study_files_summary_columns_and_compare_command(tmp_path, capsys):
    from segmodels.study.summary import summarize

    rng = np.random.default_rng(7)
    cfg = StudyConfig(experiment="s", models=["resnet18-ppm", "resnet50-ppm", "resnet18-aspp"], seeds=[0, 1])
    cfg.stats = StatsConfig(resamples=300, seed=2)
    r18 = [_per_image(rng, 20, c=19) for _ in range(2)]
    r50 = [_per_image(rng, 20, c=19, diag=9.0) for _ in range(2)]
    _runs(tmp_path, cfg, {"resnet18-ppm": r18, "resnet50-ppm": r50, "resnet18-aspp": [None]})
    boots, notes = bootstrap_study(cfg, tmp_path)
    assert sorted(boots) == ["resnet18-ppm", "resnet50-ppm"]
    assert len(notes) == 1 and "resnet18-aspp" in notes[0] and "confusion_per_image.npy" in notes[0]

    with pytest.warns(RuntimeWarning, match="resnet18-aspp: no interval"):
        table = summarize(cfg, tmp_path).set_index("model")
    row = table.loc["resnet50-ppm"]
    assert row["miou_lo"] < row["miou"] < row["miou_hi"]
    assert row["miou_lo"] == pytest.approx(boots["resnet50-ppm"].interval["miou"].lo)
    assert row["miou_boot_std"] > 0 and row["allacc_lo"] < row["allacc_hi"]
    assert math.isnan(table.loc["resnet18-aspp", "miou_lo"])

    config = tmp_path / "study.yaml"
    config.write_text("experiment: s\nmodels: [resnet18-ppm, resnet50-ppm, resnet18-aspp]\nseeds: [0, 1]\n"
                      "stats: {resamples: 300, seed: 2}\n")  # fmt: skip
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "resnet50-ppm vs resnet18-ppm" in out and "significant" in out
    written = pd.read_csv(tmp_path / "s" / "comparisons.csv")
    assert list(written.columns) == list(COMPARISON_COLUMNS)
    expected = comparisons_table(boots, cfg.stats, design=fixed_pairs())
    assert written["pair"].tolist() == expected["pair"].tolist() == ["resnet50-ppm vs resnet18-ppm"]
    assert written["lo"].iloc[0] == pytest.approx(expected["lo"].iloc[0], abs=1e-4)
    assert bool(written["significant"].iloc[0]) is True and written["resamples"].iloc[0] == 300
    assert "Holm-adjusted p 0.0066: significant" in out and "one Holm family at alpha 0.05" in out
    read = comparisons_from_table(written)  # p-values written exactly: the verdict re-read is the one written
    assert [c.significant for c in read] == written["significant"].tolist()
    assert read[0].p_holm == read[0].p_value == 2 / 301 and read[0].family == 1 and read[0].seeds_a == 2


def test_bad_files_and_settings(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="confusion_per_image.npy"):
        load_per_image(tmp_path / "confusion_per_image.npy")
    np.save(tmp_path / "flat.npy", np.zeros((3, 19)))
    with pytest.raises(ValueError, match=r"flat\.npy: expected N×C×C"):
        load_per_image(tmp_path / "flat.npy")
    config = tmp_path / "study.yaml"
    config.write_text("experiment: s\nmodels: [resnet18-ppm]\nstats: {confidence: 1.5}\n")
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 2
    config.write_text("experiment: s\nmodels: [resnet18-ppm]\nstats: {resamples: 0}\n")
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 2
    config.write_text("experiment: s\nmodels: [resnet18-ppm]\nstats: {resamples: many}\n")
    assert main(["compare", "--config", str(config), "--results", str(tmp_path)]) == 2
    assert "'stats.resamples' must be auto or a number, got 'many'" in capsys.readouterr().err
