"""A study's configuration: one plain YAML file, every key a typed dataclass field.

``load_config(path)`` reads the YAML, rejects unknown keys and wrong types with a
message that names the file and the dotted key (``train.lr``), and returns a
:class:`StudyConfig`. Sizes are ``[height, width]`` everywhere, as in torch.
The experiment matrix (``models`` with per-model overrides, ``axes``) is expanded
and checked by :mod:`segmodels.matrix`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BenchmarkConfig",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "ModelConfig",
    "StatsConfig",
    "StudyConfig",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_to_dict",
    "flatten",
    "from_dict",
    "load_config",
    "set_dotted",
    "study_from_dict",
    "study_schema",
    "validate_config",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclass
class SynthConfig:
    train: int = 48  # generated training images
    val: int = 16  # generated validation images
    size: list[int] = field(default_factory=lambda: [256, 512])  # [height, width] as written to disk
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # name of data/raw/{dataset} and data/packed/{dataset}
    source: str = "synthetic"  # synthetic | cityscapes
    root: str | None = None  # cityscapes: a folder or the folder with the two zips; default $CITYSCAPES_DATASET
    size: list[int] = field(default_factory=lambda: [512, 1024])  # packed [height, width]; the study's 1024×512
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class ModelConfig:
    output_stride: int = 8  # 8, 16 or 32
    pretrained: str | None = "imagenet"  # imagenet | a path to a state dict | null (random init)
    aux: bool = True  # auxiliary FCN head on the aux stage (training only)
    # Running-statistics momentum of every BatchNorm while training; null keeps each constructor's own. One
    # value for all backbones: torchvision's MobileNetV3 uses 0.01, whose running statistics trail the weights
    # for the first few hundred steps (a 150-step demo scored 5.4 mIoU with it, 10.3 with 0.1).
    bn_momentum: float | None = 0.1
    num_classes: int = 19


@dataclass
class TrainConfig:
    iterations: int = 40000  # optimizer steps; the schedule is iteration-based
    batch_size: int = 8
    crop_size: list[int] = field(default_factory=lambda: [512, 1024])  # [height, width]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random rescale before the crop
    lr: float = 0.01  # base learning rate; heads may use a multiple
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not applied to norm weights and biases
    poly_power: float = 0.9
    warmup_iters: int = 0  # linear warm-up from lr * warmup_ratio
    warmup_ratio: float = 0.1
    aux_weight: float = 0.4
    region_weight: float = 0.4  # OCR's soft-object-region loss
    distill_teacher: str | None = None  # run folder or checkpoint of a trained teacher
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    head_lr_mult: float = 1.0  # lr multiple for everything outside the backbone (PSPNet used 10 with ImageNet init)
    amp: bool = True  # mixed precision on a GPU (bf16 where supported)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm under DDP
    deterministic: bool = False
    log_every: int = 20  # iterations between logged metrics
    val_every: int = 0  # iterations between validation passes (0: only at the end)
    ckpt_every: int = 200  # iterations between last.pt writes
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class EvaluateConfig:
    batch_size: int = 4
    flip: bool = False  # test-time horizontal flip
    scales: list[float] = field(default_factory=lambda: [1.0])  # test-time scales
    sliding: bool = False  # sliding-window inference instead of whole-image
    window: list[int] = field(default_factory=lambda: [512, 1024])  # [height, width] of a window
    stride: list[int] = field(default_factory=lambda: [341, 682])
    full_resolution: bool = False  # upsample scores to the raw labels' size (1024×2048) and score against those
    samples: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # validation images drawn for figures
    amp: bool = True
    device: str = "auto"


@dataclass
class BenchmarkConfig:
    size: list[int] = field(default_factory=lambda: [512, 1024])  # [height, width] of the timed input
    batch_size: int = 1
    warmup: int = 20
    repeats: int = 100
    cpu_warmup: int = 3  # on the CPU, warmup and repeats are capped at these (a CPU forward takes seconds)
    cpu_repeats: int = 10
    # Each mode is timed alone: fp32 | amp, optionally +channels_last +compile +cudagraphs (e.g.
    # "amp+channels_last"); "channels_last" alone is fp32 in that layout; "onnx" runs the exported model in
    # onnxruntime. Modes that make no sense on the device are reported as skipped with the reason.
    modes: list[str] = field(default_factory=lambda: ["fp32", "amp"])
    amp_dtype: str = "float16"  # float16 | bfloat16 for the amp modes
    onnx_opset: int = 18  # ONNX opset of the "onnx" mode and of `segmodels export` (18: the exporter's lowest)
    device: str = "auto"


@dataclass
class TrackingConfig:
    experiment: str = "segbench"  # MLflow experiment name
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db
    flush_seconds: float = 30.0  # longest wait before buffered metrics are sent (one log_batch call)
    log_weights: bool = False  # also upload checkpoint.pt as a run artifact


@dataclass
class StatsConfig:
    resamples: int = 1000  # bootstrap resamples of the validation images (segmodels.stats)
    seed: int = 0  # one seed for every model, so all models see the same resampled image sets (paired)
    confidence: float = 0.95  # level of the two-sided percentile intervals


@dataclass
class StudyConfig:
    experiment: str = "study"  # results/{experiment}/
    # {backbone}-{head}[_tag...], or {name: {dotted.key: value}} with overrides of the run-level sections
    models: list[str | dict[str, dict[str, Any]]] = field(default_factory=lambda: ["resnet18-ppm"])
    axes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key → values, crossed with every model entry
    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _is_mapping_type(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp)


def _check(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key, where)
            except ConfigError as exc:
                errors.append((isinstance(value, dict) == _is_mapping_type(arg), str(exc)))
        matching = [message for same_shape, message in errors if same_shape]  # a mapping's error, for a mapping
        raise ConfigError((matching or [message for _, message in errors])[0])
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {
            _check(k, key_tp, f"{key} key", where): _check(v, value_tp, f"{key}.{k}", where) for k, v in value.items()
        }
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list of {_type_name(item)}, got {value!r}")
        return [_check(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where=where, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], *, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; allowed keys here: {', '.join(names)}"
        )
    kwargs = {k: _check(v, hints[k], f"{prefix}{k}", where) for k, v in data.items()}
    return cls(**kwargs)


def validate_config(cfg: StudyConfig, where: str) -> None:
    """Value checks beyond types (the model entries are checked by :func:`segmodels.matrix.expand_runs`)."""
    if cfg.data.source not in ("synthetic", "cityscapes"):
        raise ConfigError(f"{where}: 'data.source' must be synthetic or cityscapes, got {cfg.data.source!r}")
    if cfg.model.bn_momentum is not None and not 0 < cfg.model.bn_momentum <= 1:
        raise ConfigError(f"{where}: 'model.bn_momentum' must lie in (0, 1] or be null, got {cfg.model.bn_momentum}")
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"{where}: 'model.output_stride' must be 8, 16 or 32, got {cfg.model.output_stride}")
    for key, size in (
        ("data.size", cfg.data.size),
        ("data.synthetic.size", cfg.data.synthetic.size),
        ("train.crop_size", cfg.train.crop_size),
        ("benchmark.size", cfg.benchmark.size),
    ):
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"{where}: '{key}' must be [height, width] of positive integers, got {size}")
    if cfg.stats.resamples < 1:
        raise ConfigError(f"{where}: 'stats.resamples' must be a positive integer, got {cfg.stats.resamples}")
    if not 0 < cfg.stats.confidence < 1:
        raise ConfigError(f"{where}: 'stats.confidence' must lie strictly between 0 and 1, got {cfg.stats.confidence}")


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


def set_dotted(data: dict[str, Any], dotted: str, value: Any, *, where: str = "config") -> None:
    """Set ``train.lr`` in nested mappings, creating the missing levels; ``value`` is copied."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: unknown key '{dotted}'")
    node[leaf] = copy.deepcopy(value)


