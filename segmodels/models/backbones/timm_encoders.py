"""Any timm model with ``features_only`` as a backbone: ``build_model("timm:convnext_tiny", "ppm")``, or in a study
an alias of ``[a-z0-9]+`` under ``backbones:`` (``convnextt: {timm: convnext_tiny}``, then ``convnextt-ppm``).

The backbone's stages are timm's feature levels from stride 4 on (``feature_info.channels()`` and
``.reduction()``; a stride-2 level, which the study's heads never read, is left out when deeper ones exist): the
last is "out", the one before "aux". Output stride 8 or 16 comes from timm's own ``output_stride=`` argument,
which dilates the networks that support it (ResNets, EfficientNets, MobileNets, ConvNeXt, RegNets, ...); a model
that cannot (ViT, Swin, ...) is refused with a ValueError naming it. Weights: ``pretrained="imagenet"`` is timm's
default pretrained tag (from the Hugging Face Hub, or its cache); a path is a state dict in timm's layout for the
classification model, read here with ``weights_only=True`` and loaded through timm (its key filters apply).
The weights' server is probed once with a short timeout before timm asks it (the Hub's client retries for about a
minute): without an answer, a file in the Hugging Face cache is loaded from there, and an offline machine without
one gets at once a message naming the model and how to give the file instead.

Note: timm models are normalised by their own mean and std (``model.pretrained_cfg``); the study feeds every
backbone ImageNet's, which is what most timm ImageNet weights use.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmodels.models.backbones.base import OUTPUT_STRIDES, Backbone, FeatureInfo, stage_keys
from segmodels.models.backbones.weights import hub_cache_file, probe, read_state_dict

__all__ = ["TIMM_PREFIX", "build_timm_backbone", "check_timm_name", "timm_classifier_state", "timm_name_of"]

TIMM_PREFIX = "timm:"
_FIRST_STRIDE = 4  # the shallowest level kept (SegFormer's and most decoders' first stage)


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:  # a dependency, but a trimmed environment may lack it
        raise ImportError("timm backbones need the timm package: pip install 'timm>=1.0'") from exc
    return timm


def timm_name_of(backbone: str) -> str | None:
    """The timm model behind ``backbone``: ``"timm:resnet18"`` → ``"resnet18"``, a catalogued alias → its model."""
    if backbone.startswith(TIMM_PREFIX):
        return backbone.removeprefix(TIMM_PREFIX)
    from segmodels.models import catalog

    return catalog.backbone(backbone).timm if backbone in catalog.backbones() else None


def check_timm_name(model: str) -> None:
    """ValueError, with close names and how to list them, when timm has no model ``model`` (its registry is local)."""
    _check_name(_timm(), model)


def _check_name(timm: Any, model: str) -> None:
    if timm.is_model(model):
        return
    close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(
        f"unknown timm model '{model}'{hint}. timm.list_models('pattern*') lists the names (e.g. python -c "
        f"\"import timm; print(timm.list_models('convnext*'))\"), timm.list_models(pretrained=True) those with weights"
    )


def _from_file(timm: Any, path: Path) -> dict[str, Any]:
    """timm's arguments that load the weights of a local file (a state dict, or a safetensors file)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = read_state_dict(path)  # weights_only=True
    fields = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    overlay = {"state_dict": state} if "state_dict" in fields else {"file": str(path)}
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}


def _hub_cached(hub: Any, repo: str, filename: str | None) -> Path | None:
    """The Hugging Face cache's file of the weights of ``repo`` (``id[@revision]``), or None."""
    repo_id, _, revision = repo.partition("@")
    for name in [filename] if filename else ["model.safetensors", "pytorch_model.bin"]:  # timm's names, safe first
        found = hub.try_to_load_from_cache(repo_id, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _imagenet_kwargs(timm: Any, model: str) -> dict[str, Any]:
    """timm's own loading of its default weights when their server answers one bounded probe
    (:data:`~segmodels.models.backbones.weights.PROBE_TIMEOUT_S`), the cached file when it does not, else at once a
    FileNotFoundError saying how to give the weights (timm's Hub client would retry for about a minute first)."""
    cfg = timm.models.get_pretrained_cfg(model)
    try:
        import huggingface_hub as hub
    except ImportError:
        hub = None
    if cfg is not None and cfg.hf_hub_id and hub is not None:
        if hub.constants.HF_HUB_OFFLINE:  # the Hub's client reads its cache only, without waiting
            return {"pretrained": True}
        url, cached = hub.constants.ENDPOINT, _hub_cached(hub, cfg.hf_hub_id, cfg.hf_hub_filename)
    elif cfg is not None and cfg.url:
        if hub_cache_file(cfg.url).is_file():  # timm reads torch hub's cache without the network
            return {"pretrained": True}
        url, cached = cfg.url, None
    else:  # no known weights: timm says so
        return {"pretrained": True}
    try:
        probe(url)
    except urllib.error.HTTPError:  # the server answered
        return {"pretrained": True}
    except (urllib.error.URLError, OSError) as exc:
        if cached is None:
            raise FileNotFoundError(_offline_message(timm, model, exc)) from exc
        return _from_file(timm, cached)
    return {"pretrained": True}


def _pretrained_kwargs(timm: Any, model: str, pretrained: str | os.PathLike[str] | None) -> dict[str, Any]:
    if pretrained is None:
        return {"pretrained": False}
    if pretrained == "imagenet":
        return _imagenet_kwargs(timm, model)
    return _from_file(timm, Path(pretrained))


def _offline_message(timm: Any, model: str, exc: BaseException) -> str:
    cfg = timm.models.get_pretrained_cfg(model)
    where = (cfg.hf_hub_id and f"Hugging Face Hub {cfg.hf_hub_id}") or cfg.url or "no known location" if cfg else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"ImageNet weights of timm model '{model}' could not be loaded ({type(exc).__name__}: {first}); they come "
        f"from {where}. On a machine without network access, download them elsewhere into the Hugging Face cache "
        f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}) and copy it here, "
        f"or save the classification model's state dict (timm.create_model('{model}', pretrained=True).state_dict()) "
        "to a file and set model.pretrained to its path"
    )


