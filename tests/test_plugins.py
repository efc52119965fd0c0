"""A study's ``plugins``: modules of the user's (outside the package) imported before the config is read, so the
backbones, heads and metrics they register are models and metrics of the study in every process, Snakemake's
jobs included."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, snakemake

from segmodels.metrics import metric_keys
from segmodels.models import catalog
from segmodels.study.config import ConfigError, load_config, study_from_dict

TESTS = Path(__file__).resolve().parent
# A lab's own module: ToyNet, a toy head and fwIoU (defined in tests/toys.py, outside the package).
PLUGIN = """
from toys import ToyHead, fwiou, toy_backbone

from segmodels.metrics import register_metric
from segmodels.models import register_backbone, register_head

register_backbone("toy", toy_backbone, label="ToyNet", short="TN")
register_head("toyhead", ToyHead, label="Toy head", options={"width": (int, 8)})
register_metric("fwiou", "fwIoU", fwiou, digits=1, training=False)
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder holding the plugin module ``labmodels``, on sys.path for this test; the registrations and the
    module are gone afterwards."""
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "labmodels.py").write_text(PLUGIN)
    (folder / "broken.py").write_text("raise RuntimeError('the GPU cluster is down')\n")
    monkeypatch.syspath_prepend(str(folder))
    builtin = metric_keys()
    with catalog.registered():
        yield folder
        from segmodels.metrics import unregister_metric

        if "fwiou" in metric_keys():
            unregister_metric("fwiou")
    for name in ("labmodels", "broken"):
        sys.modules.pop(name, None)
    assert metric_keys() == builtin


def _study(**extra):
    return {"experiment": "lab", "models": ["toy-toyhead", "resnet18-toyhead"], "model": {"pretrained": None}} | extra


def test_a_plugin_registers_models_and_metrics_before_the_config_is_read(plugin_path):
    with pytest.raises(ConfigError, match="model 'toy-toyhead' is not .*under plugins:"):
        study_from_dict(_study())  # without the plugin the names are unknown
    cfg = study_from_dict(_study(plugins=["labmodels"]))
    assert cfg.plugins == ["labmodels"] and cfg.models == ["toy-toyhead", "resnet18-toyhead"]
    assert "fwiou" in metric_keys() and "toy" in catalog.backbones()


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        (["no_such_lab"], r"no module named 'no_such_lab' \(is its folder on PYTHONPATH"),
        (["broken"], "importing broken failed: RuntimeError: the GPU cluster is down"),
        (["labmodels; rm -rf /"], "is not a Python module name"),
        ("labmodels", "expected a list of Python module names"),
    ],
)
def test_a_bad_plugin_is_named_before_anything_runs(plugin_path, tmp_path, plugins, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(plugins=plugins)))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.slow
def test_a_plugin_study_runs_through_snakemake(tmp_path, plugin_path, monkeypatch):
    """The whole DAG in separate processes: the Snakefile and every `segmodels` job import the plugin."""
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    # The plugin's backbone under a built-in head, a built-in backbone under the plugin's head, and the pair that
    # compares the plugin's head with a built-in one on the same backbone.
    models = ["resnet18-ppm", "toy-ppm", "resnet18-toyhead"]
    config |= {"experiment": "lab", "models": models, "plugins": ["labmodels"]}
    config["tracking"]["log_model"] = False  # the MLflow model of each run: not what this test is about
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugin_path), str(TESTS)]))
    result = snakemake(tmp_path / "work", "--cores", "2", "--resources", "gpu=1", config=study)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    summary = pd.read_csv(tmp_path / "work" / "results" / "lab" / "summary.csv").set_index("model")
    assert list(summary.index) == models and (summary["status"] == "complete").all()
    assert summary.loc[models, ["miou", "fwiou", "latency_ms"]].notna().all().all()  # the plugin's metric too
    figures = json.loads((tmp_path / "work" / "reports" / "figures" / "figures.json").read_text())
    assert not figures["skipped"]
    for figure in figures["figures"]:
        if figure["name"] != "confusion":  # the best model's alone, by design
            assert {"toy-ppm", "resnet18-toyhead"} & set(figure["models"]), figure
    assert (tmp_path / "work" / "reports" / "report.pdf").stat().st_size > 0
