"""The study's PDF report: tables, figures and findings, all computed from the results files.

``report_data`` gathers everything the template shows into one JSON-ready dict (cell texts, best values
marked, finding sentences); ``segmodels/report/template/report.typ`` lays it out; ``write_report`` typesets it with
Typst (the PyPI ``typst`` package, its embedded fonts only, so the result needs no system fonts and no
network) and replaces the PDF atomically. A model without results is listed as missing, and a finding
whose inputs are missing says so, so a partial study still gives a report.

The tables, with their intervals, verdicts and costs, are built in :mod:`segmodels.report.tables`; the CPU
deployment table in :mod:`segmodels.report.deployment`.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from segmodels.models.catalog import display_name
from segmodels.report import TEMPLATE
from segmodels.report.deployment import deployment_table
from segmodels.report.design import compared_with_earlier, dataset_label
from segmodels.report.findings import findings
from segmodels.report.published import published_table
from segmodels.report.results import Study, load_study
from segmodels.report.robustness import robustness_section
from segmodels.report.tables import earlier_table, result_tables
from segmodels.report.uncertainty import uncertainty_section
from segmodels.study.config import StudyConfig

__all__ = ["DEFAULT_TEMPLATE", "report_data", "write_report"]

DEFAULT_TEMPLATE = TEMPLATE

# % of the text width; the others use all of it
_FIGURE_WIDTH = {"miou_latency": 85, "confusion": 72, "miou_cost": 85, "differences": 85}
_LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "seaborn", "mlflow", "typst")


def _dataset(cfg: StudyConfig, data_root: Path) -> str:
    """Name, source, packed size and image counts, from the packed dataset's manifest.json when present."""
    path = data_root / cfg.data.dataset / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    h, w = manifest.get("size") or cfg.data.size
    text = f"{cfg.data.dataset} ({manifest.get('source', cfg.data.source)}), packed at {h}×{w} (H×W)"
    if not manifest:
        return text + f"; {path} not found"
    splits = manifest.get("splits", {})
    counts = [f"{entry['count']} {split}" for split, entry in splits.items() if isinstance(entry.get("count"), int)]
    sizes = sorted({size for entry in splits.values() for size in entry.get("source_sizes", {})})
    text += f"; {', '.join(counts)} images" if counts else ""
    return text + (f", from {' / '.join(sizes)} originals" if sizes else "")


def _environment(study: Study) -> list[list[str]]:
    from segmodels.report.results import read_latency

    rows = []
    for model in study.finished():
        latency = next((found for r in study.runs(model) if (found := read_latency(r)) is not None), None)
        if latency and isinstance(latency.get("device"), dict):
            dev = latency["device"]
            keys = ("cuda", "driver", "torch", "torchvision", "python", "threads")
            extra = ", ".join(f"{k} {dev[k]}" for k in keys if dev.get(k) is not None)
            rows.append(["Benchmark device", f"{dev.get('name', 'unknown')} ({extra})"])
            size = latency.get("size")
            if size:
                rows.append(["Benchmark input", f"{size[0]}×{size[1]} (H×W), batch {latency.get('batch_size', 1)}"])
            break
    if len(devices := study.devices()) > 1:
        rows.append(["Caution", f"latencies were measured on different devices ({', '.join(devices)})"])
    versions = []
    for lib in _LIBRARIES:
        try:
            versions.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            continue
    rows.append(["Report built with", ", ".join(versions)])
    return rows


