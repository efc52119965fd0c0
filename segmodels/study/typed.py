"""Typed dataclasses read from YAML: field limits, the checks that name the file and the dotted key at fault,
and the JSON schema that states the same limits.

A field made with :func:`limited` carries JSON-schema keywords (minimum, exclusiveMinimum, maximum,
exclusiveMaximum, enum, pattern, minItems, maxItems, items); :func:`from_dict` checks them and :func:`json_schema`
writes them, so a bad value fails when a file is loaded, not when a job runs. The study's sections are in
:mod:`segmodels.study.schema`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import field
from typing import Any

__all__ = [
    "PATTERN_TEXT",
    "ConfigError",
    "check_value",
    "config_to_dict",
    "flatten",
    "from_dict",
    "json_schema",
    "limited",
    "set_dotted",
]

PATTERN_TEXT: dict[str, str] = {}  # a pattern → what a value must be, in words (the error's text)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def limited(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **limits: Any) -> Any:
    """A field held to ``limits``, JSON-schema keywords (minimum, exclusiveMinimum, maximum, exclusiveMaximum,
    enum, pattern, minItems, maxItems, items): :func:`from_dict` checks them and the schema states them, so a
    bad value fails when the study is loaded or planned, not when a job runs."""
    return field(default=default, default_factory=factory, metadata={"limits": limits})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _is_mapping_type(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp)


def check_value(value: Any, tp: Any, key: str, where: str) -> Any:
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
                return check_value(value, arg, key, where)
            except ConfigError as exc:
                errors.append((isinstance(value, dict) == _is_mapping_type(arg), str(exc)))
        matching = [message for same_shape, message in errors if same_shape]  # a mapping's error, for a mapping
        raise ConfigError((matching or [message for _, message in errors])[0])
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return {
            check_value(k, key_tp, f"{key} key", where): check_value(v, value_tp, f"{key}.{k}", where) for k, v in value.items()
        }
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list of {_type_name(item)}, got {value!r}")
        return [check_value(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
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
    limits = {f.name: f.metadata.get("limits", {}) for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = check_value(v, hints[k], f"{prefix}{k}", where)
        _check_limits(kwargs[k], limits[k], f"{prefix}{k}", where)
    return cls(**kwargs)


def _check_limits(value: Any, limits: dict[str, Any], key: str, where: str) -> None:
    """Raise ConfigError naming ``key`` when ``value`` breaks one of a field's ``limits`` (see :func:`_limited`)."""
    if value is None or not limits:
        return
    broken = None
    if "enum" in limits and value not in limits["enum"]:
        broken = "be one of " + ", ".join(map(str, limits["enum"]))
    elif isinstance(value, str) and "pattern" in limits and not re.search(limits["pattern"], value):
        broken = PATTERN_TEXT.get(limits["pattern"], f"match {limits['pattern']}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        for word, ok in (("minimum", value.__ge__), ("exclusiveMinimum", value.__gt__),
                         ("maximum", value.__le__), ("exclusiveMaximum", value.__lt__)):  # fmt: skip
            if word in limits and not ok(limits[word]):
                relation = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most",
                            "exclusiveMaximum": "less than"}[word]  # fmt: skip
                broken = f"be {relation} {limits[word]}"
                break
    elif isinstance(value, list):
        low, high = limits.get("minItems", 0), limits.get("maxItems", len(value))
        if not low <= len(value) <= high:
            broken = f"hold exactly {low} values" if low == high else f"hold at least {low} value(s)"
        for i, item in enumerate(value):
            _check_limits(item, limits.get("items", {}), f"{key}[{i}]", where)
    if broken:
        raise ConfigError(f"{where}: '{key}' must {broken}, got {value!r}")


def set_dotted(data: dict[str, Any], dotted: str, value: Any, *, where: str = "config") -> None:
    """Set ``train.lr`` in nested mappings, creating the missing levels; ``value`` is copied."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: unknown key '{dotted}'")
    node[leaf] = copy.deepcopy(value)


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


def _with_limits(schema: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """A field's schema with its limits; the limits of a list's items join the items' own schema."""
    items = {**schema.get("items", {}), **limits.get("items", {})} if "items" in limits else None
    return {**schema, **limits} | ({"items": items} if items is not None else {})


def json_schema(tp: Any) -> dict[str, Any]:
    """The JSON schema of a type of this module (a dataclass, with each field's limits)."""
    if tp is Any:
        return {}
    origin = typing.get_origin(tp)
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(typing.get_args(tp)[1])}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [json_schema(arg) for arg in typing.get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": json_schema(typing.get_args(tp)[0])}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: _with_limits(json_schema(hints[f.name]), f.metadata.get("limits", {}))
                           for f in dataclasses.fields(tp)},
        }
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    return {"type": names[tp]}
