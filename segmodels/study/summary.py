"""One row per run of the matrix: accuracy (mean ± std over seeds, with bootstrap intervals), latency, size,
training cost, and where each number came from. A standard deviation over one seed is undefined and left
blank, never written as 0. ``model`` is the run name, ``backbone`` and ``head`` its
architecture, ``variant`` its ``_tag`` part (empty for a plain {backbone}-{head}). ``miou_protocol`` says how the
mIoU was scored (resolution, precision, inference, TTA); with full-resolution scoring ``miou_packed`` is the same
predictions scored at the packed size, the earlier study's protocol. The latency is of the mode in the mIoU's
precision (``latency_mode``), and ``fps`` is images per second (batch size / latency).

Every metric of :data:`segmodels.metrics.METRICS` (``miou``, ``macc``, ``allacc``, ...) gets ``{key}`` and
``{key}_std`` (percent) and ``{key}_lo``/``{key}_hi``, in the metrics' order. The intervals are the paired
percentile bootstrap of :mod:`segmodels.study.stats` over the training seeds and validation images (images only
for one seed), with the config's ``stats`` section, from each run's ``confusion_per_image.npy``; ``miou_boot_std`` is the
image-sampling standard deviation of the mIoU, to set beside the seed-to-seed ``miou_std``, and ``boot_resamples`` the
number of resamples (``stats.resamples``; with ``auto``, sized for the report's family of comparisons when the
design is given). Cost columns are means over the model's seeds of one run's
``cost.json`` (training) and metrics.json's ``cost`` (evaluation): ``train_hours`` wall-clock,
``train_gpu_hours`` (empty on the CPU), ``train_cpu_hours`` process CPU time, ``train_images`` images the
final weights were trained on, ``energy_wh`` GPU energy where NVML measured it, ``eval_hours``.

With ``deploy.enabled`` the deployment columns of :mod:`segmodels.study.deploy` come next: per deployed run the
CPU latency and mIoU of each path, and each path's paired difference from fp32 with its interval. With
``robustness.enabled`` the robustness columns of :mod:`segmodels.study.robustness` come last (the clean and the mean
corruption mIoU on the robustness images, per group, and the relative robustness, each with its interval), and
``robustness.csv`` (every model, corruption and severity) and ``robustness_comparisons.csv`` (the fixed pairs,
Holm-adjusted) are written beside the summary.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmodels.metrics import metric_keys
from segmodels.study import robustness as robust
from segmodels.study import runs
from segmodels.study.config import StudyConfig
from segmodels.study.deploy import deploy_columns, deploy_row, deployed_runs, per_image_files
from segmodels.study.matrix import expand_runs, run_names
from segmodels.study.runs import read_json

if TYPE_CHECKING:
    from segmodels.study.stats import Pairs

__all__ = ["collect_run", "publish", "read_json", "run_dir", "summarize", "summary_columns"]

# summary.csv's columns around the metrics' ({key}, {key}_std after _FIRST; {key}_lo, {key}_hi after _MIDDLE)
_FIRST = ("model", "backbone", "head", "variant", "seeds", "status")
_MIDDLE = ("miou_protocol", "miou_packed", "latency_ms", "latency_p90_ms", "fps", "latency_mode", "miou_per_speed",
           "params_m", "gflops", "device", "mlflow_run_ids")  # fmt: skip
_LAST = ("miou_boot_std", "boot_resamples", "train_hours", "train_gpu_hours", "train_cpu_hours", "train_device",
         "train_images", "energy_wh", "eval_hours")  # fmt: skip
# cost.json / metrics.json "cost" key → summary column (means over seeds)
_COST_KEYS = {
    "train": {"wall_hours": "train_hours", "gpu_hours": "train_gpu_hours", "cpu_hours": "train_cpu_hours",
              "images": "train_images", "energy_wh": "energy_wh"},
    "eval": {"wall_hours": "eval_hours"},
}  # fmt: skip


def summary_columns(deploy: bool = False, robustness: list[str] | None = None) -> list[str]:
    """summary.csv's columns, in order, for the metrics registered now; with ``deploy`` (the study's
    ``deploy.enabled``) the deployment columns (:func:`segmodels.study.deploy.deploy_columns`), with ``robustness``
    (the corruption groups scored, with ``robustness.enabled``) the robustness columns last
    (:func:`segmodels.study.robustness.robustness_columns`)."""
    keys = metric_keys()
    means = [f"{k}{end}" for k in keys for end in ("", "_std")]
    columns = [*_FIRST, *means, *_MIDDLE, *(f"{k}_{end}" for k in keys for end in ("lo", "hi")), *_LAST]
    return columns + (deploy_columns() if deploy else []) + (robust.robustness_columns(robustness) if robustness else [])


def run_dir(results: Path, cfg: StudyConfig, model: str, seed: int) -> Path:
    """The run folder of ``model`` and ``seed`` of the study ``cfg`` (:func:`segmodels.study.runs.run_dir`)."""
    return runs.run_dir(results, cfg.experiment, model, seed)


def _primary_latency(latency: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The study's latency column: the mode the benchmark chose to match the mIoU's precision (``primary_mode``)."""
    name = latency.get("primary_mode") or runs.primary_mode(latency)
    return (name, latency["modes"][name]) if name else None


