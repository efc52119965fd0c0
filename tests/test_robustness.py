"""The robustness section: its config checks, a run scored under corruptions by the evaluation's own code (resumable,
from the study's cache or made on the fly), and the summary's paired bootstrap across models."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from conftest import small_config, write_config

from segmodels.cli import main
from segmodels.study import robustness as rb
from segmodels.study.config import ConfigError, load_config


def test_bad_robustness_settings_are_named_at_load(tmp_path):
    cfg = small_config(models=["mobilenetv2-fcn", "resnet18-fcn"])
    path = write_config(tmp_path / "study.yaml", cfg)
    study = load_config(path)
    assert study.robustness.enabled is False and rb.robust_runs(study, ["mobilenetv2-fcn"]) == []  # off by default
    with pytest.raises(ConfigError, match=r"robustness.corruptions.*'hail'.*noise.*fog"):
        load_config(path, {"robustness.corruptions": ["noise", "hail"]})
    with pytest.raises(ConfigError, match=r"'robustness.severities\[0\]' must be at most 5"):
        load_config(path, {"robustness.severities": [6]})
    with pytest.raises(ConfigError, match=r"'robustness.severities\[1\]' must be at least 1"):
        load_config(path, {"robustness.severities": [1, 0]})
    with pytest.raises(ConfigError, match=r"'robustness.models' names 'resnet50-ppm', which is not a run"):
        load_config(path, {"robustness.enabled": True, "robustness.models": ["resnet50-ppm"]})
    # the generated validation split's size is known at load: more images than it holds are refused there
    synthetic = {"data.source": "synthetic", "data.synthetic.val": 4}
    with pytest.raises(ConfigError, match=r"'robustness.images' 5 is more than the 4 validation images"):
        load_config(path, {**synthetic, "robustness.images": 5})
    ok = load_config(path, {**synthetic, "robustness.enabled": True, "robustness.models": ["resnet18-fcn"],
                            "robustness.corruptions": ["blur", "fog", "defocus_blur"]})  # fmt: skip
    assert rb.robust_runs(ok, ["mobilenetv2-fcn", "resnet18-fcn"]) == ["resnet18-fcn"]
    blur = ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"]
    assert rb.study_corruptions(ok) == blur + ["fog"]  # groups expanded, each once, in the registry's order
    assert rb.study_groups(rb.study_corruptions(ok)) == ["blur", "weather"]
    assert len(rb.study_corruptions(study)) == 19  # the default: all


def test_the_workflow_names_the_cache_as_the_cache_writes_it():
    from segmodels.data.corrupted import MARKER, cache_folder

    assert rb.corrupted_marker("cityscapes", "fog") == str(cache_folder("cityscapes", "fog") / MARKER)


def test_scores_are_means_over_severities_corruptions_and_groups():
    numbers = rb.robustness_scores({"gaussian_noise": {1: 0.5, 3: 0.3}, "shot_noise": {1: 0.4},
                                    "fog": {1: 0.6, 5: 0.2}}, clean=0.8)  # fmt: skip
    assert numbers["corruptions"]["gaussian_noise"]["mean"] == pytest.approx(0.4)
    assert numbers["groups"] == {"noise": pytest.approx(0.4), "weather": pytest.approx(0.4)}
    assert numbers["miou_c_mean"] == pytest.approx((0.4 + 0.4 + 0.4) / 3)
    assert numbers["robustness_rel"] == pytest.approx(0.4 / 0.8)
    assert np.isnan(rb.robustness_scores({"fog": {1: 0.1}}, clean=0.0)["robustness_rel"])


def _fake_run(results, model, clean, corrupted, images):
    """A run folder with a clean evaluation and robustness files: per-image confusion matrices given."""
    from segmodels.study import runs

    folder = runs.run_dir(results, "test", model, 0)
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.METRICS, {"model": model, "miou": 0.5})
    np.save(folder / runs.CONFUSION_PER_IMAGE, clean)
    miou = {}
    for (c, k), matrices in corrupted.items():
        out = rb.robustness_folder(folder, c, k)
        out.mkdir(parents=True)
        np.save(out / runs.CONFUSION_PER_IMAGE, matrices)
        miou.setdefault(c, {})[k] = 0.0
    runs.write_json(rb.robustness_folder(folder) / rb.RESULT,
                    {"model": model, "images": images, **rb.robustness_scores(miou, 0.5)})  # fmt: skip


def test_bootstrap_pairs_every_model_on_the_same_draws(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 30, 3
    clean = rng.integers(0, 50, (n, c, c)) + np.eye(c, dtype=np.int64) * 400
    noise = clean + rng.integers(0, 120, (n, c, c))  # worse on every image
    fog = clean + rng.integers(0, 60, (n, c, c))
    cfg = small_config(models=["mobilenetv2-fcn", "resnet18-fcn"], stats={"resamples": 300},
                       robustness={"enabled": True, "corruptions": ["gaussian_noise", "fog"], "severities": [3]})  # fmt: skip
    results = tmp_path / "results"
    corrupted = {("gaussian_noise", 3): noise, ("fog", 3): fog}
    _fake_run(results, "mobilenetv2-fcn", clean, corrupted, n)
    _fake_run(results, "resnet18-fcn", clean, corrupted, n)  # the same scores: every paired difference is 0
    boots = rb.bootstrap_robustness(cfg, results, ["mobilenetv2-fcn", "resnet18-fcn"])
    a, b = boots["mobilenetv2-fcn"], boots["resnet18-fcn"]
    np.testing.assert_array_equal(a.samples["miou_c_mean"], b.samples["miou_c_mean"])
    for key in ("miou_c_clean", "miou_c_mean", "miou_c_noise", "miou_c_weather", "robustness_rel"):
        assert a.lo[key] < a.estimate[key] < a.hi[key], key
    assert a.estimate["miou_c_mean"] < a.estimate["miou_c_clean"]
    assert a.estimate["robustness_rel"] == pytest.approx(a.estimate["miou_c_mean"] / a.estimate["miou_c_clean"])
    assert a.estimate["miou_c_mean"] == pytest.approx((a.estimate["miou_c_gaussian_noise"]
                                                       + a.estimate["miou_c_fog"]) / 2)  # fmt: skip
    table = rb.robustness_comparisons(cfg, boots, [("context modules", "resnet18-fcn", "mobilenetv2-fcn")])
    assert set(table["metric"]) == {"miou_c_mean", "robustness_rel"}
    assert (table["diff"] == 0).all() and (table["lo"] == 0).all() and (table["hi"] == 0).all()
    assert (table["p_holm"] == 1).all() and not table["significant"].any()
    # A model scored on other images cannot be paired with the others.
    _fake_run(tmp_path / "other", "mobilenetv2-fcn", clean[:10], {k: v[:10] for k, v in corrupted.items()}, 10)
    _fake_run(tmp_path / "other", "resnet18-fcn", clean, corrupted, n)
    with pytest.raises(ValueError, match="different numbers of images"):
        rb.bootstrap_robustness(cfg, tmp_path / "other", ["mobilenetv2-fcn", "resnet18-fcn"])


@pytest.fixture(scope="module")
def scored(tmp_path_factory, packed_data, one_thread):
    """A mobilenetv2-fcn trained long enough that its predictions follow the image, evaluated clean."""
    from segmodels.engine.evaluate import evaluate
    from segmodels.engine.train import train

    folder = tmp_path_factory.mktemp("robustness")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        cfg = small_config(
            train={"iterations": 40, "batch_size": 2, "lr": 0.1, "log_every": 20, "ckpt_every": 40, "warmup_iters": 5},
            evaluate={"samples": [1], "amp": False},
            robustness={"enabled": True, "corruptions": ["gaussian_noise", "fog"], "severities": [1, 5]},
        )  # fmt: skip
        run = folder / "results" / "test" / "mobilenetv2-fcn" / "seed0"
        train(cfg, "mobilenetv2-fcn", out=run, data_dir=packed_data)
        evaluate(cfg, run, data=packed_data, progress=False)
        yield cfg, folder, run, write_config(folder / "study.yaml", cfg)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_a_run_is_scored_under_each_corruption_by_the_evaluations_own_code(scored, packed_data):
    import mlflow

    from segmodels.data.corruptions import corrupt_images
    from segmodels.data.loader import PackedSplit
    from segmodels.engine.evaluate import evaluate
    from segmodels.engine.robustness import robustness_run

    cfg, folder, run, _ = scored
    record = robustness_run(cfg, run, data=packed_data, progress=False, cache_root=folder / "none")
    clean = json.loads((run / "metrics.json").read_text())
    assert record["clean"] == pytest.approx(clean["miou"])  # every image: the run's own clean score
    assert set(record["corruptions"]) == {"gaussian_noise", "fog"} and record["images"] == 2
    split = PackedSplit(packed_data / "val")
    for c in ("gaussian_noise", "fog"):
        for k in (1, 5):
            out = rb.robustness_folder(run, c, k)
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["corruption"] | {"data": None} == {"name": c, "group": rb.group_of(c), "severity": k,
                                                              "images": 2, "data": None, "pixels": "made"}  # fmt: skip
            assert metrics["protocol"] == clean["protocol"]  # the run's own protocol
            assert record["corruptions"][c]["severities"][str(k)] == metrics["miou"]
            # the same as evaluating the corrupted pixels directly
            pixels = corrupt_images(np.asarray(split.images), split.names, c, k)
            direct = evaluate(cfg, run, data=packed_data, out=folder / "direct", images=pixels, log_mlflow=False,
                              progress=False)  # fmt: skip
            np.testing.assert_array_equal(np.load(out / "confusion_per_image.npy"),
                                          np.load(folder / "direct" / "confusion_per_image.npy"))  # fmt: skip
            assert direct["miou"] == metrics["miou"]
            assert metrics["biou"] is None and direct["biou"] is not None  # mIoU's statistics alone: no boundaries
            sample = list((out / "samples").glob("0001_*_input.png"))
            assert sample, "the corrupted input of evaluate.samples is kept"
    noisy = np.load(rb.robustness_folder(run, "gaussian_noise", 5) / "confusion_per_image.npy")
    assert not np.array_equal(noisy, np.load(run / "confusion_per_image.npy")), "the clean pixels were scored"
    means = [e["mean"] for e in record["corruptions"].values()]
    assert record["miou_c_mean"] == pytest.approx(sum(means) / 2)
    logged = mlflow.MlflowClient().get_run((run / "mlflow_run_id").read_text().strip()).data.metrics
    assert logged["miou_c_mean"] == pytest.approx(record["miou_c_mean"] * 100)
    assert logged["robustness_rel"] == pytest.approx(record["robustness_rel"])
    assert {"miou_c_noise", "miou_c_weather", "miou_c_fog"} <= set(logged)

    # Scored again: nothing is scored twice; a newer checkpoint is scored again.
    stamps = {p: p.stat().st_mtime_ns for p in (run / "robustness").rglob("metrics.json")}
    lines = []
    robustness_run(cfg, run, data=packed_data, progress=False, cache_root=folder / "none", log=lines.append)
    assert all("(scored before)" in line for line in lines) and len(lines) == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in (run / "robustness").rglob("metrics.json")}
    later = time.time() + 5
    os.utime(run / "checkpoint.pt", (later, later))
    lines.clear()
    robustness_run(cfg, run, data=packed_data, progress=False, cache_root=folder / "none", log=lines.append,
                   corruptions=["fog"], severities=[1])  # fmt: skip
    assert lines and "(scored before)" not in lines[0]


def test_the_studys_cache_gives_the_same_pixels_as_on_the_fly(scored, packed_data, tmp_path):
    from segmodels.data.corrupted import cache_folder, write_corrupted
    from segmodels.engine.robustness import score_corruption

    cfg, folder, run, _ = scored
    root = tmp_path / "corrupted"
    write_corrupted(packed_data / "val", cache_folder(cfg.data.dataset, "fog", root=root), "fog", [5], progress=False)
    assert score_corruption(cfg, run, "fog", 5, data=packed_data, cache_root=tmp_path / "none", progress=False,
                            log_mlflow=False)["corruption"]["pixels"] == "made"  # fmt: skip
    made = np.load(rb.robustness_folder(run, "fog", 5) / "confusion_per_image.npy")
    metrics = score_corruption(cfg, run, "fog", 5, data=packed_data, cache_root=root, progress=False)
    assert metrics["corruption"]["pixels"] == "cache"
    np.testing.assert_array_equal(np.load(rb.robustness_folder(run, "fog", 5) / "confusion_per_image.npy"), made)
    # a severity the cache does not hold is made on the fly (the same pixels)
    assert score_corruption(cfg, run, "fog", 3, data=packed_data, cache_root=root, progress=False,
                            log_mlflow=False)["corruption"]["pixels"] == "made"  # fmt: skip
    (root / "tiny" / "fog" / "s5.npy").unlink()  # listed, but gone: named, never guessed
    with pytest.raises((FileNotFoundError, ValueError), match="s5.npy"):
        score_corruption(cfg, run, "fog", 5, data=packed_data, cache_root=root, progress=False)
    # A whole run stops on it before it scores anything.
    from segmodels.engine.robustness import robustness_run

    with pytest.raises((FileNotFoundError, ValueError), match="s5.npy"):
        robustness_run(cfg, run, data=packed_data, progress=False, cache_root=root, corruptions=["shot_noise", "fog"],
                       severities=[1, 5], log_mlflow=False)  # fmt: skip
    assert not rb.robustness_folder(run, "shot_noise").exists()


def test_one_corruption_by_hand_and_bad_input_on_the_command_line(scored, packed_data, capsys):
    cfg, folder, run, config = scored
    base = ["evaluate", "--config", str(config), "--run", str(run), "--data", str(packed_data), "--no-mlflow"]
    assert main([*base, "--corruption", "gaussian_noise", "--severity", "3"]) == 0
    assert "gaussian_noise severity 3" in capsys.readouterr().out
    assert (rb.robustness_folder(run, "gaussian_noise", 3) / "metrics.json").is_file()
    assert main([*base, "--corruption", "gaussian_noise"]) == 2
    assert "--corruption and --severity go together" in capsys.readouterr().err
    assert main([*base, "--corruption", "hail", "--severity", "3"]) == 2
    assert "unknown corruption 'hail'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--corruption", "fog", "--severity", "6"])  # argparse: 1 to 5
    robust = ["robustness", "--config", str(config), "--run", str(run), "--data", str(packed_data), "--no-mlflow"]
    assert main([*robust, "--severities", "7"]) == 2
    assert "--severities: 7 is not a severity" in capsys.readouterr().err
    assert main([*robust, "--corruptions", "sleet"]) == 2
    assert "'sleet'" in capsys.readouterr().err
    corrupt = ["corrupt", "--config", str(config), "--data", str(packed_data / "val"), "--root", str(folder / "c")]
    assert main([*corrupt, "--corruption", "sleet"]) == 2
    assert "not a corruption" in capsys.readouterr().err
    assert not (folder / "c").exists()


def test_fewer_images_score_the_first_ones_and_compare_with_their_clean_score(scored, packed_data):
    import dataclasses

    from segmodels.engine.robustness import robustness_run
    from segmodels.metrics import metrics_of

    cfg, folder, run, _ = scored
    one = dataclasses.replace(cfg, robustness=dataclasses.replace(cfg.robustness, images=1))
    record = robustness_run(one, run, data=packed_data, progress=False, cache_root=folder / "none",
                            corruptions=["fog"], severities=[5], log_mlflow=False)  # fmt: skip
    first = np.load(run / "confusion_per_image.npy")[:1].sum(axis=0)
    assert record["images"] == 1 and record["clean"] == pytest.approx(float(metrics_of(first)["miou"]))
    assert np.load(rb.robustness_folder(run, "fog", 5) / "confusion_per_image.npy").shape[0] == 1
    too_many = dataclasses.replace(cfg, robustness=dataclasses.replace(cfg.robustness, images=3))
    with pytest.raises(ValueError, match="'robustness.images' 3 is more than the 2 images"):
        robustness_run(too_many, run, data=packed_data, progress=False, log_mlflow=False)


def test_a_missing_corruption_package_stops_snakemake_before_any_job(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config" / "test.yaml").read_text())
    config["robustness"] = {"enabled": True, "corruptions": ["fog", "frost"], "severities": [3]}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    hide = tmp_path / "hide"  # imports as if the package were not installed
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['imagecorruptions'] = None\n")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(hide), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(bin_dir / "snakemake"), "-n", "--snakefile", str(root / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(study)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "imagecorruptions (for frost)" in result.stderr + result.stdout  # fog is a port: numpy alone
    assert "pip install 'segmodels[robustness]'" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
    env.pop("PYTHONPATH")
    assert subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300).returncode == 0


def test_the_shipped_configs_score_what_they_say():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "config"
    demo = load_config(root / "demo.yaml")
    assert not demo.robustness.enabled  # `make run` stays within its time; one line turns it on
    assert [rb.group_of(c) for c in rb.study_corruptions(demo)] == ["noise", "blur", "weather", "digital"]
    for name, severities in (("config.yaml", [1, 2, 3, 4, 5]), ("robustness.yaml", [1, 3, 5])):
        cfg = load_config(root / name)
        assert cfg.robustness.enabled and len(rb.study_corruptions(cfg)) == 19, name
        assert cfg.robustness.severities == severities and cfg.robustness.cache, name
