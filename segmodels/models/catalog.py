"""The model catalog: every backbone's and head's name, display label and short name, the heads' options, and
the grammar of run names. Torch-free, so configs, the Snakefile and ``segmodels --help`` read it cheaply.

A name is lowercase letters and digits (``[a-z0-9]+``). A model is ``{backbone}-{head}`` and a run of the study
``{backbone}-{head}[_tag...]`` (:func:`arch_of`), so ``-`` and ``_`` are separators, never part of a name. The
label is what the report prints (``ResNet18``, ``ASPP (1,2,3,6)``), the short name what narrow table headers
print (``R18``; a head's short name is its label unless given). Each head lists its keyword options as
``{option: (config type, default)}``: a study's ``model.head_options`` is checked against them without torch.
A cascade head (OCR) reads the auxiliary head's logits, so its models need ``aux=True``.

Everything else reads the catalog through functions (:func:`backbones`, :func:`heads`, :func:`backbone`,
:func:`head`, ...), so an entry added at run time is seen everywhere: ``list_models()``, config validation,
run names, the summary, the figures and the report tables.

Adding a model of your own: register its builder and its names in one call (torch side, see
:mod:`segmodels.models.backbones.base` and :mod:`segmodels.models.heads` for the builder contracts)::

    from segmodels.models import register_backbone, register_head

    register_backbone("tiny", lambda output_stride: TinyBackbone(output_stride), label="TinyNet", short="TN")
    register_head("bighead", BigHead, label="Big head", options={"channels": (int, 128)})
    # now "tiny-bighead", "tiny-ppm", "resnet18-bighead" are models like the others

:func:`add_backbone` / :func:`add_head` add the names alone (no torch): such an entry validates in a config
but fails at build time until a builder is registered. A backbone entry also says at which output strides it can
be built (``output_strides``: a transformer without a dilated form, MiT, has 32 only; a study's runs are checked
against it when the config is loaded), and an alias of a timm model names that model (``timm``: a study's
``backbones:`` section adds such entries, built through timm with no builder to register). Tests register inside ``with catalog.registered():``,
which puts the catalog and the builder registries back as they were on exit.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "RUN_NAME_SHAPE",
    "OUTPUT_STRIDES",
    "TAG",
    "BackboneEntry",
    "HeadEntry",
    "add_backbone",
    "add_head",
    "arch_of",
    "backbone",
    "backbones",
    "cascade_heads",
    "claim",
    "display_name",
    "head",
    "head_label",
    "heads",
    "list_models",
    "name_pattern",
    "pair_of",
    "parse_model_name",
    "reference_variant",
    "registered",
    "short_name",
    "variant_of",
    "with_variant",
]

TAG = r"[A-Za-z0-9.]+"  # one ``_tag`` of a run name: safe in paths, shells, Snakemake wildcards and MLflow names
_NAME = re.compile(r"[a-z0-9]+")
# The builder registries that live beside this catalog (torch side), pruned with it by :func:`registered`.
_REGISTRIES = (("segmodels.models.backbones.base", "BACKBONE_SPECS"), ("segmodels.models.heads", "HEAD_BUILDERS"))


OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    label: str  # what the report prints: "ResNet18"
    short: str  # what narrow table headers print: "R18"
    output_strides: tuple[int, ...] = OUTPUT_STRIDES  # what it can be built at (a transformer: 32 only)
    timm: str | None = None  # an alias of this timm model (a study's ``backbones:``), built through timm


@dataclass(frozen=True)
class HeadEntry:
    name: str
    label: str
    short: str
    options: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)  # keyword option → (config type, default)
    cascade: bool = False  # reads the auxiliary head's logits (OCR's soft object regions): needs aux=True
    # The label of non-default options: (changed options, defaults) → label; pops the options it shows.
    structure: Callable[[dict[str, Any], Mapping[str, Any]], str] | None = None


_BACKBONES: dict[str, BackboneEntry] = {}
_HEADS: dict[str, HeadEntry] = {}


def _check_new(kind: str, name: str, label: str, short: str | None, table: Mapping[str, Any]) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be lowercase letters and digits only ([a-z0-9]+): run names "
            "are {backbone}-{head}[_tag...], so '-', '_' and other characters cannot be part of it"
        )
    if name in table:
        raise ValueError(f"{kind} '{name}' is already in the catalog (as '{table[name].label}')")
    for what, text in (("label", label), ("short", label if short is None else short)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{kind} '{name}': {what} must be a non-empty string, got {text!r}")


def add_backbone(
    name: str,
    *,
    label: str,
    short: str | None = None,
    output_strides: Sequence[int] | None = None,
    timm: str | None = None,
) -> BackboneEntry:
    """Add backbone ``name`` with its display ``label`` and ``short`` name (default: the label), the
    ``output_strides`` it can be built at (default 8, 16 and 32) and, for an alias of a timm model, its ``timm``
    name (built through timm, no builder to register)."""
    _check_new("backbone", name, label, short, _BACKBONES)
    strides = tuple(output_strides or OUTPUT_STRIDES)
    if not strides or not set(strides) <= set(OUTPUT_STRIDES):
        raise ValueError(f"backbone '{name}': output_strides must be some of {OUTPUT_STRIDES}, got {strides}")
    if timm is not None and (not isinstance(timm, str) or not timm.strip()):
        raise ValueError(f"backbone '{name}': timm must be a timm model name, got {timm!r}")
    entry = BackboneEntry(name, label, short or label, strides, timm)
    _BACKBONES[name] = entry
    return entry


def add_head(
    name: str,
    *,
    label: str,
    short: str | None = None,
    options: Mapping[str, tuple[Any, Any]] | None = None,
    cascade: bool = False,
    structure: Callable[[dict[str, Any], Mapping[str, Any]], str] | None = None,
) -> HeadEntry:
    """Add head ``name``: its ``label``, ``short`` name (default: the label), keyword ``options`` as
    ``{option: (config type, default)}`` (none: the head takes no options from a config), whether it is a
    ``cascade`` head, and optionally how a label shows non-default options (``structure``)."""
    _check_new("head", name, label, short, _HEADS)
    options = dict(options or {})
    for option, spec in options.items():
        if not (isinstance(option, str) and option.isidentifier() and isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"head '{name}': option {option!r} must be an identifier mapped to (config type, "
                             f"default), got {spec!r}")  # fmt: skip
    entry = HeadEntry(name, label, short or label, MappingProxyType(options), bool(cascade), structure)
    _HEADS[name] = entry
    return entry


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def claim(kind: str, name: str, **given: Any) -> BackboneEntry | HeadEntry:
    """The entry a builder registers under (``kind`` "backbone" or "head"): the catalog's, whose fields must equal
    those ``given`` (None: as catalogued), else a new entry made from ``given`` (a label at least)."""
    table, add = {"backbone": (_BACKBONES, add_backbone), "head": (_HEADS, add_head)}[kind]
    given = {key: value for key, value in given.items() if value is not None}
    if name not in table:
        if "label" not in given:
            raise ValueError(f"{kind} '{name}' is not in the catalog: register it with a label (label=...)")
        return add(name, **given)
    entry = table[name]
    for key, value in given.items():
        ours = getattr(entry, key)
        if _plain(ours) != _plain(value):
            raise ValueError(f"{kind} '{name}': {key} {value!r} differs from the catalog's {ours!r}")
    return entry


@contextmanager
def registered() -> Iterator[None]:
    """Within the block, entries may be added (and builders registered); on exit the catalog is back as it was
    and the builder registries hold no name the catalog lacks. For tests and short-lived plug-ins."""
    saved = dict(_BACKBONES), dict(_HEADS)
    try:
        yield
    finally:
        for table, before in zip((_BACKBONES, _HEADS), saved, strict=True):
            table.clear()
            table.update(before)
        for (module, attribute), names in zip(_REGISTRIES, (_BACKBONES, _HEADS), strict=True):
            registry = getattr(sys.modules.get(module), attribute, {})
            for name in [n for n in registry if n not in names]:
                del registry[name]


# --- reading the catalog ---------------------------------------------------------------------------------------


def backbones() -> tuple[str, ...]:
    """Every backbone's name, in study order (the built-ins first, then additions in the order made)."""
    return tuple(_BACKBONES)