def collect_run(path: Path) -> dict[str, Any]:
    """The numbers of one trained model and seed; missing files give missing keys."""
    row: dict[str, Any] = {}
    folder = runs.RunFolder(path)
    metrics = folder.read_metrics()
    if metrics and metrics.get("miou") is not None:  # None: nothing was labelled, no score
        row.update({key: metrics[key] for key in metric_keys() if _number(metrics.get(key))})  # undefined: blank
        row["miou_protocol"] = (metrics.get("protocol") or {}).get("label")
        if (metrics.get("packed") or {}).get("miou") is not None:  # the same predictions scored at the packed size
            row["miou_packed"] = metrics["packed"]["miou"]
    latency = folder.read_latency()
    if latency:
        primary = _primary_latency(latency)
        if primary:
            row.update(latency_mode=primary[0], latency_ms=primary[1]["median_ms"], fps=primary[1].get("fps"))
            row["latency_p90_ms"] = primary[1].get("p90_ms")
        row.update(params_m=latency.get("params_m"), gflops=latency.get("gflops"))
        row["device"] = latency.get("device", {}).get("name")
    if folder.run_id_file.is_file():
        row["run_id"] = folder.run_id_file.read_text().strip()
    for job, cost in (("train", read_json(folder.cost)), ("eval", (metrics or {}).get("cost"))):
        if isinstance(cost, dict):
            row.update({col: cost[key] for key, col in _COST_KEYS[job].items() if _number(cost.get(key))})
            if job == "train" and cost.get("device"):
                row["train_device"] = str(cost["device"])
    return row


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; one value has no spread to measure, so its std is NaN (blank)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(cfg: StudyConfig, results: Path, out: Path | None = None, *, design: Pairs | None = None):
    """Build the summary table for every run of ``cfg``; write it atomically to ``out`` when given. ``design``: the
    comparisons the report tests (:func:`segmodels.report.design.fixed_pairs`), so that ``stats.resamples: auto``
    gives the intervals the resample count of ``segmodels compare``."""
    import pandas as pd

    from segmodels.atomic import write_text_atomic
    from segmodels.study.stats import bootstrap_study, study_family

    boots, notes = bootstrap_study(cfg, Path(results), design=design)
    for note in notes:
        warnings.warn(f"summary: {note}", RuntimeWarning, stacklevel=2)
    specs = expand_runs(cfg)
    deployed = deployed_runs(cfg, [spec.name for spec in specs])
    deploy_boots = _deploy_bootstrap(cfg, Path(results), deployed)
    scored = robust.robust_runs(cfg, [spec.name for spec in specs])
    groups = robust.study_groups(robust.study_corruptions(cfg)) if cfg.robustness.enabled else None
    robust_boots = robust.bootstrap_robustness(cfg, Path(results), scored, family=study_family(scored, design))
    rows = []
    for spec in specs:
        model = spec.name
        runs = [collect_run(run_dir(results, cfg, model, seed)) for seed in cfg.seeds]
        done = [r for r in runs if "miou" in r]
        row: dict[str, Any] = {"model": model, "backbone": spec.arch[0], "head": spec.arch[1],
                               "variant": spec.variant, "seeds": len(done)}  # fmt: skip
        row["status"] = "missing" if not done else ("complete" if len(done) == len(runs) else "partial")
        for key in metric_keys():
            row[key], row[f"{key}_std"] = _mean_std([r[key] * 100 for r in done if key in r])
        packed = [r["miou_packed"] * 100 for r in done if "miou_packed" in r]
        row["miou_packed"] = statistics.fmean(packed) if packed else None
        row["miou_protocol"] = next((r["miou_protocol"] for r in done if r.get("miou_protocol")), None)
        timed = [r for r in runs if "latency_ms" in r]
        if timed:
            first = timed[0]
            row["latency_ms"] = statistics.median(r["latency_ms"] for r in timed)
            p90 = [r["latency_p90_ms"] for r in timed if r.get("latency_p90_ms") is not None]
            row["latency_p90_ms"] = statistics.median(p90) if p90 else None
            fps = [r["fps"] for r in timed if r.get("fps") is not None]  # images/s: the batch over the latency
            row["fps"] = statistics.median(fps) if fps else None
            row.update({k: first.get(k) for k in ("latency_mode", "params_m", "gflops", "device")})
            # The earlier study's column: mIoU (%) / latency (ms) × 10, computed, never copied.
            row["miou_per_speed"] = row["miou"] / row["latency_ms"] * 10
        row["mlflow_run_ids"] = " ".join(r["run_id"] for r in runs if "run_id" in r)
        if model in boots:
            for key, interval in boots[model].interval.items():
                row[f"{key}_lo"], row[f"{key}_hi"] = interval.lo, interval.hi
            row["miou_boot_std"] = boots[model].boot_std["miou"]
            row["boot_resamples"] = boots[model].resamples
        for col in [c for cols in _COST_KEYS.values() for c in cols.values()]:
            values = [r[col] for r in runs if col in r]
            row[col] = statistics.fmean(values) if values else None
        row["train_device"] = next((r["train_device"] for r in runs if "train_device" in r), None)
        if model in deployed:
            row |= deploy_row(cfg, Path(results), model, deploy_boots)
        if groups:
            row |= robust.robustness_row(robust_boots.get(model), groups)
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=summary_columns(deploy=cfg.deploy.enabled, robustness=groups))
    if out is not None:
        if groups:  # beside the summary, before it: the summary's presence means its companions are new
            folder = Path(out).parent
            write_text_atomic(folder / robust.TABLE,
                              robust.robustness_table(cfg, results, scored).to_csv(index=False, float_format="%.4f"))
            comparisons = robust.robustness_comparisons(cfg, robust_boots, design or [])
            write_text_atomic(folder / robust.COMPARISONS, comparisons.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out, table.to_csv(index=False, float_format="%.4f"))
    return table


