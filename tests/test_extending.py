"""Extending the study without editing the package: a backbone, a head and a metric registered at run time (from
this test, outside the package) go through training, evaluation, the benchmark, the summary, every figure and the
report tables like the built-in ones."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import small_config
from toys import ToyHead, fwiou, toy_backbone

from segmodels.engine.benchmark import benchmark_run
from segmodels.engine.evaluate import evaluate
from segmodels.engine.train import train
from segmodels.metrics import metric_keys, register_metric, unregister_metric
from segmodels.models import catalog, list_models, register_backbone, register_head
from segmodels.report.figures import FIGURES, make_figures
from segmodels.report.results import load_study
from segmodels.report.tables import result_tables
from segmodels.study import runs
from segmodels.study.summary import summarize

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# The toys in every comparison the report draws: the toy backbone under PPM (the backbone comparison, against
# ResNet18), the toy head on ResNet18 (the context modules), and both together.
MODELS = ["resnet18-ppm", "toy-ppm", "resnet18-toyhead", "toy-toyhead"]


@pytest.fixture
def extended():
    """ToyNet, a toy head and fwIoU, registered for one test and gone afterwards."""
    builtin = metric_keys()
    with catalog.registered():
        register_backbone("toy", toy_backbone, label="ToyNet", short="TN")
        register_head("toyhead", ToyHead, label="Toy head", options={"width": (int, 8)})
        register_metric("fwiou", "fwIoU", fwiou, digits=1, training=False)
        try:
            yield
        finally:
            unregister_metric("fwiou")
    assert metric_keys() == builtin and "toy-toyhead" not in list_models()


def _is_toy(model: str) -> bool:
    backbone, head = catalog.arch_of(model)
    return backbone == "toy" or head == "toyhead"


@pytest.mark.usefixtures("extended")
def test_a_registered_backbone_head_and_metric_go_through_the_whole_study(tmp_path, packed_data, mlflow_uri):
    assert {"toy-ppm", "resnet18-toyhead", "toy-toyhead"} <= set(list_models())
    cfg = small_config(
        experiment="extended",
        models=MODELS,
        model={"aux": False},
        evaluate={"samples": [0, 1]},
        benchmark={"size": [64, 64], "modes": ["fp32"], "cpu_warmup": 1, "cpu_repeats": 3},
    )
    results = tmp_path / "results"
    for model in MODELS:
        folder = runs.run_dir(results, cfg.experiment, model, 0)
        train(cfg, model, seed=0, out=folder, data_dir=packed_data)
        evaluate(cfg, folder, data=packed_data, progress=False)
        benchmark_run(cfg, folder)
        metrics = runs.RunFolder(folder).read_metrics()
        assert 0.0 <= metrics["fwiou"] <= 100.0, (model, metrics)  # the toy metric is scored with the others

    summary = summarize(cfg, results, results / cfg.experiment / "summary.csv")
    table = pd.read_csv(results / cfg.experiment / "summary.csv").set_index("model")
    assert list(table.index) == MODELS == list(summary["model"])
    assert table.loc[MODELS, ["miou", "fwiou", "latency_ms"]].notna().all().all()
    assert list(table.loc[MODELS, "backbone"]) == ["resnet18", "toy", "resnet18", "toy"]

    index = make_figures(cfg, results, tmp_path / "figures", log=lambda _: None)
    assert index["skipped"] == [] and [f["name"] for f in index["figures"]] == list(FIGURES)
    best = table["miou"].idxmax()
    for figure in index["figures"]:
        shown = figure["models"]
        if figure["name"] == "confusion":  # by design the best model's alone
            assert shown == [best], figure
        else:
            assert any(map(_is_toy, shown)), figure
    drawn = {f["name"]: set(f["models"]) for f in index["figures"]}
    assert {"toy-ppm", "resnet18-ppm"} <= drawn["backbones"]
    assert {"resnet18-toyhead", "resnet18-ppm"} <= drawn["context_modules"]
    assert set(MODELS) <= drawn["miou_latency"] & drawn["per_class_iou"] & drawn["training_curves"]
    assert {"toy-ppm", "resnet18-toyhead"} <= drawn["differences"]  # against ResNet18-PPM, paired intervals

    tables = {t["title"]: t for t in result_tables(load_study(cfg, results))}
    rows = [[cell["t"] for cell in row] for row in tables["Performance summary"]["rows"]]
    assert [row[:2] for row in rows] == [["ResNet18", "PPM"], ["ToyNet", "PPM"], ["ResNet18", "Toy head"],
                                         ["ToyNet", "Toy head"]]  # fmt: skip
    assert "fwIoU" in tables["Performance summary"]["header"]
    assert [row[0]["t"] for row in tables["Context modules on ResNet18"]["rows"]] == ["PPM", "Toy head"]
    assert [row[0]["t"] for row in tables["Efficiency of the backbones (PPM head)"]["rows"]] == ["ResNet18", "ToyNet"]
    json.dumps(tables)  # what the typesetter receives
