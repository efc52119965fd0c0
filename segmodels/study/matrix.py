"""The experiment matrix: a study's model entries and axes, expanded into named runs.

An entry of ``models`` is one of

- ``resnet18-ppm``: a {backbone}-{head} pair trained with the study's shared sections;
- ``{resnet101-ppm: {train.iterations: 60}}``: a run with its own values of run-level keys (``model.*``,
  ``train.*``, ``evaluate.*``, ``benchmark.*``), dotted or as nested mappings;
- a name with ``_tag`` parts, ``resnet18-ppm_os16``: a variant with its own run folder; the architecture is
  the part before the first ``_``, tags are letters, digits and dots (safe in paths, shells, Snakemake
  wildcards and MLflow run names).

``axes`` maps dotted run-level keys to lists of values; their cross product is applied to every entry and
names the runs ``{entry}_{tag}``, one tag per axis in the order given (``resnet18-ppm_os16_crop256x512``).
Precedence: the study's sections, then the axis values, then the entry's own overrides. An entry may not
set a key that an axis sets (a ConfigError at load naming the file, the entry and the key), so a run's tags
always name the values it runs with: ``resnet18-ppm_os8`` never runs at output stride 16. Every run's
effective config is built through :func:`segmodels.study.schema.from_dict`, so overrides are type-checked like
the file itself. The grammar of run names is the catalog's (:mod:`segmodels.models.catalog`).

A run distils from a teacher when its ``train.distill_teacher`` is set: a checkpoint or run folder path, checked
when training starts, or a value of a run name's shape (``mobilenetv2-ppm_kd: {train.distill_teacher:
resnet101-ppm}``), the run of the same study and seed that is trained first (:attr:`RunSpec.teacher`). A teacher
named so that is not a run of the study, the run itself, a teacher in a cycle of teachers or one with other
``model.num_classes`` is a ConfigError at load naming the file, the run and the teacher.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from segmodels.models import catalog
from segmodels.models.catalog import (  # noqa: F401  (the run-name grammar, importable from here too)
    RUN_NAME_SHAPE,
    TAG,
    arch_of,
    name_pattern,
    pair_of,
    reference_variant,
    variant_of,
    with_variant,
)
from segmodels.study.schema import (
    RUN_SECTIONS,
    ConfigError,
    StudyConfig,
    config_to_dict,
    flatten,
    from_dict,
    set_dotted,
    validate_config,
)

__all__ = [
    "RUN_SECTIONS",
    "RunSpec",
    "axis_tag",
    "expand_runs",
    "run_config",
    "run_names",
    "run_sections",
    "teacher_name",
    "with_overrides",
]

_SHORT_KEYS = {"output_stride": "os", "crop_size": "crop", "iterations": "it", "batch_size": "bs", "lr": "lr",
               "scale_range": "scale"}  # fmt: skip


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix: its name, architecture and the dotted keys it sets over the study's sections."""

    name: str  # {backbone}-{head}[_tag...]: run folder, Snakemake wildcard, MLflow run name
    arch: tuple[str, str]  # (backbone, head)
    overrides: dict[str, Any] = field(default_factory=dict)  # axis values, then the entry's own overrides
    teacher: str | None = None  # the run of the study it distils from (train.distill_teacher by name), else None

    @property
    def variant(self) -> str:
        return variant_of(self.name)


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_value_text(v) for v in value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return str(value)


def axis_tag(key: str, value: Any) -> str:
    """The name tag of one axis value: ``("train.crop_size", [256, 512])`` → ``"crop256x512"``."""
    leaf = key.rsplit(".", 1)[-1]
    return _SHORT_KEYS.get(leaf, leaf.replace("_", "")) + _value_text(value)


def _run_level(keys: Sequence[str], what: str) -> None:
    for key in keys:
        if "." not in key or key.split(".")[0] not in RUN_SECTIONS:
            raise ConfigError(
                f"{what}: '{key}' is not a run-level key; a model entry or an axis may set "
                f"{', '.join(s + '.*' for s in RUN_SECTIONS)}"
            )