def _deploy_bootstrap(cfg: StudyConfig, results: Path, deployed: list[str]) -> dict[str, Any]:
    """One paired bootstrap of every deployed run's scored paths (``{model}@{path}``), with ``cfg.stats``."""
    from segmodels.study.stats import bootstrap_models, load_statistics

    files = {key: paths for model in deployed for key, paths in per_image_files(cfg, results, model).items()}
    return bootstrap_models({key: [load_statistics(p) for p in paths] for key, paths in files.items()}, cfg.stats)


def publish(cfg: StudyConfig, results: Path, figures: Path, report: Path, out: Path) -> dict[str, Any]:
    """Log the study's summary, figures and report to one MLflow run beside the model runs.

    The run lives in the study's experiment, so the MLflow UI shows it next to the models it
    summarises; its id is kept in ``results/{experiment}/summary/`` and reused on a re-run. With
    ``tracking.register`` the best model's registered version gets the alias ``champion``
    (:func:`segmodels.tracking.set_champion`), named in the record's ``champion``.
    """
    from segmodels.atomic import write_text_atomic
    from segmodels.tracking import RunLogger, set_champion, tracking_uri

    files = [Path(results) / cfg.experiment / "summary.csv", Path(report)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"nothing to publish yet: {', '.join(missing)} missing")
    figure_files = sorted(p for p in Path(figures).glob("*") if p.suffix in (".png", ".pdf", ".json"))
    uri = tracking_uri(cfg.tracking.uri)
    logger = RunLogger(
        out.parent,
        experiment=cfg.tracking.experiment,
        uri=uri,
        run_name=f"{cfg.experiment}-summary",
        tags={"segbench.kind": "summary", "segbench.study": cfg.experiment},
    ).start()
    table = summarize(cfg, results)
    done = table[table["status"] != "missing"]
    logger.log_params({"study": cfg.experiment, "models": ",".join(run_names(cfg))})
    champion = None
    if len(done):
        best = done.loc[done["miou"].idxmax()]
        logger.log_metrics({"best_miou": float(best["miou"]), "models_complete": float(len(done))}, step=0)
        if cfg.tracking.register:  # the registered version of the best model's best seed
            champion = set_champion(cfg, results, str(best["model"]), uri=uri)
    for path in files:
        logger.log_artifact(path)
    for path in figure_files:
        logger.log_artifact(path, artifact_path="figures")
    logger.end()
    record = {"run_id": logger.run_id, "uri": uri, "offline": logger.offline, "champion": champion}
    record["artifacts"] = [str(p) for p in files + figure_files]
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    return record
