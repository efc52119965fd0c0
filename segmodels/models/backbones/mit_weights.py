"""Weights of the Mix Transformer encoders and SegFormer models: the released ImageNet weights, and the key
layouts SegFormer checkpoints are distributed in, converted to this project's.

This project's MiT keys are those of the released code (NVlabs/SegFormer's ``mix_transformer.py``, mmsegmentation
0.x): an ImageNet file ``mit_b0.pth`` loads into :class:`~segmodels.models.backbones.mit.MixVisionTransformer` as it
is (its classifier ``head.*`` dropped), and in a whole model the encoder sits under ``backbone.body.``. Converters:

* :func:`from_transformers` / :func:`to_transformers`: Hugging Face's layout, as the files on the Hub are written
  (``segformer.encoder.block.0.0.attention.self.query.weight``, separate key and value matrices,
  ``decode_head.linear_c.0.proj.weight``, ``decode_head.batch_norm.*``; e.g. ``nvidia/mit-b0``,
  ``nvidia/segformer-b0-finetuned-ade-512-512``). The module names of transformers >= 5
  (``segformer.stages.0.blocks.0.attention.q_proj``) are read too.
* :func:`from_nvlabs`: a whole SegFormer checkpoint of the released code (``backbone.block1.0.attn.q.weight``,
  ``decode_head.linear_c4.proj.weight``, ``decode_head.linear_fuse.conv.weight``, ``decode_head.linear_pred``).

mmsegmentation 1.x renamed the encoder (``layers.0.0.projection``, ``attn.attn.in_proj_weight``) and made the
decoder's per-stage layers 1×1 conv-BN-ReLU; neither is read here.

``pretrained="imagenet"`` looks for ``mit_b0.pth`` (``mit_b1.pth``, ``mit_b2.pth``) in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), in either layout; when it is absent, Hugging Face's copy of the ImageNet-1k
weights (``nvidia/mit-b0``) is downloaded there, and an offline machine gets a message naming the file and folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from segmodels.models.backbones.weights import check_keys, fetch_state_dict, read_state_dict

__all__ = [
    "HF_IMAGENET",
    "IMAGENET_URL",
    "from_nvlabs",
    "from_transformers",
    "imagenet_mit_file",
    "load_mit_pretrained",
    "to_transformers",
]

# Hugging Face repositories of the ImageNet-1k MiT weights (converted from NVlabs' files by Hugging Face).
HF_IMAGENET = {"mitb0": "nvidia/mit-b0", "mitb1": "nvidia/mit-b1", "mitb2": "nvidia/mit-b2"}
IMAGENET_URL = "https://huggingface.co/{repo}/resolve/main/pytorch_model.bin"
_IMAGENET_HEADS = ("head.", "classifier.")  # the classifier of NVlabs' and of Hugging Face's ImageNet files
_BACKBONE = "backbone.body."

# Hub names (transformers < 5) ↔ ours, per block: (theirs, ours).
_BLOCK = (
    ("layer_norm_1.", "norm1."),
    ("attention.self.query.", "attn.q."),
    ("attention.self.sr.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_norm_2.", "norm2."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.dense2.", "mlp.fc2."),
)
# transformers >= 5 module names → the Hub's (the inverse of its load-time renaming).
_V5 = (
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"mlp\.fc1\.", "mlp.dense1."),
    (r"mlp\.fc2\.", "mlp.dense2."),
    (r"layernorm_before\.", "layer_norm_1."),
    (r"layernorm_after\.", "layer_norm_2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
)


def _encoder_key(rest: str) -> str | None:
    """A Hub encoder key without its ``encoder.`` prefix → ours (None for key/value, merged separately)."""
    if m := re.fullmatch(r"patch_embeddings\.(\d+)\.(proj|layer_norm)\.(.+)", rest):
        return f"patch_embed{int(m[1]) + 1}.{'norm' if m[2] == 'layer_norm' else 'proj'}.{m[3]}"
    if m := re.fullmatch(r"layer_norm\.(\d+)\.(.+)", rest):
        return f"norm{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"block\.(\d+)\.(\d+)\.(.+)", rest):
        for theirs, ours in _BLOCK:
            if m[3].startswith(theirs):
                return f"block{int(m[1]) + 1}.{m[2]}.{ours}{m[3][len(theirs):]}"
        if m[3].startswith(("attention.self.key.", "attention.self.value.")):
            return None
    raise ValueError(f"not a SegFormer encoder key in Hugging Face's layout: encoder.{rest}")


def from_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face's SegFormer keys → ours. An encoder alone (``SegformerModel``,
    ``SegformerForImageClassification``: ``[segformer.]encoder.*``) gives the encoder's keys (``patch_embed1.proj.weight``, what
    :class:`~segmodels.models.backbones.mit.MixVisionTransformer` loads; an ImageNet ``classifier.*`` is kept as
    it is, for the caller to drop); a whole ``SegformerForSemanticSegmentation`` gives a whole model's keys
    (``backbone.body.*``, ``head.*``). Keys and values are one ``kv`` matrix here, keys first."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _V5:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    whole = any(k.startswith("decode_head.") for k in renamed)
    prefix = _BACKBONE if whole else ""
    out: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        rest = key.removeprefix("segformer.")
        if rest.startswith("encoder."):
            ours = _encoder_key(rest.removeprefix("encoder."))
            if ours is not None:
                out[prefix + ours] = value
        elif m := re.fullmatch(r"decode_head\.(linear_c\.\d+\.proj|linear_fuse|batch_norm|classifier)\.(.+)", key):
            part = {"linear_fuse": "linear_fuse.0", "batch_norm": "linear_fuse.1"}.get(m[1], m[1])
            out[f"head.{part}.{m[2]}"] = value
        elif key.startswith("classifier."):
            out[key] = value
        else:
            raise ValueError(f"not a SegFormer key in Hugging Face's layout: {key}")
    for key in renamed:  # keys and values: one matrix, keys first (the released code's kv layer)
        m = re.fullmatch(r"(?:segformer\.)?encoder\.block\.(\d+)\.(\d+)\.attention\.self\.key\.(weight|bias)", key)
        if m:
            value_key = key.replace(".attention.self.key.", ".attention.self.value.")
            merged = torch.cat([renamed[key], renamed[value_key]], dim=0)
            out[f"{prefix}block{int(m[1]) + 1}.{m[2]}.attn.kv.{m[3]}"] = merged
    return out


def to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys → the Hub's layout: the inverse of :func:`from_transformers` (an encoder's keys give
    ``encoder.*`` as in ``SegformerModel``; a whole model's give ``segformer.encoder.*`` and ``decode_head.*``)."""
    whole = any(k.startswith(_BACKBONE) for k in state)
    prefix = "segformer.encoder." if whole else "encoder."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if whole and not key.startswith(_BACKBONE):
            m = re.fullmatch(r"head\.(linear_c\.\d+\.proj|linear_fuse\.0|linear_fuse\.1|classifier)\.(.+)", key)
            if not m:
                raise ValueError(f"not a key of a SegFormer model: {key}")
            part = {"linear_fuse.0": "linear_fuse", "linear_fuse.1": "batch_norm"}.get(m[1], m[1])
            out[f"decode_head.{part}.{m[2]}"] = value
            continue
        rest = key.removeprefix(_BACKBONE)
        if m := re.fullmatch(r"patch_embed(\d+)\.(proj|norm)\.(.+)", rest):
            out[f"{prefix}patch_embeddings.{int(m[1]) - 1}.{'layer_norm' if m[2] == 'norm' else 'proj'}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d+)\.(.+)", rest):
            out[f"{prefix}layer_norm.{int(m[1]) - 1}.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d+)\.(\d+)\.(.+)", rest):
            block = f"{prefix}block.{int(m[1]) - 1}.{m[2]}."
            if m[3].startswith("attn.kv."):
                key_part, value_part = value.chunk(2, dim=0)
                out[f"{block}attention.self.key.{m[3][8:]}"] = key_part
                out[f"{block}attention.self.value.{m[3][8:]}"] = value_part
                continue
            (theirs,) = [t + m[3][len(o):] for t, o in _BLOCK if m[3].startswith(o)]
            out[block + theirs] = value
        else:
            raise ValueError(f"not a key of a Mix Transformer: {key}")
    return out


