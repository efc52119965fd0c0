"""The experiment matrix: model entries with overrides and axes expanded into named runs, each run's effective
config used by training, evaluation, the benchmark, the summary and the Snakemake triggers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import small_config, write_config

from segmodels.cli import main
from segmodels.models.catalog import arch_of, display_name, head, head_label, pair_of, reference_variant
from segmodels.report.design import fixed_pairs
from segmodels.report.results import load_study
from segmodels.study.config import ConfigError, StudyConfig, load_config, study_from_dict, study_schema
from segmodels.study.matrix import expand_runs, run_config, run_names, run_sections
from segmodels.study.stats import study_pairs
from segmodels.study.summary import run_dir, summarize

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_KEYS = ("model", "train", "evaluate", "benchmark")


def _write(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- expansion -------------------------------------------------------------------------------------------------


def test_a_plain_list_expands_to_itself_with_the_shared_sections():
    cfg = load_config(ROOT / "config" / "test.yaml")
    assert run_names(cfg) == cfg.models == ["mobilenetv2-fcn", "resnet18-ppm"]
    assert all(run.overrides == {} and run.variant == "" for run in expand_runs(cfg))
    run = run_config(cfg, "resnet18-ppm")
    for key in RUN_KEYS + ("data", "tracking", "stats"):
        assert getattr(run, key) == getattr(cfg, key), key
    assert run.models == ["resnet18-ppm"] and run.axes == {}


def test_overrides_set_typed_values_of_one_run_only(tmp_path):
    path = _write(tmp_path, {
        "experiment": "m",
        "models": [
            "resnet18-ppm",
            {"resnet101-ppm": {"train.iterations": 60, "train.lr": 1}},  # an int where a float is due: converted
            {"resnet18-ppm_os16": {"model": {"output_stride": 16}, "evaluate.flip": True}},
        ],
        "train": {"iterations": 100},
    })  # fmt: skip
    cfg = load_config(path)
    assert run_names(cfg) == ["resnet18-ppm", "resnet101-ppm", "resnet18-ppm_os16"]
    r101 = run_config(cfg, "resnet101-ppm")
    assert r101.train.iterations == 60 and r101.train.lr == 1.0 and isinstance(r101.train.lr, float)
    os16 = run_config(cfg, "resnet18-ppm_os16")
    assert os16.model.output_stride == 16 and os16.evaluate.flip and os16.train.iterations == 100
    plain = run_config(cfg, "resnet18-ppm")
    assert plain.model.output_stride == 8 and plain.train.iterations == 100 and not plain.evaluate.flip
    assert arch_of("resnet18-ppm_os16") == ("resnet18", "ppm") and arch_of("resnet101-ppm") == ("resnet101", "ppm")
    assert run_config(os16, "resnet18-ppm_os16") == os16  # a run's own config passes unchanged


def test_axes_cross_every_entry_and_the_entry_adds_its_own_keys(tmp_path):
    path = _write(tmp_path, {
        "experiment": "m",
        "models": ["resnet18-ppm", {"resnet50-aspp": {"train.iterations": 7}}],
        "axes": {"model.output_stride": [8, 16], "train.crop_size": [[256, 512], [512, 1024]]},
    })  # fmt: skip
    cfg = load_config(path)
    combos = ["os8_crop256x512", "os8_crop512x1024", "os16_crop256x512", "os16_crop512x1024"]
    assert run_names(cfg) == [f"{m}_{c}" for m in ("resnet18-ppm", "resnet50-aspp") for c in combos]
    run = run_config(cfg, "resnet18-ppm_os16_crop512x1024")
    assert run.model.output_stride == 16 and run.train.crop_size == [512, 1024]
    own = run_config(cfg, "resnet50-aspp_os8_crop256x512")
    assert own.model.output_stride == 8 and own.train.crop_size == [256, 512] and own.train.iterations == 7
    assert run.train.iterations == cfg.train.iterations != 7
    no_axes = load_config(_write(tmp_path, {"experiment": "m", "models": ["resnet18-ppm"], "axes": {}}, "e.yaml"))
    assert run_names(no_axes) == ["resnet18-ppm"]


@pytest.mark.parametrize(
    ("data", "messages"),
    [
        ({"models": [{"resnet18-ppm": {"data.size": [64, 64]}}]},
         ["model entry 'resnet18-ppm'", "'data.size' is not a run-level key"]),
        ({"models": [{"resnet18-ppm": {"tracking": {"experiment": "x"}}}]},
         ["model entry 'resnet18-ppm'", "'tracking.experiment' is not a run-level key"]),
        ({"models": [{"resnet18-ppm": {"seeds": [1]}}]}, ["model entry 'resnet18-ppm'", "'seeds' is not a run-level"]),
        ({"models": [{"resnet18-ppm": {"train.lrate": 0.1}}]},
         ["model entry 'resnet18-ppm'", "unknown key 'train.lrate'"]),
        ({"models": [{"resnet18-ppm": {"train.iterations": "many"}}]},
         ["model entry 'resnet18-ppm'", "'train.iterations' must be int"]),
        ({"models": [{"resnet18-ppm_os4": {"model.output_stride": 4}}]},
         ["model entry 'resnet18-ppm_os4'", "'model.output_stride' must be one of 8, 16, 32"]),
        ({"models": [{"resnet18-ppm": 5}]}, ["'models[0].resnet18-ppm' must be a mapping"]),
        ({"models": [{"resnet18-ppm": {}, "resnet50-ppm": {}}]}, ["'models[0]' must be a name or a one-key mapping"]),
        ({"models": ["resnet18-ppm", {"resnet18-ppm": {"train.lr": 0.02}}]}, ["run 'resnet18-ppm' appears twice"]),
        ({"models": ["resnet18-ppm"], "axes": {"model.output_stride": [16, 16]}},
         ["run 'resnet18-ppm_os16' appears twice"]),
        ({"models": ["resnet34-ppm_os16"]}, ["model 'resnet34-ppm_os16'", "backbones: resnet18", "heads: ppm"]),
        ({"models": ["resnet18-ppm_os-16"]}, ["model 'resnet18-ppm_os-16'", "tags: letters, digits and dots"]),
        ({"models": ["resnet18-ppm"], "axes": {"data.size": [[64, 64]]}}, ["axes: 'data.size' is not a run-level key"]),
        ({"models": ["resnet18-ppm"], "axes": {"train.iterations": ["x"]}},
         ["run 'resnet18-ppm_itx'", "'train.iterations' must be int"]),
        ({"models": ["resnet18-ppm"], "axes": {"train.lr": [1e-5]}}, ["axis 'train.lr'", "name tag 'lr1e-05'"]),
        ({"models": ["resnet18-ppm"], "axes": {"train.lr": []}}, ["axis 'train.lr' lists no values"]),
    ],
)  # fmt: skip
def test_bad_matrix_fails_at_load_naming_file_entry_and_key(tmp_path, data, messages):
    path = _write(tmp_path, {"experiment": "m", **data})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text
    for message in messages:
        assert message in text


def test_a_name_outside_the_matrix(tmp_path):
    cfg = load_config(_write(tmp_path, {"experiment": "m", "models": [{"resnet18-ppm_os16": {"train.lr": 0.5}}]}))
    by_hand = run_config(cfg, "mobilenetv2-fcn")  # a plain pair called by hand: the shared sections
    assert by_hand.train.lr == cfg.train.lr and by_hand.models == ["mobilenetv2-fcn"]
    with pytest.raises(ValueError, match=r"run 'resnet18-ppm_os8' is not in the study.*resnet18-ppm_os16"):
        run_config(cfg, "resnet18-ppm_os8")
    with pytest.raises(ValueError, match="unknown model 'resnet99-ppm'"):
        run_config(cfg, "resnet99-ppm")


def test_schema_takes_every_form_and_refuses_a_bad_name():
    import jsonschema

    schema = study_schema()
    good = {
        "experiment": "m",
        "models": ["resnet18-ppm", {"resnet101-ppm": {"train.iterations": 60}}, {"resnet18-ppm_os16": {}}],
        "axes": {"model.output_stride": [8, 16], "train.crop_size": [[256, 512], [512, 1024]]},
    }
    jsonschema.validate(good, schema)
    # The schema checks a name's shape; the catalog (with the study's plugins) checks the names themselves.
    unknown = {"experiment": "m", "models": [{"resnet34-ppm": {}}]}
    jsonschema.validate(unknown, schema)
    with pytest.raises(ConfigError, match="resnet34-ppm"):
        study_from_dict(unknown)
    for bad in (
        {"experiment": "m", "models": [{"ResNet18-ppm": {}}]},
        {"experiment": "m", "models": ["resnet18-ppm-x"]},
        {"experiment": "m", "models": ["resnet18-ppm_os/16"]},
        {"experiment": "m", "models": ["resnet18-ppm"], "axes": {"data.size": [[1, 2]]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_run_sections_are_the_files_own_for_a_plain_run(tmp_path):
    data = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    data["models"] = ["mobilenetv2-fcn", {"resnet18-ppm": {"train.iterations": 3, "evaluate": {"flip": True}}}]
    cfg = load_config(_write(tmp_path, data))
    plain, tuned = expand_runs(cfg)
    names = ("data", "model", "train", "evaluate", "stats")
    assert run_sections(data, plain, *names) == {n: data.get(n) for n in names}  # stats: absent, stays None
    tuned_sections = run_sections(data, tuned, *names)
    assert tuned_sections["train"] == {**data["train"], "iterations": 3}
    assert tuned_sections["evaluate"] == {**data["evaluate"], "flip": True}
    assert tuned_sections["data"] == data["data"] and data["train"]["iterations"] == 6  # the file's dict untouched


# --- the workflow ----------------------------------------------------------------------------------------------


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "1", *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _jobs(dry_run: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    """(rule, model wildcard or "", reason) of every job a dry run lists."""
    text = dry_run.stdout + dry_run.stderr
    jobs = []
    for block in re.split(r"^rule ", text, flags=re.M)[1:]:
        model = re.search(r"wildcards:.*\bmodel=([^,\s]+)", block)
        reason = re.search(r"reason: (.*)", block)
        jobs.append((block.split(":")[0], model.group(1) if model else "", reason.group(1) if reason else ""))
    return jobs


def test_workflow_runs_the_matrix_and_a_changed_override_reruns_that_model_only(tmp_path):
    data = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    data["models"] = ["mobilenetv2-fcn", {"resnet18-ppm": {"train.iterations": 3}}]
    data["axes"] = {"model.output_stride": [8, 16]}
    study = _write(tmp_path, data)
    expected = {"mobilenetv2-fcn_os8", "mobilenetv2-fcn_os16", "resnet18-ppm_os8", "resnet18-ppm_os16"}

    jobs = _jobs(_snakemake(tmp_path, study, "-n"))
    assert {m for rule, m, _ in jobs if rule == "train"} == expected
    assert {m for rule, m, _ in jobs if rule == "benchmark"} == expected

    _snakemake(tmp_path, study, "--touch")  # records every job's params as if it had run
    data["models"][1]["resnet18-ppm"]["train.iterations"] = 4
    study.write_text(yaml.safe_dump(data))
    jobs = _jobs(_snakemake(tmp_path, study, "-n"))
    changed = [(rule, m) for rule, m, reason in jobs if "Params have changed" in reason]
    assert sorted(changed) == [("train", "resnet18-ppm_os16"), ("train", "resnet18-ppm_os8")]


# --- training, evaluation and benchmark of a variant ---------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_a_variant_trains_evaluates_and_benchmarks_under_its_name(tmp_path, packed_data, mlflow_uri, capsys):
    from mlflow import MlflowClient

    from segmodels.tracking import read_run_id

    name = "mobilenetv2-fcn_os16"
    cfg = small_config(
        models=["mobilenetv2-fcn", {name: {"model.output_stride": 16, "train.iterations": 2, "evaluate.samples": [1],
                                           "benchmark.repeats": 2}}],
        evaluate={"samples": [0], "device": "cpu"},
        benchmark={"size": [32, 32], "modes": ["fp32"], "warmup": 0, "repeats": 1, "device": "cpu"},
    )  # fmt: skip
    config = write_config(tmp_path / "study.yaml", cfg)
    out = tmp_path / "results" / "test" / name / "seed0"
    base = ["--config", str(config), "--data", str(packed_data)]
    assert main(["train", *base, "--model", name, "--out", str(out)]) == 0, capsys.readouterr().err

    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["run"] == name and (saved["backbone"], saved["head"]) == ("mobilenetv2", "fcn")
    assert saved["output_stride"] == 16 and saved["iteration"] == 2 and saved["config"]["models"] == [name]
    run = MlflowClient(mlflow_uri).get_run(read_run_id(out))
    assert run.info.run_name == f"{name}-seed0"
    params = run.data.params
    assert params["run.model"] == name and params["run.variant"] == "os16"
    assert (params["model.backbone"], params["model.head"]) == ("mobilenetv2", "fcn")
    assert params["model.output_stride"] == "16"

    assert main(["evaluate", *base, "--run", str(out), "--no-mlflow"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["settings"]["samples"] == [1]  # the run's evaluate override
    assert [p.name.split("_")[0] for p in (out / "samples").glob("*_gt.png")] == ["0001"]

    assert main(["benchmark", "--config", str(config), "--run", str(out), "--no-mlflow"]) == 0
    latency = json.loads((out / "latency.json").read_text())
    assert latency["model"] == name and latency["repeats"] == 2  # the run's benchmark override

    assert main(["train", *base, "--model", "mobilenetv2-fcn_os8", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "'mobilenetv2-fcn_os8' is not in the study" in err and name in err
    assert not (tmp_path / "other").exists()


# --- summary, comparisons, report names ------------------------------------------------------------------------


def _write_run(results: Path, cfg: StudyConfig, model: str, seed: int, miou: float) -> None:
    folder = run_dir(results, cfg, model, seed)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"miou": miou, "macc": miou, "allacc": 0.9}))
    latency = {"modes": {"fp32": {"median_ms": 10.0, "p90_ms": 11.0, "fps": 100.0}}, "device": {"name": "cpu"}}
    (folder / "latency.json").write_text(json.dumps(latency))


def test_the_summary_names_backbone_head_and_variant_per_run(tmp_path):
    cfg = StudyConfig(experiment="v", seeds=[0, 1],
                      models=["resnet18-ppm", {"resnet18-ppm_os16": {"model.output_stride": 16}}])  # fmt: skip
    for seed, (plain, os16) in enumerate(((0.50, 0.60), (0.52, 0.64))):
        _write_run(tmp_path, cfg, "resnet18-ppm", seed, plain)
        _write_run(tmp_path, cfg, "resnet18-ppm_os16", seed, os16)
    with pytest.warns(RuntimeWarning, match="no interval"):  # no per-image matrices written here
        table = summarize(cfg, tmp_path, tmp_path / "v" / "summary.csv").set_index("model")
    assert list(table.index) == ["resnet18-ppm", "resnet18-ppm_os16"]
    assert list(table["backbone"]) == ["resnet18", "resnet18"] and list(table["head"]) == ["ppm", "ppm"]
    assert list(table["variant"].fillna("")) == ["", "os16"]
    assert table.loc["resnet18-ppm_os16", "miou"] == pytest.approx(62.0)
    assert table.loc["resnet18-ppm_os16", "miou_std"] == pytest.approx(2.8284271, abs=1e-6)  # stdev of 60 and 64
    assert table.loc["resnet18-ppm_os16", "seeds"] == 2

    study = load_study(cfg, tmp_path)
    assert study.summary.at["resnet18-ppm_os16", "variant"] == "os16" and study.reference == ""
    assert display_name("resnet18-ppm_os16_crop256x512") == "ResNet18-PPM os16 crop256x512"


def test_fixed_comparisons_use_the_plain_runs_else_one_variant():
    plain = ["resnet18-ppm", "resnet50-ppm", "resnet18-ppm_os16"]
    assert ("backbones (PPM)", "resnet50-ppm", "resnet18-ppm") in study_pairs(plain, fixed_pairs())
    assert ("variants", "resnet18-ppm_os16", "resnet18-ppm") in study_pairs(plain, fixed_pairs())
    axes = ["resnet18-ppm_os8", "resnet50-ppm_os8", "resnet18-ppm_os16", "resnet50-ppm_os16"]
    assert reference_variant(axes) == "os8" and reference_variant(plain) == ""
    pairs = study_pairs(axes, fixed_pairs())
    assert ("backbones (PPM)", "resnet50-ppm_os8", "resnet18-ppm_os8") in pairs
    assert ("variants", "resnet50-ppm_os16", "resnet50-ppm_os8") in pairs
    assert not any(a.endswith("os16") and b.endswith("os16") for _, a, b in pairs)


def test_a_study_without_plain_runs_compares_within_its_first_variant(tmp_path):
    from test_figures import _write_run as write_fabricated_run

    from segmodels.report.figures import fig_context_modules
    from segmodels.report.typeset import report_data

    cfg = StudyConfig(experiment="ax", models=["resnet18-ppm", "resnet50-ppm", "resnet18-aspp"],
                      axes={"model.output_stride": [8, 16]})  # fmt: skip
    strength = {"resnet18-ppm": 6.0, "resnet50-ppm": 9.0, "resnet18-aspp": 6.2}
    results = tmp_path / "results"
    for name in run_names(cfg):
        os8 = name.endswith("_os8")  # os8 a little stronger and slower than os16
        scale, latency = (1.1, 30.0) if os8 else (1.0, 20.0)
        write_fabricated_run(
            run_dir(results, cfg, name, 0), name, 0, strength[pair_of(name)] * scale, latency, 10.0, 100.0
        )
    summarize(cfg, results, results / "ax" / "summary.csv")
    study = load_study(cfg, results)
    assert study.reference == "os8" and any("variant 'os8'" in note for note in study.notes)
    assert fig_context_modules(study).models == ["resnet18-ppm_os8", "resnet18-aspp_os8"]

    data = report_data(cfg, results, tmp_path / "figures", data_root=tmp_path / "data")
    overview = data["tables"][0]
    assert overview["header"][:3] == ["Backbone", "Module", "Variant"]
    assert [row[2]["t"] for row in overview["rows"]] == ["os8", "os16"] * 3
    context = next(t for t in data["tables"] if t["title"] == "Context modules on ResNet18")
    miou = context["header"].index("mIoU")
    assert [(row[0]["t"], row[miou]["t"]) for row in context["rows"]] == [
        ("PPM", f"{study.value('resnet18-ppm_os8', 'miou'):.2f}"),
        ("ASPP (1,2,3,6)", f"{study.value('resnet18-aspp_os8', 'miou'):.2f}"),
    ]
    best = max(("resnet18-ppm_os8", "resnet18-aspp_os8"), key=lambda m: study.value(m, "miou"))
    context_finding = next(f["text"] for f in data["findings"] if f["title"] == "Context modules")
    assert context_finding.startswith(f"Best context module on ResNet18: {'PPM' if 'ppm' in best else 'ASPP'} (")
    pairs = {(c.a, c.b) for c in study.comparisons}
    assert ("resnet50-ppm_os8", "resnet18-ppm_os8") in pairs and ("resnet50-ppm_os16", "resnet50-ppm_os8") in pairs


def test_ocr_needs_aux_and_head_options_are_checked_per_head(tmp_path):
    def fails(data: dict, message: str) -> None:
        path = _write(tmp_path, {"experiment": "h", **data})
        with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + message):
            load_config(path)

    # OCR's soft object regions are the aux head's logits: a run of it without that head is refused, by key.
    fails({"models": ["resnet18-ocr"], "model": {"aux": False}},
          "model entry 'resnet18-ocr': 'model.aux' must be true for head 'ocr'")  # fmt: skip
    fails({"models": ["resnet18-ppm", {"resnet18-ocr_x": {"model.aux": False}}]},
          "model entry 'resnet18-ocr_x': 'model.aux' must be true for head 'ocr'")  # fmt: skip
    assert load_config(_write(tmp_path, {"experiment": "h", "models": ["resnet18-ppm"], "model": {"aux": False}}))
    # Options: unknown names and wrong types, naming model.head_options.<name>; the study's options reach every run.
    fails({"models": ["resnet18-aspp"], "model": {"head_options": {"rate": [1, 2]}}},
          re.escape("unknown key 'model.head_options.rate' for head 'aspp'; its options: rates, image_pool"))
    fails({"models": ["resnet18-aspp"], "model": {"head_options": {"rates": 6}}},
          re.escape("'model.head_options.rates' must be a list of int, got 6"))
    fails({"models": [{"resnet18-aspp_x": {"model.head_options": {"image_pool": "yes"}}}]},
          re.escape("model entry 'resnet18-aspp_x': 'model.head_options.image_pool' must be bool, got 'yes'"))
    fails({"models": ["resnet18-aspp", "resnet18-ppm"], "model": {"head_options": {"image_pool": True}}},
          re.escape("unknown key 'model.head_options.image_pool' for head 'ppm'"))
    # DeepLabV3's head is the commented line of config/config.yaml, one run beside the study's ASPP.
    (line,) = [x for x in (ROOT / "config" / "config.yaml").read_text().splitlines() if "deeplabv3" in x]
    study = _write(tmp_path, {"experiment": "h", "models": ["resnet18-aspp", *yaml.safe_load(line.replace("#", ""))]})
    cfg = load_config(study)
    assert run_names(cfg) == ["resnet18-aspp", "resnet18-aspp_deeplabv3"]
    assert run_config(cfg, "resnet18-aspp").model.head_options == {}
    options = run_config(cfg, "resnet18-aspp_deeplabv3").model.head_options
    assert options == {"rates": [1, 12, 24, 36], "image_pool": True, "channels": 512}
    assert head_label("aspp", options) == "ASPP (1,12,24,36)+pool" and head_label("aspp") == head("aspp").label
    assert head("aspp").label == "ASPP (1,2,3,6)" and display_name("resnet18-aspp") == "ResNet18-ASPP (1,2,3,6)"
    assert head_label("ppm", {"bins": [1, 2, 4], "channels": 256}) == "PPM (1,2,4) channels=256"
    assert head_label("ppm", {"bins": [1, 2, 3, 6], "dropout": 0.2}) == "PPM"


@pytest.mark.parametrize(
    ("own", "axes", "key", "axis"),
    [
        ({"model.output_stride": 16}, {"model.output_stride": [8, 16]}, "model.output_stride", "model.output_stride"),
        ({"train": {"crop_size": [256, 256]}}, {"evaluate.flip": [True], "train.crop_size": [[256, 512]]},
         "train.crop_size", "train.crop_size"),
    ],
)  # fmt: skip
def test_an_entry_may_not_set_a_key_an_axis_names_its_runs_by(tmp_path, own, axes, key, axis):
    """``resnet18-ppm_os8`` must run at output stride 8: an entry overriding the axis's key is refused at load."""
    path = _write(tmp_path, {"experiment": "m", "models": ["resnet50-ppm", {"resnet18-ppm": own}], "axes": axes})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "model entry 'resnet18-ppm'" in text
    assert f"sets '{key}', which axis '{axis}' also sets" in text
    # The same key on an entry without that axis, or another key beside it, is fine.
    load_config(_write(tmp_path, {"experiment": "m", "models": [{"resnet18-ppm": own}]}, "no_axis.yaml"))
    fine = load_config(_write(tmp_path, {"experiment": "m", "models": [{"resnet18-ppm": {"train.iterations": 5}}],
                                         "axes": axes}, "other_key.yaml"))  # fmt: skip
    for name in run_names(fine):
        assert run_config(fine, name).train.iterations == 5