def heads() -> tuple[str, ...]:
    """Every head's name, in study order."""
    return tuple(_HEADS)


def cascade_heads() -> tuple[str, ...]:
    """The heads that read the auxiliary head's logits (need ``aux=True``, in eval mode too)."""
    return tuple(name for name, entry in _HEADS.items() if entry.cascade)


def backbone(name: str) -> BackboneEntry:
    """The entry of backbone ``name``; an unknown name raises ValueError listing the valid ones."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(_BACKBONES)}")
    return _BACKBONES[name]


def head(name: str) -> HeadEntry:
    """The entry of head ``name``; an unknown name raises ValueError listing the valid ones."""
    if name not in _HEADS:
        raise ValueError(f"unknown head '{name}'; valid: {', '.join(_HEADS)}")
    return _HEADS[name]


def list_models() -> list[str]:
    """Every ``{backbone}-{head}`` name, backbones in study order, heads within each."""
    return [f"{b}-{h}" for b in _BACKBONES for h in _HEADS]


# --- run names: {backbone}-{head}[_tag...] ---------------------------------------------------------------------


# Any run name's shape, whatever the catalog holds (the config schema's: a plugin's models pass it, and the names
# themselves are checked against the catalog once the plugins are imported).
RUN_NAME_SHAPE = rf"^[a-z0-9]+-[a-z0-9]+(_{TAG})*$"


def name_pattern() -> str:
    """The regular expression of a run name: ``^({backbones})-({heads})(_tag)*$``."""
    return f"^({'|'.join(_BACKBONES)})-({'|'.join(_HEADS)})(_{TAG})*$"


def arch_of(name: str) -> tuple[str, str]:
    """``"resnet18-ppm_os16"`` → ``("resnet18", "ppm")``; anything else raises ValueError listing the parts."""
    match = re.fullmatch(name_pattern(), str(name))
    if match is None:
        raise ValueError(
            f"unknown model '{name}': expected {{backbone}}-{{head}}[_tag...] with backbone one of "
            f"{', '.join(_BACKBONES)}, head one of {', '.join(_HEADS)}, tags of letters, digits and dots"
        )
    return match.group(1), match.group(2)


def parse_model_name(name: str) -> tuple[str, str]:
    """``"resnet18-ppm"`` → ``("resnet18", "ppm")``: a model, no tags; anything else raises ValueError."""
    arch = arch_of(name)
    if variant_of(name):
        raise ValueError(f"unknown model '{name}': expected {{backbone}}-{{head}} without tags, e.g. {pair_of(name)}")
    return arch


def pair_of(name: str) -> str:
    """``"resnet18-ppm_os16"`` → ``"resnet18-ppm"``."""
    return str(name).partition("_")[0]


def variant_of(name: str) -> str:
    """``"resnet18-ppm_os16_crop256x512"`` → ``"os16_crop256x512"``; ``""`` for a plain pair."""
    return str(name).partition("_")[2]


def with_variant(pair: str, variant: str) -> str:
    """``("resnet18-ppm", "os16")`` → ``"resnet18-ppm_os16"``; an empty variant gives the pair."""
    return f"{pair}_{variant}" if variant else pair


def reference_variant(names: Sequence[str]) -> str:
    """The variant the fixed comparisons (backbones under PPM, context modules on ResNet18) are drawn from:
    the plain runs when there are any, else the variant of the first run."""
    names = list(names)
    if not names or any(not variant_of(n) for n in names):
        return ""
    return variant_of(names[0])


# --- labels ----------------------------------------------------------------------------------------------------


def display_name(model: str) -> str:
    """``resnet50-ppm`` → ``ResNet50-PPM``; a variant keeps its tags, ``resnet18-ppm_os16`` → ``ResNet18-PPM os16``."""
    b, h = arch_of(model)
    variant = variant_of(model)
    name = f"{_BACKBONES[b].label}-{_HEADS[h].label}"
    return f"{name} {variant.replace('_', ' ')}" if variant else name


def short_name(model: str) -> str:
    """``resnet18-ppm_os16`` → ``R18 PPM os16``: backbone and head short names, then the tags."""
    b, h = arch_of(model)
    return " ".join([_BACKBONES[b].short, _HEADS[h].short, *filter(None, variant_of(model).split("_"))])


def head_label(name: str, head_options: Mapping[str, Any] | None = None) -> str:
    """The head's label with its ``model.head_options``: the label for the defaults, else the structure in the
    head's short form (``"ASPP (1,12,24,36)+pool"``, ``"PPM (1,2,4)"``) and any other changed width as
    ``name=value``. Dropout rates change no layer and are left out."""
    entry = head(name)
    defaults = {option: default for option, (_, default) in entry.options.items()}
    changed = {}
    for option, value in (head_options or {}).items():
        value = list(value) if isinstance(value, (list, tuple)) else value
        default = defaults.get(option)
        if "dropout" not in option and value != (list(default) if isinstance(default, tuple) else default):
            changed[option] = value
    if not changed:
        return entry.label
    label = entry.structure(changed, defaults) if entry.structure else entry.label
    return " ".join([label, *(f"{option}={value}" for option, value in changed.items())])


# --- the built-in models ---------------------------------------------------------------------------------------


def _numbers(values: Sequence[int]) -> str:
    return ",".join(map(str, values))


def _aspp_structure(changed: dict[str, Any], defaults: Mapping[str, Any]) -> str:
    rates = changed.pop("rates", defaults["rates"])
    return f"ASPP ({_numbers(rates)})" + ("+pool" if changed.pop("image_pool", False) else "")


def _ppm_structure(changed: dict[str, Any], defaults: Mapping[str, Any]) -> str:
    return f"PPM ({_numbers(changed.pop('bins', defaults['bins']))})"


for _name, _label, _short in (
    ("resnet18", "ResNet18", "R18"),
    ("resnet50", "ResNet50", "R50"),
    ("resnet101", "ResNet101", "R101"),
    # ResNet-V1c (deep stem), mmsegmentation's ResNets: its published PSPNet, DeepLabV3 and FCN results use them.
    ("resnet18c", "ResNet18-V1c", "R18c"),
    ("resnet50c", "ResNet50-V1c", "R50c"),
    ("resnet101c", "ResNet101-V1c", "R101c"),
    ("mobilenetv2", "MobileNetV2", "MNv2"),
    ("mobilenetv3", "MobileNetV3", "MNv3"),
):
    add_backbone(_name, label=_label, short=_short)
# SegFormer's Mix Transformer encoders (Xie et al. 2021): no dilated form, output stride 32 only.
for _size in ("0", "1", "2"):
    add_backbone(f"mitb{_size}", label=f"MiT-B{_size}", short=f"MiT{_size}", output_strides=(32,))
# The head classes' signatures are the truth for the options; registering a builder holds the table to them.
add_head("ppm", label="PPM", structure=_ppm_structure, options={
    "bins": (list[int], (1, 2, 3, 6)), "bin_channels": (int | None, None), "channels": (int, 512),
    "dropout": (float, 0.1)})  # fmt: skip
# The study's ASPP is the earlier study's variant (rates 1, 2, 3, 6, no image pooling), not DeepLabV3's, at the
# width of the other heads (512, as PPM's, OCR's and FCN's last conv).
add_head("aspp", label="ASPP (1,2,3,6)", structure=_aspp_structure, options={
    "rates": (list[int], (1, 2, 3, 6)), "image_pool": (bool, False), "channels": (int, 512),
    "project_dropout": (float, 0.0), "dropout": (float, 0.1)})  # fmt: skip
add_head("ocr", label="OCR", cascade=True, options={
    "mid_channels": (int, 512), "key_channels": (int, 256), "dropout": (float, 0.1)})  # fmt: skip
add_head("fcn", label="FCN", options={"channels": (int, 512), "dropout": (float, 0.1)})
# SegFormer's all-MLP decoder over every stage of the backbone (768 channels on MiT-B2: the head's own default).
add_head("segformer", label="SegFormer (MLP)", short="MLP", options={"channels": (int, 256), "dropout": (float, 0.1)})