def from_nvlabs(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole SegFormer checkpoint of the released code (mmsegmentation 0.x) → our keys: the encoder's keys are
    ours already (under ``backbone.``); the decoder's ``linear_c{i}`` (i = 1..4), ``linear_fuse.conv`` and
    ``.bn``, ``linear_pred`` become ``head.linear_c.{i-1}``, ``head.linear_fuse.0``/``.1``, ``head.classifier``."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[_BACKBONE + key.removeprefix("backbone.")] = value
        elif m := re.fullmatch(r"decode_head\.linear_c(\d)\.proj\.(.+)", key):
            out[f"head.linear_c.{int(m[1]) - 1}.proj.{m[2]}"] = value
        elif m := re.fullmatch(r"decode_head\.linear_fuse\.(conv|bn)\.(.+)", key):
            out[f"head.linear_fuse.{0 if m[1] == 'conv' else 1}.{m[2]}"] = value
        elif key.startswith("decode_head.linear_pred."):
            out["head.classifier." + key.removeprefix("decode_head.linear_pred.")] = value
        elif not key.startswith("auxiliary_head."):
            raise ValueError(f"not a key of a SegFormer checkpoint of the released code: {key}")
    return out


def imagenet_mit_file(name: str) -> Path:
    """Where ``pretrained="imagenet"`` looks for (and downloads) the ImageNet weights of ``name`` (``mitb0``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"mit_{name.removeprefix('mit')}.pth"


def _encoder_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict in our layout from a file in any layout read here (see the module docstring)."""
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    if any(re.match(r"(segformer\.)?(encoder\.|stages\.)", k) for k in state):
        convert = from_transformers
    elif any(k.startswith("backbone.") for k in state):
        convert = from_nvlabs if any(k.startswith("decode_head.") for k in state) else None
    state = convert(state) if convert else dict(state)
    if any(k.startswith(_BACKBONE) for k in state):  # a whole model's: its encoder
        state = {k.removeprefix(_BACKBONE): v for k, v in state.items() if k.startswith(_BACKBONE)}
    elif any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_mit_pretrained(model: nn.Module, *, name: str, pretrained: str | Path) -> None:
    """Load "imagenet" (see the module docstring) or a state-dict file in any layout read here into ``model``."""
    if pretrained == "imagenet":
        file = imagenet_mit_file(name)
        if file.is_file():
            state = read_state_dict(file)
        else:
            url = IMAGENET_URL.format(repo=HF_IMAGENET[name])
            state = fetch_state_dict(url, file, what=f"ImageNet weights for {name} (NVlabs' mit_{name[3:]}.pth or "
                                     f"Hugging Face's {HF_IMAGENET[name]})", check_hash=False)  # fmt: skip
        source = str(file)
    else:
        state, source = read_state_dict(pretrained), str(pretrained)
    try:
        state = _encoder_state(state)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    check_keys(model, state, _IMAGENET_HEADS, source, layout="the released code's (NVlabs/SegFormer)")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_IMAGENET_HEADS)})