def _mlflow(study: Study) -> dict[str, Any]:
    from segmodels.tracking import tracking_uri

    uri = tracking_uri(study.cfg.tracking.uri)
    id_file = study.root / "mlflow_experiment_id"
    experiment = id_file.read_text().strip() if id_file.is_file() else None
    web = uri.startswith(("http://", "https://"))
    rows = []
    for model in study.summary.index:
        ids = str(study.summary.at[model, "mlflow_run_ids"] or "").split() if "mlflow_run_ids" in study.summary else []
        ids = [i for i in ids if i.lower() != "nan"]
        runs = [
            {"id": i, "url": f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{i}" if web and experiment else ""}
            for i in ids
        ]
        rows.append({"model": display_name(model), "runs": runs})
    hint = "" if web else f"mlflow ui --backend-store-uri {uri}"
    return {
        "uri": uri,
        "experiment": f"{study.cfg.tracking.experiment} (id {experiment or 'unknown'})",
        "rows": rows,
        "hint": hint,
    }


def report_data(
    cfg: StudyConfig,
    results: str | Path,
    figures: str | Path,
    *,
    data_root: str | Path = "data/packed",
    config_path: str | Path | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain JSON-ready data."""
    from segmodels.tracking import git_commit

    study = load_study(cfg, results)
    summary = study.summary
    missing = [display_name(m) for m in summary.index if summary.at[m, "status"] == "missing"]
    partial = [
        f"{display_name(m)} ({int(study.value(m, 'seeds') or 0)} of {len(cfg.seeds)} seeds)"
        for m in summary.index
        if summary.at[m, "status"] == "partial"
    ]
    labels = study.labels
    dataset = dataset_label(labels.name, labels.num_classes, cfg.data.dataset)
    compared = compared_with_earlier(labels.name)
    index_path = Path(figures) / "figures.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    return {
        "title": f"segbench study '{cfg.experiment}'",
        "dataset": dataset,
        "subtitle": f"Semantic segmentation on {dataset}: backbones × context modules",
        "meta": [
            ["Date", datetime.date.today().isoformat()],
            ["Git commit", git_commit()],  # the checkout of this package: the code behind the report
            ["Config", str(config_path) if config_path else "–"],
            ["Dataset", _dataset(cfg, Path(data_root))],
            [
                "Models",
                f"{len(study.finished())} of {len(summary)} with results; seeds {', '.join(map(str, cfg.seeds))}",
            ],
            *_environment(study),
        ],
        "missing": missing,
        "partial": partial,
        "notes": study.notes,
        "findings": findings(study),
        "tables": result_tables(study),
        "uncertainty": uncertainty_section(study),
        "deploy": deployment_table(study),  # null unless summary.csv has deployment columns (deploy.enabled)
        "robustness": robustness_section(study, index),  # null unless summary.csv has robustness columns
        # both null unless the study's label set is the earlier study's (Cityscapes); published also null unless
        # runs are at mmsegmentation's protocol
        "earlier": earlier_table(study) if compared else None,
        "published": published_table(study) if compared else None,
        "figures": [
            {"file": f"figures/{f['png']}", "caption": f["caption"], "width": _FIGURE_WIDTH.get(f["name"], 100)}
            for f in (index or {}).get("figures", [])
        ],
        "figures_skipped": [f"{s['name']}: {s['reason']}" for s in (index or {}).get("skipped", [])]
        + ([] if index else [f"{index_path} not found: run 'segmodels figures' first"]),
        "mlflow": _mlflow(study),
    }


def write_report(
    cfg: StudyConfig,
    results: str | Path,
    figures: str | Path,
    out: str | Path,
    *,
    template: str | Path = DEFAULT_TEMPLATE,
    data_root: str | Path = "data/packed",
    config_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Typeset the report into ``out`` (compiled in a scratch folder, then renamed into place)."""
    import typst

    from segmodels.atomic import write_bytes_atomic
    from segmodels.folders import check_file_output

    template = Path(template)
    if not template.is_file():
        raise FileNotFoundError(f"report template not found: {template}")
    check_file_output(out)  # before the typesetting, not at the rename after it
    data = report_data(cfg, results, figures, data_root=data_root, config_path=config_path)
    with tempfile.TemporaryDirectory(prefix="segbench-report-") as tmp:
        build = Path(tmp)
        shutil.copy(template, build / "report.typ")
        (build / "figures").mkdir()
        for entry in data["figures"]:
            shutil.copy(Path(figures) / Path(entry["file"]).name, build / entry["file"])
        (build / "data.json").write_text(json.dumps(data, indent=1, allow_nan=False))
        try:
            pdf = typst.compile(
                build / "report.typ", root=build, ignore_system_fonts=True, sys_inputs={"data": "data.json"}
            )
        except typst.TypstError as exc:
            raise ValueError(
                f"{template}: Typst could not typeset the report: {exc.message}\n{exc.diagnostic}"
            ) from exc
    write_bytes_atomic(out, pdf)
    log(f"wrote {out} ({len(data['figures'])} figures, {len(data['missing'])} models missing)")
    return Path(out)
