"""The model catalog: names, labels and run-name grammar in one place; a backbone and a head registered at run time
(defined here, outside the package, without torchvision) are models like the built-in ones everywhere."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from toys import ToyHead, toy_backbone

from segmodels.models import build_model, catalog, list_models, parse_model_name, register_backbone, register_head
from segmodels.models.backbones import BACKBONE_SPECS
from segmodels.models.heads import HEAD_BUILDERS
from segmodels.report import design
from segmodels.study.config import ConfigError, StudyConfig, study_from_dict
from segmodels.study.matrix import run_config, run_names

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy():
    """ToyNet (``toy``) and a toy head (``toyhead``), registered for one test and gone afterwards."""
    with catalog.registered():
        register_backbone("toy", toy_backbone, label="ToyNet", short="TN")
        register_head("toyhead", ToyHead, label="Toy head", options={"width": (int, 8)})
        yield
    assert "toy" not in catalog.backbones() and "toy" not in BACKBONE_SPECS
    assert "toyhead" not in catalog.heads() and "toyhead" not in HEAD_BUILDERS


def test_the_built_in_names_labels_and_short_names():
    assert catalog.backbones() == ("resnet18", "resnet50", "resnet101", "resnet18c", "resnet50c", "resnet101c",
                                   "mobilenetv2", "mobilenetv3", "mitb0", "mitb1", "mitb2")  # fmt: skip
    assert catalog.heads() == ("ppm", "aspp", "ocr", "fcn", "segformer") and catalog.cascade_heads() == ("ocr",)
    assert [catalog.backbone(b).short for b in catalog.backbones()] == ["R18", "R50", "R101", "R18c", "R50c", "R101c",
                                                                        "MNv2", "MNv3", "MiT0", "MiT1", "MiT2"]  # fmt: skip
    assert [catalog.head(h).short for h in catalog.heads()] == ["PPM", "ASPP (1,2,3,6)", "OCR", "FCN", "MLP"]
    assert catalog.display_name("mitb0-segformer") == "MiT-B0-SegFormer (MLP)"
    assert catalog.backbone("mitb2").output_strides == (32,) and catalog.backbone("resnet18").output_strides == (8, 16, 32)
    assert catalog.display_name("mobilenetv2-aspp_os16") == "MobileNetV2-ASPP (1,2,3,6) os16"
    assert catalog.short_name("resnet101-ppm") == "R101 PPM" and catalog.short_name("resnet18-fcn_a_b") == "R18 FCN a b"
    assert set(BACKBONE_SPECS) == set(catalog.backbones()) and set(HEAD_BUILDERS) == set(catalog.heads())
    with pytest.raises(ValueError, match="unknown model 'resnet18-ppm_os16': expected {backbone}-{head} without tags"):
        parse_model_name("resnet18-ppm_os16")


@pytest.mark.parametrize("name", ["my_net", "my-net", "MyNet", "net!", "", "ré"])
def test_names_outside_lowercase_letters_and_digits_are_refused(name):
    with (
        catalog.registered(),
        pytest.raises(ValueError, match=r"must be lowercase letters and digits only \(\[a-z0-9\]\+\)"),
    ):
        catalog.add_backbone(name, label="X")


def test_duplicates_empty_labels_and_bad_options_are_refused():
    with catalog.registered():
        with pytest.raises(ValueError, match="backbone 'resnet18' is already in the catalog \\(as 'ResNet18'\\)"):
            catalog.add_backbone("resnet18", label="Another")
        with pytest.raises(ValueError, match="head 'ppm' is already in the catalog"):
            catalog.add_head("ppm", label="PPM again")
        for label in ("", "  ", None):
            with pytest.raises(ValueError, match="head 'new': label must be a non-empty string"):
                catalog.add_head("new", label=label)
        with pytest.raises(ValueError, match="backbone 'new': short must be a non-empty string"):
            catalog.add_backbone("new", label="New", short="")
        with pytest.raises(
            ValueError, match=r"option 'width' must be an identifier mapped to \(config type, default\)"
        ):
            catalog.add_head("new", label="New", options={"width": int})
        assert "new" not in catalog.heads() + catalog.backbones()  # nothing half-added


def test_registration_checks_the_catalog_and_the_builder():
    with catalog.registered():
        with pytest.raises(ValueError, match="backbone 'resnet18' is registered twice"):
            register_backbone("resnet18", toy_backbone)
        with pytest.raises(ValueError, match="backbone 'toy' is not in the catalog: register it with a label"):
            register_backbone("toy", toy_backbone)
        with pytest.raises(TypeError, match="expected a BackboneSpec or a builder"):
            register_backbone("toy", "not a builder", label="ToyNet")
        with pytest.raises(
            ValueError, match="option 'depth' with default 3 is not a keyword-only parameter of ToyHead"
        ):
            register_head("toyhead", ToyHead, label="Toy head", options={"depth": (int, 3)})
        with pytest.raises(ValueError, match="option 'width' with default 4 is not a keyword-only parameter"):
            register_head("toyhead", ToyHead, label="Toy head", options={"width": (int, 4)})
        catalog.add_backbone("named", label="Named")  # names first, builder later: must agree
        with pytest.raises(ValueError, match="backbone 'named': label 'Other' differs from the catalog's 'Named'"):
            register_backbone("named", toy_backbone, label="Other")
        register_backbone("named", toy_backbone)
        assert catalog.backbone("named").label == "Named" and "named" in BACKBONE_SPECS
    assert "named" not in BACKBONE_SPECS and "named" not in catalog.backbones()


def test_a_catalog_entry_and_a_builder_must_come_together_at_build_time():
    with catalog.registered():
        catalog.add_backbone("ghost", label="Ghost")
        with pytest.raises(RuntimeError, match="backbone 'ghost' is in the catalog but has no builder: register one"):
            build_model("ghost", "fcn")
        BACKBONE_SPECS["stray"] = toy_backbone  # into the registry directly, past the catalog
        with pytest.raises(RuntimeError, match="backbone 'stray' has a builder but no catalog entry"):
            build_model("stray", "fcn")
        catalog.add_head("lonely", label="Lonely")
        with pytest.raises(RuntimeError, match="head 'lonely' is in the catalog but has no builder"):
            build_model("resnet18", "lonely")
    assert "stray" not in BACKBONE_SPECS  # the registries keep only what the catalog names


@pytest.mark.usefixtures("toy")
def test_a_registered_toy_is_listed_parsed_and_named():
    names = list_models()
    assert len(names) == 12 * 6 and names[-6:] == ["toy-ppm", "toy-aspp", "toy-ocr", "toy-fcn", "toy-segformer",
                                                   "toy-toyhead"]  # fmt: skip
    assert "resnet18-toyhead" in names and names.index("resnet18-toyhead") == 5
    assert parse_model_name("toy-toyhead") == ("toy", "toyhead") and catalog.arch_of("toy-ppm_os16") == ("toy", "ppm")
    assert catalog.display_name("toy-toyhead_os16") == "ToyNet-Toy head os16"
    assert catalog.short_name("toy-toyhead") == "TN Toy head"
    assert (
        catalog.head_label("toyhead") == "Toy head"
        and catalog.head_label("toyhead", {"width": 4}) == "Toy head width=4"
    )
    assert "toy" in catalog.name_pattern() and "toyhead" in catalog.name_pattern()
    # The study's design runs over the catalog: the toy joins the backbone and context-module comparisons.
    assert "toy-ppm" in design.backbone_models() and "resnet18-toyhead" in design.context_models()
    assert ("context modules (ResNet18)", "resnet18-fcn", "resnet18-toyhead") in design.fixed_pairs()


@pytest.mark.usefixtures("toy")
def test_a_registered_toy_builds_and_predicts():
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    model = build_model("toy", "toyhead", num_classes=5, head_options={"width": 4}).eval()
    assert model.name == "toy-toyhead" and model.head.conv.out_channels == 4
    with torch.no_grad():
        assert model(x)["out"].shape == (2, 5, 32, 48)
    out = model.train()(x)
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 5, 32, 48)
    for backbone, head in (("toy", "ppm"), ("toy", "ocr"), ("mobilenetv2", "toyhead")):
        with torch.no_grad():
            assert build_model(backbone, head, num_classes=3).eval()(x)["out"].shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match="backbone 'toy' was registered as a builder without weights"):
        build_model("toy", "fcn", pretrained="imagenet")
    with pytest.raises(ValueError, match="unknown option 'depth' for head 'toyhead'; valid: width"):
        build_model("toy", "toyhead", head_options={"depth": 2})


@pytest.mark.usefixtures("toy")
def test_a_study_of_the_toy_validates(tmp_path):
    data = {"experiment": "toy", "models": ["toy-toyhead", {"toy-toyhead_narrow": {"model.head_options": {"width": 2}}}],
            "model": {"pretrained": None}}  # fmt: skip
    cfg = study_from_dict(data)
    assert run_names(cfg) == ["toy-toyhead", "toy-toyhead_narrow"]
    assert run_config(cfg, "toy-toyhead_narrow").model.head_options == {"width": 2}
    with pytest.raises(ConfigError, match="'model.head_options.width' must be int, got 'wide'"):
        study_from_dict({**data, "model": {"head_options": {"width": "wide"}}})
    with pytest.raises(ConfigError, match="unknown key 'model.head_options.width' for head 'ppm'"):
        study_from_dict({**data, "models": ["toy-ppm"], "model": {"head_options": {"width": 2}}})


@pytest.mark.usefixtures("toy")
def test_the_cli_lists_the_toy(capsys):
    from segmodels.cli import main

    assert main(["models", "--json", "--models", "toy-toyhead", "resnet18-toyhead"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["backbone"], r["head"]) for r in rows] == [("toy", "toyhead"), ("resnet18", "toyhead")]
    assert all(r["params_m"] > 0 for r in rows)


def test_figure_styles_cover_heads_and_backbones_not_known_in_advance():
    from segmodels.report.figures_common import backbone_marker, head_colour, model_style, style_handles

    builtin_colours = {head_colour(h) for h in catalog.heads()}
    builtin_markers = {backbone_marker(b) for b in catalog.backbones()}
    with catalog.registered():
        catalog.add_backbone("toy", label="ToyNet")
        extra = [catalog.add_head(f"extra{i}", label=f"Extra {i}").name for i in range(8)]  # 12 heads: past tab10
        colours = [head_colour(h) for h in extra]
        assert len(set(colours)) == len(colours) and not builtin_colours & set(colours)
        assert colours == [head_colour(h) for h in extra]  # deterministic
        assert backbone_marker("toy") not in builtin_markers
        assert model_style("toy-extra7_os16") == (backbone_marker("toy"), head_colour("extra7"))
        labels = [h.get_label() for h in style_handles(["toy-extra7", "resnet18-ppm", "toy-ppm"])]
        assert labels == ["PPM", "Extra 7", "ResNet18", "ToyNet"]  # heads, then backbones, in catalog order


def _toy_study(tmp_path) -> object:
    from segmodels.report.results import Study

    models = ["resnet18-ppm", "toy-ppm", "resnet18-toyhead", "toy-toyhead"]
    summary = pd.DataFrame({"status": "complete", "seeds": 1, "miou": [60.0, 40.0, 55.0, 35.0],
                            "latency_ms": [30.0, 5.0, 28.0, 4.0], "gflops": [100.0, 1.0, 90.0, 0.5]},
                           index=pd.Index(models, name="model"))  # fmt: skip
    summary["backbone"] = [catalog.arch_of(m)[0] for m in models]
    summary["head"] = [catalog.arch_of(m)[1] for m in models]
    cfg = StudyConfig(experiment="toy", models=models)
    return Study(cfg=cfg, root=tmp_path / "toy", summary=summary)


@pytest.mark.usefixtures("toy")
def test_the_toy_reaches_the_figures_and_the_tables(tmp_path):
    from segmodels.report.figures_points import fig_miou_latency
    from segmodels.report.tables import result_tables

    study = _toy_study(tmp_path)
    drawn = fig_miou_latency(study)
    assert drawn.models == list(study.summary.index)  # no model dropped for want of a label
    assert all(catalog.display_name(m) in drawn.caption for m in drawn.models)  # every one on the Pareto front
    legend = [t.get_text() for legend in drawn.fig.legends for t in legend.get_texts()]
    assert {"Toy head", "ToyNet", "PPM", "ResNet18"} <= set(legend)
    tables = {t["title"]: t for t in result_tables(study)}
    summary = tables["Performance summary"]
    assert [(row[0]["t"], row[1]["t"]) for row in summary["rows"]] == [
        ("ResNet18", "PPM"), ("ToyNet", "PPM"), ("ResNet18", "Toy head"), ("ToyNet", "Toy head")]  # fmt: skip
    assert [row[0]["t"] for row in tables["Context modules on ResNet18"]["rows"]] == ["PPM", "Toy head"]
    assert [row[0]["t"] for row in tables["Efficiency of the backbones (PPM head)"]["rows"]] == ["ResNet18", "ToyNet"]
