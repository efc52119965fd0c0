"""mmsegmentation's published Cityscapes mIoU beside this study's, for the runs trained at its protocol.

A run is compared when its name is one of :data:`segmodels.report.design.PUBLISHED` (the models of
``config/cityscapes-mmseg.yaml``) and its effective config keeps every setting of
:data:`segmodels.report.design.MMSEG_PROTOCOL` (full-resolution data and scoring, 512×1024 crops, batch 8, 80k
iterations, ...): published numbers are only put beside numbers obtained the same way. Runs that depart are named
in the note with the settings that differ; a study with no run at the protocol, or on another label set than
Cityscapes', has no such table.
"""

from __future__ import annotations

from typing import Any

from segmodels.models.catalog import display_name
from segmodels.report.design import PUBLISHED, compared_with_earlier, mmseg_differences
from segmodels.report.results import Study
from segmodels.report.tables import _column, _table, _text
from segmodels.study.matrix import run_config

__all__ = ["PUBLISHED_TITLE", "published_table"]

PUBLISHED_TITLE = "mmsegmentation's published results beside this run"


def _departures(study: Study, models: list[str]) -> dict[str, list[str]]:
    """Model → the protocol settings its run departs from (empty at the protocol)."""
    return {m: mmseg_differences(run_config(study.cfg, m)) for m in models}


def published_table(study: Study) -> dict[str, Any] | None:
    """The published (mmsegmentation) mIoU of each matching model beside this run's, or None when no run of the
    study is at mmsegmentation's protocol."""
    if not compared_with_earlier(study.labels.name):  # its numbers are on Cityscapes' classes
        return None
    candidates = [m for m in PUBLISHED if m in study.summary.index]
    departures = _departures(study, candidates)
    models = [m for m in candidates if not departures[m]]
    if not models:
        return None
    pub = [PUBLISHED[m] for m in models]
    ours = [study.value(m, "miou") for m in models]
    closest = [p["v1c"][0] for p in pub]  # the published models' ResNets are ResNetV1c, as the config's resnet*c
    columns = [
        _text([display_name(m) for m in models]),
        _column([p["v1c"][0] for p in pub], 2, None),
        _column([p["v1b"][0] if "v1b" in p else None for p in pub], 2, None),
        _column(ours, 2, None),
        _text([f"{a - b:+.2f}" if a is not None else "–" for a, b in zip(ours, closest, strict=True)]),
    ]
    header = ["Model", "v1c mIoU", "v1b mIoU", "mIoU", "Diff."]
    sources = "; ".join(
        f"{display_name(m)}: {', '.join(c for _, c in p.values())}" for m, p in zip(models, pub, strict=True)
    )
    note = (
        "Published: mmsegmentation's model zoo, quoted as published (single-scale mIoU on Cityscapes val, one run "
        "each, 4 GPUs × 2 images, 80k iterations, 512×1024 crops, whole-image inference at 2048×1024); not run "
        "here. v1c: its ResNetV1c backbone (deep stem), the ResNets of this run; v1b: its ResNetV1b (torchvision's "
        "stem and weights); MobileNetV2 has one. Diff.: this run's mIoU minus the published v1c. "
        f"Source configs: {sources}."
    )
    skipped = [f"{display_name(m)} ({', '.join(d)})" for m, d in departures.items() if d]
    if skipped:
        note += f" Not compared, trained or scored off mmsegmentation's protocol: {'; '.join(skipped)}."
    table = _table(PUBLISHED_TITLE, header, columns, "l" + "r" * 4, note)
    devices = study.devices()
    table["groups"] = [
        ["", 1],
        ["mmsegmentation (published)", 2],
        [f"This run ({', '.join(devices) or 'no device recorded'})", 2],
    ]
    return table