def study_from_dict(data: dict[str, Any], *, where: str = "config") -> StudyConfig:
    """A study config from its parsed YAML, validated, every run of its matrix included."""
    from segmodels.matrix import expand_runs  # the matrix builds on this module

    cfg = from_dict(StudyConfig, data, where=where)
    validate_config(cfg, where)
    expand_runs(cfg, where=where)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` → ``{"train.lr": 0.01}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _json_schema(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    origin = typing.get_origin(tp)
    if origin is dict:
        return {"type": "object", "additionalProperties": _json_schema(typing.get_args(tp)[1])}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_json_schema(arg) for arg in typing.get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": _json_schema(typing.get_args(tp)[0])}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: _json_schema(hints[f.name]) for f in dataclasses.fields(tp)},
        }
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    return {"type": names[tp]}


def study_schema() -> dict[str, Any]:
    """JSON schema of a study config, derived from the dataclasses (config/schema.yaml is this, written out)."""
    from segmodels.matrix import RUN_SECTIONS, name_pattern

    schema = _json_schema(StudyConfig)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "A segbench study: generated by `segmodels schema` from segmodels/config.py."
    schema["required"] = ["experiment", "models"]
    schema["properties"]["models"]["items"] = {
        "anyOf": [
            {"type": "string", "pattern": name_pattern()},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "patternProperties": {name_pattern(): {"type": "object"}},
                "additionalProperties": False,
            },
        ]
    }
    schema["properties"]["models"]["minItems"] = 1
    schema["properties"]["axes"]["propertyNames"] = {"pattern": rf"^({'|'.join(RUN_SECTIONS)})\.[a-z_]+$"}
    schema["properties"]["axes"]["additionalProperties"]["minItems"] = 1
    schema["properties"]["data"]["properties"]["source"]["enum"] = ["synthetic", "cityscapes"]
    schema["properties"]["model"]["properties"]["output_stride"]["enum"] = [8, 16, 32]
    return schema
