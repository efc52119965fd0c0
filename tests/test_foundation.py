"""The project's own promises: metadata in step, a command line that explains itself, configs that validate."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from segmodels.cli import main
from segmodels.study.config import ConfigError, flatten, load_config

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name → conda-forge name where they differ


def _split(req: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req)
    assert match, req
    return match.group(1).lower(), match.group(3).replace(" ", "")


JOB_EXTRAS = ("export", "robustness")  # extras whose packages the workflow's jobs import (deploy, corrupt, robustness)


def _pyproject_runtime() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = [r for extra in JOB_EXTRAS for r in data["project"]["optional-dependencies"][extra]]
    return dict(_split(r) for r in [*data["project"]["dependencies"], *extras])


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out: dict[str, str] = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item in ("pip",) or item.startswith("python"):
                continue
            name, spec = _split(item)
            out[name] = spec
    return out


def test_environment_matches_pyproject():
    runtime = _pyproject_runtime()
    env = _environment()
    for name, spec in runtime.items():
        conda = CONDA_NAMES.get(name, name)
        assert conda in env, f"environment.yml lacks runtime dependency {name} (as {conda})"
        assert env[conda] == spec, f"{name}: pyproject says {spec!r}, environment.yml says {env[conda]!r}"
    back = {v: k for k, v in CONDA_NAMES.items()}
    for conda in env:
        assert back.get(conda, conda) in runtime, f"environment.yml has {conda}, which pyproject.toml lacks"


def test_environment_installs_the_package_itself():
    # By hand: the file's comment says to pip install the checkout; under --software-deployment-method conda,
    # Snakemake runs the post-deploy script beside the file, which installs the checkout the Snakefile runs from.
    assert "-e .[dev]" in (ROOT / "environment.yml").read_text()
    script = (ROOT / "environment.post-deploy.sh").read_text()
    assert 'pip install --no-deps --editable "$SEGMODELS_SOURCE"' in script
    assert "SEGMODELS_SOURCE=workflow.basedir" in (ROOT / "workflow" / "rules" / "common.smk").read_text()


def test_runtime_bounds_are_lower_bounds_admitting_torch_2_6_and_the_installed_versions():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    runtime = _pyproject_runtime()
    torch_spec = SpecifierSet(runtime["torch"])
    assert "2.6.0" in torch_spec and "2.6.0+cu124" in torch_spec and "9.0" in torch_spec  # no upper bound
    for name, spec in runtime.items():  # "lower bounds only": a GPU machine brings its own torch and CUDA stack
        assert all(s.operator == ">=" for s in SpecifierSet(spec)), f"{name}{spec}: not a lower bound"
        assert SpecifierSet(spec).contains(version(name), prereleases=True), f"installed {name} {version(name)}"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "prepare", "train", "evaluate", "benchmark", "models"):
        assert command in out, f"'{command}' missing from segmodels --help"


def test_console_script_runs():
    exe = Path(sys.executable).with_name("segmodels")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("segmodels ")


@pytest.mark.parametrize("name", ["demo.yaml", "config.yaml", "test.yaml", "robustness.yaml", "deploy.yaml"])
def test_shipped_configs_load(name):
    import jsonschema

    path = ROOT / "config" / name
    load_config(path)  # raises ConfigError naming the file and the key
    # The Snakefile validates the file against config/schema.yaml before planning: it must accept it too.
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text())))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_study_matrix_is_the_earlier_study_plus_fcn():
    cfg = load_config(ROOT / "config" / "config.yaml")
    expected = {f"{b}-ppm" for b in ("resnet18", "resnet50", "resnet101", "mobilenetv2", "mobilenetv3")}
    expected |= {"resnet18-aspp", "resnet18-ocr", "resnet18-fcn"}
    assert set(cfg.models) == expected
    assert set(load_config(ROOT / "config" / "demo.yaml").models) == expected


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": ["resnet34-ppm"]}, "model 'resnet34-ppm'"),
        ({"train": {"lrate": 0.1}}, "unknown key 'train.lrate'"),
        ({"train": {"lr": "fast"}}, "'train.lr' must be float"),
        ({"train": {"iterations": 1.5}}, "'train.iterations' must be int"),
        ({"train": {"crop_size": [64]}}, "'train.crop_size' must hold exactly 2 values, got [64]"),
        ({"train": {"crop_size": [64, 0]}}, "'train.crop_size[1]' must be at least 1, got 0"),
        ({"model": {"output_stride": 4}}, "'model.output_stride' must be one of 8, 16, 32, got 4"),
        ({"model": {"bn_momentum": 1.5}}, "'model.bn_momentum' must be at most 1, got 1.5"),
        ({"model": {"bn_momentum": 0.0}}, "'model.bn_momentum' must be greater than 0, got 0.0"),
        ({"model": {"num_classes": 0}}, "'model.num_classes' must be at least 1, got 0"),
        ({"data": {"source": "kitti"}}, "'data.source' must be one of synthetic, cityscapes, voc, ade20k, folder, got 'kitti'"),
        ({"models": []}, "'models' is empty"),
        ({"train": {"iterations": 0}}, "'train.iterations' must be at least 1, got 0"),
        ({"train": {"lr": -0.01}}, "'train.lr' must be greater than 0, got -0.01"),
        ({"train": {"device": "gpu0"}}, "'train.device' must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
        ({"train": {"scale_range": [2.0, 0.5]}}, "'train.scale_range' must be [low, high] with low <= high"),
        ({"evaluate": {"scales": []}}, "'evaluate.scales' must hold at least 1 value(s), got []"),
        ({"seeds": [0, -1]}, "'seeds[1]' must be at least 0, got -1"),
        ({"stats": {"confidence": 1.0}}, "'stats.confidence' must be less than 1, got 1.0"),
        ({"benchmark": {"amp_dtype": "int8"}}, "'benchmark.amp_dtype' must be one of float16, bfloat16"),
        # Names that become folders, wildcards and shell words.
        ({"experiment": "x;touch INJECTED;y"}, "'experiment' must be a plain name of letters, digits"),
        ({"experiment": "my exp"}, "'experiment' must be a plain name"),
        ({"experiment": "../../escape"}, "'experiment' must be a plain name"),
        ({"experiment": ".."}, "'experiment' must be a plain name"),
        ({"experiment": "-rf"}, "'experiment' must be a plain name"),
        ({"data": {"dataset": "a/b"}}, "'data.dataset' must be a plain name"),
        ({"data": {"dataset": "$(id)"}}, "'data.dataset' must be a plain name"),
        # Overrides in the matrix are held to the same limits, naming the entry.
        ({"models": [{"resnet18-ppm": {"train.iterations": -5}}]}, "'train.iterations' must be at least 1, got -5"),
    ],
)
def test_bad_config_names_the_key(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_crop_larger_than_the_rescaled_packed_images_names_both(tmp_path):
    path = _write(tmp_path, {"data": {"size": [64, 128]}, "train": {"crop_size": [128, 128], "scale_range": [0.5, 1.5]}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'train.crop_size' [128, 128]" in message and "'data.size' [64, 128]" in message
    assert "[96, 192]" in message  # the largest rescaled image
    # At the edge (crop = packed size × the largest scale) the crop is accepted.
    load_config(_write(tmp_path, {"data": {"size": [64, 128]}, "train": {"crop_size": [96, 192],
                                                                        "scale_range": [0.5, 1.5]}}))


def test_names_that_are_plain_pass(tmp_path):
    cfg = load_config(_write(tmp_path, {"experiment": "study-2.v1_a", "data": {"dataset": "cityscapes_full"}}))
    assert cfg.experiment == "study-2.v1_a" and cfg.data.dataset == "cityscapes_full"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"experiment": "x;touch INJECTED;y"}, "experiment"),
        ({"train": {"iterations": 0}}, "train/iterations"),
        ({"data": {"dataset": "../up"}}, "data/dataset"),
        ({"model": {"bn_momentum": 0}}, "model/bn_momentum"),
    ],
)
def test_schema_states_the_same_limits(data, path):
    """Snakemake validates the study against config/schema.yaml before planning: it must refuse these too."""
    import jsonschema

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
    study = {"experiment": "ok", "models": ["resnet18-ppm"], **data}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(study))
    assert errors and "/".join(map(str, errors[0].absolute_path)) == path
    ok = {"experiment": "ok", "models": ["resnet18-ppm"], "train": {"iterations": 1}, "model": {"bn_momentum": None}}
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(ok))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_and_defaults(tmp_path):
    path = _write(tmp_path, {"train": {"lr": 0.02}})
    cfg = load_config(path, overrides={"train.batch_size": 2, "model.pretrained": None})
    assert cfg.train.lr == 0.02 and cfg.train.batch_size == 2 and cfg.model.pretrained is None
    assert cfg.train.momentum == 0.9  # a default the file did not set
    flat = flatten({"train": {"lr": 0.02, "crop_size": [1, 2]}})
    assert flat == {"train.lr": 0.02, "train.crop_size": [1, 2]}
