"""The study's robustness section: which runs are scored on corrupted images, with which corruptions and severities,
where the files go, and the numbers the summary and the report take from them.

Each scored run and seed is evaluated by ``segmodels robustness`` on the validation split corrupted by every
configured corruption (:mod:`segmodels.data.corruptions`, the ImageNet-C definitions) at every configured severity,
through the evaluation's own code and at the run's own protocol, into ``RUN/robustness/{corruption}/s{k}/``
(``metrics.json``, ``confusion_per_image.npy``, ... as ``segmodels evaluate`` writes them), then into
``RUN/robustness/robustness.json``: the mIoU per corruption and severity, the mean over severities per corruption,
per group and over all (the mean corruption mIoU, the robustness papers' headline), the clean mIoU on the same
images and the relative robustness (mean corruption mIoU ÷ clean mIoU).

The corrupted images are made once per study (``segmodels corrupt``, one job per corruption) under
``data/corrupted/{dataset}/{corruption}/`` and read by every model, so each model sees the same pixels and the
comparisons are paired. The summary's intervals come from one paired bootstrap over the validation images (and
seeds) of every run's clean and corrupted per-image confusion matrices (:func:`bootstrap_robustness`): each
resample scores every corruption and severity on the same drawn images, so the mean corruption mIoU, its groups and
the relative robustness of every model are resampled together and their differences are paired.

Light: no torch, numpy or pandas at import (the Snakefile reads it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmodels.study import runs
from segmodels.study.schema import ConfigError, StudyConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from segmodels.study.stats import Pairs

__all__ = [
    "CORRUPTED_ROOT",
    "GROUP_ORDER",
    "RESULT",
    "ROBUSTNESS",
    "TABLE",
    "COMPARISONS",
    "RobustBootstrap",
    "bootstrap_robustness",
    "check_robustness",
    "corrupted_marker",
    "group_of",
    "robust_runs",
    "robustness_columns",
    "robustness_comparisons",
    "robustness_folder",
    "robustness_pattern",
    "robustness_row",
    "robustness_scores",
    "robustness_table",
    "study_corruptions",
    "study_groups",
]

ROBUSTNESS = "robustness"  # the run folder's sub-folder of the robustness files
RESULT = "robustness.json"  # RUN/robustness/robustness.json: written last, when every corruption is scored
TABLE = "robustness.csv"  # results/{experiment}/robustness.csv: model × corruption × severity
COMPARISONS = "robustness_comparisons.csv"  # results/{experiment}/: the fixed pairs, Holm-adjusted
# data/corrupted/{dataset}/{corruption}/: the corrupted images, once per study, and the file written last there;
# segmodels.data.corrupted's cache_folder() and MARKER, named here without importing numpy
CORRUPTED_ROOT = "data/corrupted"
CORRUPTED_MARKER = "corrupted.json"
GROUP_ORDER = ("noise", "blur", "weather", "digital")


def study_corruptions(cfg: StudyConfig, *, where: str = "config") -> list[str]:
    """``robustness.corruptions`` with its group names and ``all`` expanded, in the registry's order; an unknown
    name is a ConfigError naming the key, the value and the allowed ones."""
    from segmodels.data.corruptions import resolve_corruptions

    try:
        return resolve_corruptions(cfg.robustness.corruptions, key="robustness.corruptions")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def group_of(corruption: str) -> str:
    """The group (noise, blur, weather, digital, or a registered one's) of a corruption."""
    from segmodels.data.corruptions import CORRUPTIONS

    return CORRUPTIONS[corruption].group


def study_groups(corruptions: Sequence[str]) -> list[str]:
    """The groups of ``corruptions``, in :data:`GROUP_ORDER` (others after, by name)."""
    groups = {group_of(c) for c in corruptions}
    return [g for g in GROUP_ORDER if g in groups] + sorted(groups - set(GROUP_ORDER))


def robust_runs(cfg: StudyConfig, names: Sequence[str], *, where: str = "config") -> list[str]:
    """The runs of ``names`` (the study's, in matrix order) the robustness section scores: none when it is off,
    ``robustness.models`` when given (each must be a run of the study, else a ConfigError naming it), else all."""
    from segmodels.study.deploy import chosen_runs

    return chosen_runs(cfg.robustness.enabled, cfg.robustness.models, names, key="robustness.models", where=where)


def _validation_count(cfg: StudyConfig) -> int | None:
    """How many validation images the study has, where the config or the packed data says: the generated split's
    size, else the packed manifest's count; None before the data is packed."""
    if cfg.data.source == "synthetic":
        return cfg.data.synthetic.val
    manifest = Path("data/packed") / cfg.data.dataset / "manifest.json"
    record = runs.read_json(manifest) if manifest.is_file() else None
    count = ((record or {}).get("splits") or {}).get("val", {}).get("count")
    return int(count) if isinstance(count, int) else None


def check_robustness(cfg: StudyConfig, names: Sequence[str], *, where: str = "config") -> None:
    """The robustness section's names and counts, at config load: corruptions and groups known, ``models`` runs of
    the study, ``images`` at most the validation split (where its size is known; else the job checks it)."""
    study_corruptions(cfg, where=where)
    robust_runs(cfg, names, where=where)
    count = _validation_count(cfg)
    if cfg.robustness.images is not None and count is not None and cfg.robustness.images > count:
        raise ConfigError(f"{where}: 'robustness.images' {cfg.robustness.images} is more than the {count} validation "
                          f"images of dataset '{cfg.data.dataset}'; at most {count}, or null for all")  # fmt: skip


def robustness_folder(run_dir: str | Path, corruption: str | None = None, severity: int | None = None) -> Path:
    """``RUN/robustness/``, ``RUN/robustness/{corruption}/`` or ``RUN/robustness/{corruption}/s{severity}/``."""
    folder = Path(run_dir) / ROBUSTNESS
    if corruption is None:
        return folder
    folder = folder / corruption
    return folder if severity is None else folder / f"s{int(severity)}"


def robustness_pattern(name: str = RESULT, results: str = "results") -> str:
    """The Snakemake path pattern of ``RUN/robustness/{name}``."""
    return f"{results}/{runs.LAYOUT}/{ROBUSTNESS}/{name}"


def corrupted_marker(dataset: str, corruption: str, root: str = CORRUPTED_ROOT) -> str:
    """The file ``segmodels corrupt`` writes last for a corruption's images: ``data/corrupted/{dataset}/{corruption}/
    corrupted.json``."""
    return f"{root}/{dataset}/{corruption}/{CORRUPTED_MARKER}"


# --- the numbers of one run ----------------------------------------------------------------------------------


def robustness_scores(miou: Mapping[str, Mapping[int, float]], clean: float) -> dict[str, Any]:
    """robustness.json's numbers from the mIoU (fractions) of each corruption and severity and the clean mIoU on the
    same images: the mean over severities per corruption, the mean over corruptions per group and over all
    (``miou_c_mean``), and ``robustness_rel`` = ``miou_c_mean`` / clean (NaN where a score is undefined)."""
    per_corruption = {c: statistics.fmean(by.values()) for c, by in miou.items() if by}
    groups: dict[str, list[float]] = {}
    for c, value in per_corruption.items():
        groups.setdefault(group_of(c), []).append(value)
    mean = statistics.fmean(per_corruption.values()) if per_corruption else math.nan
    return {
        "clean": clean,
        "miou_c_mean": mean,
        "groups": {g: statistics.fmean(v) for g, v in groups.items()},
        "corruptions": {c: {"group": group_of(c), "mean": per_corruption[c],
                            "severities": {str(k): v for k, v in sorted(by.items())}}
                        for c, by in miou.items() if by},  # fmt: skip
        "robustness_rel": mean / clean if clean and math.isfinite(clean) and clean > 0 else math.nan,
    }


# --- the study's table and intervals -------------------------------------------------------------------------


def robustness_columns(groups: Sequence[str]) -> list[str]:
    """summary.csv's robustness columns (with ``robustness.enabled``), in percent: the images scored, the clean
    mIoU on them, the mean corruption mIoU, per group, and the relative robustness (a ratio), each with its interval."""
    keys = ["miou_c_clean", "miou_c_mean", *(f"miou_c_{g}" for g in groups), "robustness_rel"]
    return ["robust_images", *(f"{k}{end}" for k in keys for end in ("", "_lo", "_hi"))]


def _seed_folders(cfg: StudyConfig, results: Path, model: str) -> list[Path]:
    return [runs.run_dir(results, cfg.experiment, model, seed) for seed in cfg.seeds]


def _scored_seeds(cfg: StudyConfig, results: Path, model: str) -> list[Path]:
    """The seeds of ``model`` whose robustness job has finished (robustness.json present)."""
    return [f for f in _seed_folders(cfg, results, model) if (robustness_folder(f) / RESULT).is_file()]


@dataclass
class RobustBootstrap:
    """One model's robustness numbers (percent; the relative robustness as a ratio), seed means, with intervals and
    the resampled values behind them (paired across models)."""

    model: str
    seeds: int
    images: int
    estimate: dict[str, float]  # miou_c_clean, miou_c_mean, miou_c_{group}, robustness_rel, miou_c_{corruption}
    lo: dict[str, float]
    hi: dict[str, float]
    samples: dict[str, np.ndarray]  # key → (R,) resampled values, the same draws for every model


def _per_image(folder: Path) -> np.ndarray:
    from segmodels.study.stats import load_per_image

    return load_per_image(folder / runs.CONFUSION_PER_IMAGE)


def bootstrap_robustness(cfg: StudyConfig, results: str | Path, models: Sequence[str], *,
                         family: int = 0) -> dict[str, RobustBootstrap]:  # fmt: skip
    """The paired bootstrap (:func:`segmodels.study.stats.bootstrap_models`, with ``cfg.stats``) of every scored
    model's clean and corrupted mIoU on the robustness images, combined per resample into the mean corruption mIoU,
    the group means and the relative robustness. Models whose every evaluated seed has finished its robustness job
    are included; every one must have scored the same corruptions, severities and images."""
    import numpy as np

    from segmodels.study.stats import bootstrap_models, percentile_interval

    results = Path(results)
    corruptions = study_corruptions(cfg)
    severities = list(cfg.robustness.severities)
    per_image: dict[str, list[dict[str, np.ndarray]]] = {}
    images: dict[str, int] = {}
    for model in models:
        folders = [f for f in _seed_folders(cfg, results, model) if (f / runs.METRICS).is_file()]
        if not folders or len(_scored_seeds(cfg, results, model)) != len(folders):
            continue
        n = int(runs.read_json(robustness_folder(folders[0]) / RESULT)["images"])
        images[model] = n
        per_image[f"{model}@clean"] = [{"confusion": _per_image(f)[:n]} for f in folders]
        for c in corruptions:
            for k in severities:
                per_image[f"{model}@{c}@{k}"] = [{"confusion": _per_image(robustness_folder(f, c, k))}
                                                 for f in folders]  # fmt: skip
    if not per_image:
        return {}
    if len(set(images.values())) > 1:
        raise ValueError(f"the robustness jobs scored different numbers of images ({images}); run them again with "
                         "one robustness.images")  # fmt: skip
    boots = bootstrap_models(per_image, cfg.stats, family=family)
    groups = study_groups(corruptions)
    out = {}
    for model, n in images.items():
        def miou(key: str, m: str = model) -> tuple[float, np.ndarray]:
            b = boots[f"{m}@{key}"]
            return b.interval["miou"].estimate, b.samples["miou"]

        per_c = {c: [miou(f"{c}@{k}") for k in severities] for c in corruptions}
        values: dict[str, tuple[float, np.ndarray]] = {"miou_c_clean": miou("clean")}
        for c, scores in per_c.items():
            values[f"miou_c_{c}"] = (statistics.fmean(e for e, _ in scores), np.mean([s for _, s in scores], axis=0))
        mean_keys = [f"miou_c_{c}" for c in corruptions]
        values["miou_c_mean"] = (statistics.fmean(values[k][0] for k in mean_keys),
                                 np.mean([values[k][1] for k in mean_keys], axis=0))  # fmt: skip
        for g in groups:
            keys = [f"miou_c_{c}" for c in corruptions if group_of(c) == g]
            values[f"miou_c_{g}"] = (statistics.fmean(values[k][0] for k in keys),
                                     np.mean([values[k][1] for k in keys], axis=0))  # fmt: skip
        clean_e, clean_s = values["miou_c_clean"]
        mean_e, mean_s = values["miou_c_mean"]
        with np.errstate(divide="ignore", invalid="ignore"):
            values["robustness_rel"] = (mean_e / clean_e if clean_e > 0 else math.nan, mean_s / clean_s)
        lo, hi = {}, {}
        for key, (_, samples) in values.items():
            lo[key], hi[key] = percentile_interval(samples, cfg.stats.confidence)
        out[model] = RobustBootstrap(model, boots[f"{model}@clean"].seeds, n, {k: e for k, (e, _) in values.items()},
                                     lo, hi, {k: s for k, (_, s) in values.items()})  # fmt: skip
    return out


def robustness_row(boot: RobustBootstrap | None, groups: Sequence[str]) -> dict[str, Any]:
    """A model's robustness columns (:func:`robustness_columns`) from its bootstrap."""
    if boot is None:
        return {}
    row: dict[str, Any] = {"robust_images": boot.images}
    for key in ["miou_c_clean", "miou_c_mean", *(f"miou_c_{g}" for g in groups), "robustness_rel"]:
        if key in boot.estimate:
            row |= {key: boot.estimate[key], f"{key}_lo": boot.lo[key], f"{key}_hi": boot.hi[key]}
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def robustness_table(cfg: StudyConfig, results: str | Path, models: Sequence[str]) -> pd.DataFrame:
    """``robustness.csv``: one row per scored model, corruption and severity: the group, the mIoU (percent, mean
    over the model's scored seeds), the clean mIoU on the same images, and the seeds."""
    import pandas as pd

    rows = []
    for model in models:
        records = [runs.read_json(robustness_folder(f) / RESULT) for f in _scored_seeds(cfg, Path(results), model)]
        records = [r for r in records if r]
        if not records:
            continue
        clean = statistics.fmean(r["clean"] for r in records) * 100
        for c, entry in records[0]["corruptions"].items():
            for k in entry["severities"]:
                scores = [r["corruptions"][c]["severities"][k] for r in records if c in r["corruptions"]]
                rows.append({"model": model, "corruption": c, "group": entry["group"], "severity": int(k),
                             "miou": statistics.fmean(scores) * 100, "miou_clean": clean, "seeds": len(scores),
                             "images": records[0]["images"]})  # fmt: skip
    columns = ["model", "corruption", "group", "severity", "miou", "miou_clean", "seeds", "images"]
    return pd.DataFrame(rows, columns=columns)


def robustness_comparisons(cfg: StudyConfig, boots: Mapping[str, RobustBootstrap], design: Pairs) -> pd.DataFrame:
    """The study's fixed pairs (:func:`segmodels.study.stats.study_pairs` of ``design``) among the scored models,
    compared on the mean corruption mIoU (points) and on the relative robustness (a ratio): the paired bootstrap
    interval and p-value of each difference, Holm-adjusted within each metric's family."""
    import numpy as np
    import pandas as pd

    from segmodels.study.significance import Comparison, bootstrap_p_value, with_holm
    from segmodels.study.stats import COMPARISON_COLUMNS, percentile_interval, study_pairs

    pairs = study_pairs(list(boots), design)
    rows = []
    for metric in ("miou_c_mean", "robustness_rel"):
        found = []
        for group, a, b in pairs:
            ba, bb = boots[a], boots[b]
            differences = ba.samples[metric] - bb.samples[metric]
            differences = differences[np.isfinite(differences)]
            if differences.size == 0:
                continue
            lo, hi = percentile_interval(differences, cfg.stats.confidence)
            found.append(Comparison(a, b, ba.estimate[metric] - bb.estimate[metric], lo, hi, group, ba.seeds, bb.seeds,
                                    bootstrap_p_value(differences), confidence=cfg.stats.confidence,
                                    resamples=len(ba.samples[metric])))  # fmt: skip
        for c in with_holm(found):
            rows.append({"metric": metric, "pair": f"{c.a} vs {c.b}", "group": c.group, "a": c.a, "b": c.b,
                         "diff": c.diff, "lo": c.lo, "hi": c.hi, "significant": c.significant, "seeds_a": c.seeds_a,
                         "seeds_b": c.seeds_b, "resamples": c.resamples, "confidence": c.confidence,
                         "p_value": c.p_value, "p_holm": c.p_holm, "family": c.family})  # fmt: skip
    return pd.DataFrame(rows, columns=["metric", *COMPARISON_COLUMNS])