def _entry(entry: Any, index: int, where: str) -> tuple[str, dict[str, Any]]:
    """(name, dotted overrides) of one item of ``models``."""
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ConfigError(f"{where}: 'models[{index}]' must be a name or a one-key mapping "
                          f"{{name: {{key: value}}}}, got {entry!r}")  # fmt: skip
    ((name, overrides),) = entry.items()
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: model entry '{name}': overrides must be a mapping of dotted keys to values, "
                          f"got {overrides!r}")  # fmt: skip
    return str(name), flatten(dict(overrides))


def with_overrides(cfg: StudyConfig, overrides: Mapping[str, Any], *, where: str = "config") -> StudyConfig:
    """A copy of ``cfg`` with dotted keys set, type-checked and validated as a config file is."""
    data = config_to_dict(cfg)
    for key, value in overrides.items():
        set_dotted(data, key, value, where=where)
    out = from_dict(StudyConfig, data, where=where)
    validate_config(out, where)
    return out


def _effective(cfg: StudyConfig, spec: RunSpec, where: str) -> StudyConfig:
    """The config of one run: a study of that run alone (``models: [name]``, no axes)."""
    out = with_overrides(cfg, {"models": [spec.name], "axes": {}, **spec.overrides}, where=where)
    if catalog.head(spec.arch[1]).cascade and not out.model.aux:
        raise ConfigError(f"{where}: 'model.aux' must be true for head '{spec.arch[1]}': its soft object regions "
                          "are the auxiliary FCN head's logits (OCR's ResNet cascade)")  # fmt: skip
    return out


def teacher_name(value: str | None) -> str | None:
    """A ``train.distill_teacher`` that names a run ({backbone}-{head}[_tag...]), else None (a path, or none)."""
    return value if value is not None and re.fullmatch(RUN_NAME_SHAPE, value) else None


def _check_teachers(runs: list[RunSpec], configs: Mapping[str, StudyConfig], where: str) -> list[RunSpec]:
    """``runs`` with the teacher each names by run name: a run of the study, not the run itself, in no cycle of
    teachers, predicting the same classes."""
    teachers: dict[str, str] = {}
    for run in runs:
        teacher = teacher_name(configs[run.name].train.distill_teacher)
        if teacher is None:
            continue
        what = f"{where}: run '{run.name}': 'train.distill_teacher' {teacher!r}"
        if teacher == run.name:
            raise ConfigError(f"{what} is the run itself; a teacher is another run of the study, trained first")
        if teacher not in configs:
            raise ConfigError(f"{what} is not a run of the study; its runs: {', '.join(configs)} (a teacher outside "
                              f"the study: give its checkpoint's path, e.g. ./{teacher}/checkpoint.pt)")  # fmt: skip
        ours, theirs = configs[run.name].model.num_classes, configs[teacher].model.num_classes
        if ours is not None and theirs is not None and ours != theirs:  # null: the data's, the same for both
            raise ConfigError(f"{what} predicts {theirs} classes ('model.num_classes'), the run {ours}; a teacher "
                              "must predict the student's classes")  # fmt: skip
        teachers[run.name] = teacher
    for student in teachers:
        chain = [student]
        while (teacher := teachers.get(chain[-1])) is not None:
            if teacher in chain:
                cycle = " -> ".join([*chain[chain.index(teacher) :], teacher])
                raise ConfigError(f"{where}: run '{teacher}': 'train.distill_teacher' forms a cycle of teachers "
                                  f"({cycle}); each would have to be trained before the other")  # fmt: skip
            chain.append(teacher)
    return [replace(run, teacher=teachers.get(run.name)) for run in runs]