def timm_classifier_state(model: str) -> dict[str, torch.Tensor]:
    """The state dict of timm's classification model ``model`` with its default ImageNet weights, loaded by timm
    as :func:`build_timm_backbone` loads them (the cache when the server does not answer; else the message above)."""
    timm = _timm()
    _check_name(timm, model)
    kwargs = _imagenet_kwargs(timm, model)
    try:
        return timm.create_model(model, **kwargs).state_dict()
    except Exception as exc:  # the Hub's and urllib's errors: offline, a proxy, a missing cache
        raise FileNotFoundError(_offline_message(timm, model, exc)) from exc


def _create(timm: Any, model: str, output_stride: int | None, kwargs: dict[str, Any]) -> nn.Module:
    """timm's features_only model, dilated to ``output_stride`` (None: as it is)."""
    if output_stride is None or output_stride == 32:  # the native stride: no argument (not every model takes it)
        return timm.create_model(model, features_only=True, **kwargs)
    return timm.create_model(model, features_only=True, output_stride=output_stride, **kwargs)


def _probe(timm: Any, model: str, output_stride: int) -> tuple[nn.Module, int | None]:
    """The model without weights at ``output_stride`` and the ``output_stride`` argument that gave it (None: the
    model takes none), or a ValueError naming a model that cannot give that stride."""
    cannot = f"timm model '{model}' cannot be built at output stride {output_stride}"
    dilation: int | None = output_stride
    try:
        network = _create(timm, model, dilation, {"pretrained": False})
    except TypeError as exc:
        if "output_stride" not in str(exc):
            raise
        network, dilation = _create(timm, model, None, {"pretrained": False}), None
    except AssertionError as exc:  # timm asserts the output strides a model accepts
        raise ValueError(f"{cannot}: timm refuses output_stride={output_stride} for it") from exc
    reduction = list(network.feature_info.reduction())[-1]
    if reduction != output_stride:
        why = ("" if output_stride == 32 else "it does not dilate (timm's output_stride argument), and "
               if dilation is None else "timm does not dilate it, and ")  # fmt: skip
        raise ValueError(f"{cannot}: {why}its deepest features are at stride {reduction}"
                         + (f"; use model.output_stride: {reduction} for it" if reduction in OUTPUT_STRIDES else ""))
    return network, dilation


def build_timm_backbone(
    model: str, *, output_stride: int = 8, pretrained: str | os.PathLike[str] | None = None
) -> Backbone:
    """timm model ``model`` as a :class:`Backbone` (see the module docstring); ``pretrained`` is None, "imagenet"
    or the path of a state dict of timm's classification model."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {', '.join(map(str, OUTPUT_STRIDES))}, got {output_stride!r}")
    timm = _timm()
    _check_name(timm, model)
    network, dilation = _probe(timm, model, output_stride)  # no weights yet: the checks cost no download
    info = network.feature_info
    channels, reductions = list(info.channels()), list(info.reduction())
    keep = [i for i, r in enumerate(reductions) if r >= _FIRST_STRIDE]
    keep = keep if len(keep) >= 2 else list(range(len(reductions)))
    if pretrained is not None or len(keep) < len(reductions):
        kwargs = _pretrained_kwargs(timm, model, pretrained)
        if len(keep) < len(reductions):  # only the kept levels: the model returns no unused stride-2 map
            kwargs["out_indices"] = tuple(info.out_indices[i] for i in keep)
        try:
            network = _create(timm, model, dilation, kwargs)
        except Exception as exc:  # the Hub's and urllib's errors: offline, a proxy, a missing cache
            if pretrained != "imagenet":
                raise
            raise FileNotFoundError(_offline_message(timm, model, exc)) from exc
    keys = stage_keys(len(keep))
    feature_info = {key: FeatureInfo(channels[i], reductions[i]) for key, i in zip(keys, keep, strict=True)}
    return Backbone(network, feature_info, stages=keys)
