"""A study's configuration: one plain YAML file, every key a typed dataclass field.

``load_config(path)`` reads the YAML, rejects unknown keys and wrong types with a message that names the file
and the dotted key (``train.lr``), expands and checks the experiment matrix (``models`` with per-model
overrides, ``axes``: :mod:`segmodels.study.matrix`), and returns a :class:`StudyConfig`. Sizes are
``[height, width]`` everywhere, as in torch.

The layers: :mod:`segmodels.study.schema` (the dataclasses and the checks of their values, re-exported here),
the matrix on top of it, and this module, which loads a study file through both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from segmodels.models import catalog
from segmodels.models.catalog import RUN_NAME_SHAPE
from segmodels.study.deploy import deployed_runs
from segmodels.study.matrix import RunSpec, expand_runs
from segmodels.study.robustness import check_robustness
from segmodels.study.schema import (
    MODULE_PATTERN,
    RUN_SECTIONS,
    BenchmarkConfig,
    ConfigError,
    DataConfig,
    DeployConfig,
    EvaluateConfig,
    ModelConfig,
    RobustnessConfig,
    StatsConfig,
    StudyConfig,
    SynthConfig,
    TrackingConfig,
    TrainConfig,
    config_to_dict,
    flatten,
    from_dict,
    json_schema,
    set_dotted,
    validate_config,
)

__all__ = [
    "BenchmarkConfig",
    "ConfigError",
    "DataConfig",
    "DeployConfig",
    "EvaluateConfig",
    "ModelConfig",
    "RobustnessConfig",
    "StatsConfig",
    "StudyConfig",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_to_dict",
    "flatten",
    "from_dict",
    "import_plugins",
    "load_config",
    "register_backbone_aliases",
    "set_dotted",
    "study_from_dict",
    "study_schema",
    "validate_config",
]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study config; ``overrides`` maps dotted keys to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value, where=str(path))
    return study_from_dict(data, where=str(path))


def import_plugins(data: dict[str, Any], *, where: str = "config") -> list[str]:
    """Import the config's ``plugins`` (Python modules that register models or metrics) and register its
    ``backbones`` aliases (:func:`register_backbone_aliases`); return the plugins' names.

    Done before the rest of the config is read, so the names they register validate. A module that cannot be
    imported is a ConfigError naming it (its own import errors included)."""
    import importlib

    plugins = data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{where}: plugins: expected a list of Python module names, got {plugins!r}")
    for module in plugins:
        if not re.fullmatch(MODULE_PATTERN, module):
            raise ConfigError(f"{where}: plugins: {module!r} is not a Python module name (e.g. mylab.models)")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise ConfigError(f"{where}: plugins: importing {module} failed: {exc}") from exc
            raise ConfigError(
                f"{where}: plugins: no module named {module!r} (is its folder on PYTHONPATH? "
                f"e.g. PYTHONPATH=. for ./{module.replace('.', '/')}.py)"
            ) from exc
        except Exception as exc:  # the plugin's own error, reported with its module
            raise ConfigError(f"{where}: plugins: importing {module} failed: {type(exc).__name__}: {exc}") from exc
    register_backbone_aliases(data, where=where)
    return plugins


_ALIAS_KEYS = ("timm", "label", "short")


def register_backbone_aliases(data: dict[str, Any], *, where: str = "config") -> list[str]:
    """Put the config's ``backbones`` (``{alias: {timm: model, label: ..., short: ...}}``) in the model catalog as
    backbones built through timm; return the aliases. Loading the same study again is a no-op; an alias that names
    another backbone of the catalog, or a model timm does not have, is a ConfigError naming the file and the key
    (timm's registry is local: asking it needs no network, but imports timm, so only a study with aliases does)."""
    aliases = data.get("backbones") or {}
    if not isinstance(aliases, dict):
        raise ConfigError(f"{where}: 'backbones' must be a mapping of names to {{timm: model}}, got {aliases!r}")
    for name, spec in aliases.items():
        key = f"backbones.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("timm"), str) or not spec["timm"].strip():
            raise ConfigError(f"{where}: '{key}' must be a mapping with the timm model's name, e.g. "
                              f"{{timm: convnext_tiny}}, got {spec!r}")  # fmt: skip
        unknown = sorted(set(spec) - set(_ALIAS_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key '{key}.{unknown[0]}'; allowed keys here: {', '.join(_ALIAS_KEYS)}")
        for field_name in ("label", "short"):
            if field_name in spec and not isinstance(spec[field_name], str):
                raise ConfigError(f"{where}: '{key}.{field_name}' must be str, got {spec[field_name]!r}")
        label, short = spec.get("label") or spec["timm"], spec.get("short") or str(name)
        if name in catalog.backbones():
            entry = catalog.backbone(name)
            if (entry.timm, entry.label, entry.short) == (spec["timm"], label, short):
                continue  # this study, loaded again
            what = f"an alias of timm's {entry.timm}" if entry.timm else f"a backbone of the catalog ({entry.label})"
            raise ConfigError(f"{where}: '{key}': '{name}' is already {what}; give the alias another name")
        _check_timm_name(spec["timm"], key=f"{key}.timm", where=where)
        try:
            catalog.add_backbone(str(name), label=label, short=short, timm=spec["timm"])
        except ValueError as exc:
            raise ConfigError(f"{where}: '{key}': {exc}") from exc
    return list(aliases)


def _check_timm_name(model: str, *, key: str, where: str) -> None:
    from segmodels.models.backbones.timm_encoders import check_timm_name

    try:
        check_timm_name(model)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{where}: '{key}': {exc}") from None


def _check_output_strides(cfg: StudyConfig, runs: list[RunSpec], where: str) -> None:
    """Every run's ``model.output_stride`` is one its backbone can be built at (MiT: 32 only); a timm alias is
    checked when it is built (its strides are timm's to tell)."""
    for spec in runs:
        entry = catalog.backbone(spec.arch[0])
        stride = spec.overrides.get("model.output_stride", cfg.model.output_stride)
        if entry.timm is None and stride not in entry.output_strides:
            allowed = " or ".join(map(str, entry.output_strides))
            raise ConfigError(
                f"{where}: run '{spec.name}': backbone {entry.label} can be built at output stride {allowed} only, "
                f"got model.output_stride {stride}; set it for the run, e.g. "
                f"- {spec.name}: {{model.output_stride: {entry.output_strides[-1]}}}"
            )


def study_from_dict(data: dict[str, Any], *, where: str = "config") -> StudyConfig:
    """A study config from its parsed YAML, validated, every run of its matrix included (its ``plugins``
    imported first)."""
    import_plugins(data, where=where)
    cfg = from_dict(StudyConfig, data, where=where)
    validate_config(cfg, where)
    specs = expand_runs(cfg, where=where)
    _check_output_strides(cfg, specs, where)
    deployed_runs(cfg, [spec.name for spec in specs], where=where)  # deploy.models names runs of the study
    check_robustness(cfg, [spec.name for spec in specs], where=where)  # corruption names, models, images
    return cfg


def study_schema() -> dict[str, Any]:
    """JSON schema of a study config, derived from the dataclasses (config/schema.yaml is this, written out)."""
    schema = json_schema(StudyConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "A segbench study: generated by `segmodels schema` from segmodels/study/config.py."
    schema["required"] = ["experiment", "models"]
    schema["properties"]["models"]["items"] = {
        "anyOf": [
            {"type": "string", "pattern": RUN_NAME_SHAPE},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "patternProperties": {RUN_NAME_SHAPE: {"type": "object"}},
                "additionalProperties": False,
            },
        ]
    }
    schema["properties"]["models"]["minItems"] = 1
    schema["properties"]["backbones"] |= {
        "propertyNames": {"pattern": "^[a-z0-9]+$"},
        "additionalProperties": {"type": "object", "required": ["timm"], "additionalProperties": False,
                                 "properties": {key: {"type": "string"} for key in _ALIAS_KEYS}},
    }  # fmt: skip
    schema["properties"]["axes"]["propertyNames"] = {"pattern": rf"^({'|'.join(RUN_SECTIONS)})\.[a-z_]+$"}
    schema["properties"]["axes"]["additionalProperties"]["minItems"] = 1
    return schema