def expand_runs(cfg: StudyConfig, *, where: str = "config", teachers: bool = True) -> list[RunSpec]:
    """Every run of the study, entries in order and the axes' cross product within each entry.

    Raises ConfigError naming ``where``, the entry and the key for a bad name, a key outside the run-level
    sections, an unknown key, a value of the wrong type, a key set by both the entry and an axis, or two runs
    of the same name; and, naming the run and the teacher, for a bad teacher (see the module's text). With
    ``teachers`` false the teachers named by run name are neither resolved nor checked: a run's own effective
    config is a study of that run alone, its teacher another run of the study it came from.
    """
    if not cfg.models:
        raise ConfigError(f"{where}: 'models' is empty; list at least one {{backbone}}-{{head}}")
    axes = dict(cfg.axes or {})
    _run_level(list(axes), f"{where}: axes")
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"{where}: axis '{key}' lists no values")
        for value in values:
            if not re.fullmatch(TAG, tag := axis_tag(key, value)):
                raise ConfigError(f"{where}: axis '{key}': value {value!r} gives the name tag '{tag}'; "
                                  "tags may hold letters, digits and dots only")  # fmt: skip
    combos = list(itertools.product(*[[(key, v) for v in values] for key, values in axes.items()]))
    runs: list[RunSpec] = []
    configs: dict[str, StudyConfig] = {}
    seen: dict[str, str] = {}
    for index, item in enumerate(cfg.models):
        entry, own = _entry(item, index, where)
        try:
            arch = arch_of(entry)
        except ValueError:
            raise ConfigError(
                f"{where}: model '{entry}' is not {{backbone}}-{{head}}[_tag...]; backbones: "
                f"{', '.join(catalog.backbones())}; heads: {', '.join(catalog.heads())}; tags: letters, digits and dots "
                "(a backbone or head of your own: name the module that registers it under plugins:)"
            ) from None
        _run_level(list(own), f"{where}: model entry '{entry}'")
        for key in own:
            for axis in axes:
                if key == axis or key.startswith(axis + ".") or axis.startswith(key + "."):
                    raise ConfigError(
                        f"{where}: model entry '{entry}' sets '{key}', which axis '{axis}' also sets: its runs would "
                        f"be named by the axis value but run with the entry's; drop '{key}' from the entry or the axis"
                    )
        for combo in combos:
            name = "_".join([entry, *(axis_tag(k, v) for k, v in combo)])
            if name in seen:
                raise ConfigError(f"{where}: run '{name}' appears twice (from model entries '{seen[name]}' and "
                                  f"'{entry}'); run names must be unique")  # fmt: skip
            seen[name] = entry
            spec = RunSpec(name, arch, {**dict(combo), **own})
            run_where = f"{where}: model entry '{entry}'" + (f", run '{name}'" if name != entry else "")
            configs[name] = _effective(cfg, spec, run_where)
            runs.append(spec)
    return _check_teachers(runs, configs, where) if teachers else runs


def run_names(cfg: StudyConfig) -> list[str]:
    """The names of every run of the study, in matrix order."""
    return [run.name for run in expand_runs(cfg)]


def run_config(cfg: StudyConfig, name: str, *, where: str = "config") -> StudyConfig:
    """The effective config of run ``name``: the study's sections with its axis values and overrides set.

    A plain {backbone}-{head} outside the matrix gets the shared sections; a tagged name outside it raises
    ValueError listing the study's runs. Applied to a run's own effective config, it changes nothing.
    """
    runs = {run.name: run for run in expand_runs(cfg, where=where, teachers=False)}
    if name in runs:
        spec = runs[name]
    elif not variant_of(name):
        spec = RunSpec(name, arch_of(name))
    else:
        arch_of(name)  # a malformed name: say so first
        raise ValueError(f"run '{name}' is not in the study ({where}); its runs: {', '.join(runs)}")
    return _effective(cfg, spec, where)


def run_sections(data: Mapping[str, Any], run: RunSpec, *sections: str) -> dict[str, Any]:
    """The named sections of a parsed study file with ``run``'s overrides set, keys the file leaves out left out
    (a plain run's sections are the file's own): what Snakemake compares to decide that a run's job is stale."""
    out = {name: copy.deepcopy(data.get(name)) for name in sections}
    for key, value in run.overrides.items():
        section = key.split(".")[0]
        if section in out:
            if out[section] is None:
                out[section] = {}
            set_dotted(out, key, value, where="run_sections")
    return out
