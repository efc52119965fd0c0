"""The study at the field's protocol (config/cityscapes-mmseg.yaml): its values, its plan, and the report's
published column; the several-seeds line of both real configs."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from test_figures import fabricate_results
from test_report import _text
from test_workflow import ROOT, snakemake

from segmodels.report import typeset
from segmodels.report.design import MMSEG_PROTOCOL, PUBLISHED, mmseg_differences
from segmodels.report.published import PUBLISHED_TITLE, published_table
from segmodels.report.results import Study
from segmodels.study.config import load_config
from segmodels.study.matrix import run_config, run_names

MMSEG = ROOT / "config" / "cityscapes-mmseg.yaml"
REAL_CONFIGS = [ROOT / "config" / "config.yaml", MMSEG]


def test_mmseg_config_loads_with_the_protocol_values():
    cfg = load_config(MMSEG)
    assert cfg.data.source == "cityscapes" and cfg.data.size == [1024, 2048]
    t = cfg.train
    assert (t.crop_size, t.batch_size, t.lr, t.iterations, t.scale_range) == ([512, 1024], 8, 0.01, 80000, [0.5, 2.0])
    assert (t.poly_power, t.momentum, t.weight_decay, t.warmup_iters) == (0.9, 0.9, 0.0005, 0)
    assert cfg.model.norm == "sync" and not t.sync_bn
    assert cfg.evaluate.full_resolution and not cfg.evaluate.sliding and cfg.model.output_stride == 8
    assert run_names(cfg) == list(PUBLISHED)  # every model has its published numbers, nothing else is trained
    for name in run_names(cfg):
        assert mmseg_differences(run_config(cfg, name)) == [], name
    deeplab = run_config(cfg, "resnet50c-aspp_deeplabv3").model.head_options
    assert deeplab["rates"] == [1, 12, 24, 36] and deeplab["image_pool"] and deeplab["channels"] == 512
    assert run_config(cfg, "resnet18c-ppm").model.head_options == {"channels": 128}  # mmsegmentation's R-18 width


def test_mmseg_config_builds_mmsegs_decode_heads():
    """Its heads drop whole channels (BaseDecodeHead: nn.Dropout2d), the seed's protocol single activations, and
    a run's model is built so: the config's value reaches the model through the run."""
    from torch import nn

    from segmodels.engine.run import OpenRun

    cfg = load_config(MMSEG)
    assert cfg.model.head_dropout == "channel" and load_config(REAL_CONFIGS[0]).model.head_dropout == "element"
    name = "resnet18c-aspp_deeplabv3"
    with torch.device("meta"):
        model = OpenRun("train", name, run_config(cfg, name), None, None).build_model(pretrained=False)
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    assert {type(m) for m in dropouts} == {nn.Dropout2d} and [m.p for m in dropouts] == [0.1, 0.1]  # head, aux
    assert model.head.classifier.in_channels == 128 and len(model.head.branches) == 5  # R-18 width; 4 rates + pool


def test_mmseg_config_comments_every_setting_with_what_it_matches():
    for line in MMSEG.read_text().splitlines():
        if re.match(r"^  (iterations|batch_size|crop_size|scale_range|lr|weight_decay|poly_power|norm|"
                    r"full_resolution|sliding|size):", line):  # fmt: skip
            assert "#" in line, line


def test_mmseg_config_plans_one_job_per_model_without_the_dataset(tmp_path):
    """The plan needs no dataset: `prepare` reads the official zips only when it runs."""
    result = snakemake(tmp_path, "-n", "--quiet", "rules", config=MMSEG, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    n = len(PUBLISHED)
    assert {k: int(v) for k, v in counts.items() if k in ("prepare", "train", "evaluate", "benchmark", "synth")} == {
        "prepare": 1, "train": n, "evaluate": n, "benchmark": n}  # fmt: skip
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=lambda p: p.name)
def test_real_configs_have_the_commented_several_seeds_line(path):
    lines = path.read_text().splitlines()
    at = lines.index(next(line for line in lines if line.startswith("seeds:")))
    assert lines[at + 1].startswith("# seeds: [0, 1, 2]")
    assert load_config(path).seeds == [0]


def _study(cfg, rows: dict[str, float], tmp_path) -> Study:
    summary = pd.DataFrame({"status": "complete", "seeds": 1, "miou": list(rows.values())}, index=list(rows))
    return Study(cfg=cfg, root=tmp_path, summary=summary)


def test_published_column_for_a_study_at_the_protocol(tmp_path):
    cfg = load_config(MMSEG)
    table = published_table(_study(cfg, {"resnet50c-ppm": 77.9, "mobilenetv2-fcn": 60.0}, tmp_path))
    assert table["title"] == PUBLISHED_TITLE and "published" in table["title"]
    assert table["groups"][1] == ["mmsegmentation (published)", 2]
    assert "quoted as published" in table["note"] and "pspnet_r50-d8_512x1024_80k_cityscapes" in table["note"]
    rows = {r[0]["t"]: [c["t"] for c in r[1:]] for r in table["rows"]}
    assert rows == {"ResNet50-V1c-PPM": ["78.55", "78.22", "77.90", "-0.65"], "MobileNetV2-FCN": ["61.54", "–", "60.00",
                                                                                                   "-1.54"]}  # fmt: skip


def test_no_published_column_off_the_protocol(tmp_path):
    """The study at the earlier study's settings (1024×512, 40k iterations) gets no published numbers; a run that
    departs from the protocol is named with the settings that differ."""
    real = load_config(ROOT / "config" / "config.yaml")
    assert published_table(_study(real, {"resnet50-ppm": 70.0}, tmp_path)) is None
    assert "data.size=[512, 1024]" in mmseg_differences(real) and len(MMSEG_PROTOCOL) > 8
    cfg = load_config(MMSEG, overrides={"models": ["resnet50c-ppm", {"resnet101c-ppm": {"train.iterations": 40000}}]})
    table = published_table(_study(cfg, {"resnet50c-ppm": 78.0, "resnet101c-ppm": 78.0}, tmp_path))
    assert [r[0]["t"] for r in table["rows"]] == ["ResNet50-V1c-PPM"]
    assert "ResNet101-V1c-PPM (train.iterations=40000)" in table["note"]


def test_report_prints_the_published_table_labelled_as_published(tmp_path, monkeypatch):
    cfg, results = fabricate_results(tmp_path)
    mmseg = published_table(_study(load_config(MMSEG), {"resnet50c-ppm": 77.9}, tmp_path))
    monkeypatch.setattr(typeset, "published_table", lambda study: mmseg)
    out = tmp_path / "report.pdf"
    typeset.write_report(cfg, results, tmp_path / "figures", out, data_root=tmp_path / "data" / "packed",
                         log=lambda _: None)  # fmt: skip
    text = _text(out)
    assert re.search(r"Comparison with mmsegmentation.s published results", text)  # Typst sets a typographic '
    assert "mmsegmentation (published)" in text and "78.55" in text and "77.90" in text
    monkeypatch.undo()
    assert typeset.report_data(cfg, results, tmp_path / "figures", data_root=tmp_path / "data" / "packed")[
        "published"] is None  # fmt: skip
