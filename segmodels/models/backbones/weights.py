"""Pretrained backbone weights: torchvision's ImageNet weights through its weights API, or a local state dict.

Weights are loaded into torchvision's classification network before the classifier is cut off and the
strides are turned into dilations, so a state dict has exactly the key layout of, e.g.,
``torchvision.models.resnet18().state_dict()``; the keys of the parts the backbone drops (fc,
classifier, MobileNetV2's 1280-channel conv) may be present or not.

"imagenet" never downloads silently into a hang: the torch hub cache is checked first; when the file
is absent, the server is probed with a bounded timeout (torch's own download has none) before
torchvision's URL is fetched, and an offline machine gets a message naming the file and the folder.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models._api import WeightsEnum

__all__ = ["PROBE_TIMEOUT_S", "check_keys", "fetch_state_dict", "hub_cache_file", "imagenet_file", "load_pretrained",
           "probe", "read_state_dict"]

PROBE_TIMEOUT_S = 10.0  # seconds to wait for the weights server before calling the machine offline
_WRAPPER_KEYS = ("state_dict", "model")  # checkpoint dicts that wrap the state dict under one of these
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # absent from older torchvision checkpoints


def hub_cache_file(url: str) -> Path:
    """Where torch hub caches (and looks for) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name


def imagenet_file(weights: WeightsEnum) -> Path:
    """Where torch hub caches (and looks for) the file of ``weights``."""
    return hub_cache_file(weights.url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict (or a checkpoint dict wrapping one under "state_dict"/"model") with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all mean "not a usable file"
        raise ValueError(f"{path}: not a readable PyTorch state dict ({_first_line(exc)})") from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(f"{path}: expected a state dict (parameter names mapped to tensors), got {type(obj).__name__}")
    return dict(obj)


def probe(url: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A HEAD request to ``url``, answered within ``timeout`` seconds, or the ``URLError``/``OSError`` saying why not
    (an ``HTTPError`` when the server answered with an error status)."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
        pass


def fetch_state_dict(url: str, file: Path, *, what: str, check_hash: bool = True) -> dict[str, torch.Tensor]:
    """Download ``url`` into ``file`` (torch hub's way: a temporary file renamed when complete) and load it with
    weights_only=True; the server is probed first with a bounded timeout, and an offline machine gets a
    FileNotFoundError naming ``what``, the file and the folder to put it in."""
    advice = (
        f"put {file.name} (from {url}) into {file.parent}/ on this machine, "
        "or pass a local state dict path as pretrained"
    )
    try:
        probe(url)
    except (urllib.error.URLError, OSError) as exc:
        raise FileNotFoundError(
            f"{what} are not in the torch hub cache and cannot be downloaded ({_first_line(exc)}): {advice}"
        ) from exc
    try:
        # check_hash: the file name holds the first digits of its SHA-256 (torchvision's files do).
        return torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(file.parent),
            file_name=file.name,
            map_location="cpu",
            progress=True,
            check_hash=check_hash,
            weights_only=True,
        )
    except (urllib.error.URLError, OSError) as exc:
        raise FileNotFoundError(f"downloading {what} failed ({_first_line(exc)}): {advice}") from exc


def _download_imagenet(weights: WeightsEnum, name: str) -> dict[str, torch.Tensor]:
    return fetch_state_dict(weights.url, imagenet_file(weights), what=f"ImageNet weights for {name}")


def check_keys(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    dropped: tuple[str, ...],
    source: str,
    *,
    layout: str = "torchvision's",
) -> None:
    """``state`` (less the ``dropped`` prefixes) has exactly ``model``'s keys and shapes, or a ValueError names
    ``source`` and a few of the missing, unexpected or misshapen keys."""
    expected = model.state_dict()
    kept = {k for k in state if not k.startswith(dropped)}
    unexpected = sorted(kept - set(expected))
    missing = sorted(
        k for k in expected if k not in kept and not k.startswith(dropped) and not k.endswith(_OPTIONAL_SUFFIXES)
    )
    if unexpected or missing:
        parts = [
            f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError(
            f"{source}: keys do not match {layout} {type(model).__name__} state-dict layout: {'; '.join(parts)}"
        )
    wrong = [k for k in sorted(kept) if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{source}: {len(wrong)} tensors have the wrong shape, e.g. '{k}' is {tuple(state[k].shape)}, "
            f"the model expects {tuple(expected[k].shape)}"
        )


def load_pretrained(
    model: nn.Module, *, name: str, weights: WeightsEnum, dropped: tuple[str, ...], pretrained: str | Path
) -> None:
    """Load "imagenet" or a local state dict into torchvision's network ``model`` (before it is cut and dilated)."""
    if pretrained == "imagenet":
        file = imagenet_file(weights)
        state = read_state_dict(file) if file.is_file() else _download_imagenet(weights, name)
        source = str(file)
    else:
        state = read_state_dict(pretrained)
        source = str(pretrained)
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    check_keys(model, state, dropped, source)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(dropped)}, strict=False)
