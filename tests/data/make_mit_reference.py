"""Write tests/data/mit_reference.npz: Hugging Face's SegFormer logits for the tiny model of tests/mit_reference.py.

    pip install transformers
    python tests/data/make_mit_reference.py

The weights are ours (fixed draws in our key layout); they go into ``SegformerForSemanticSegmentation`` through the
inverse of :func:`segmodels.models.backbones.mit_weights.from_transformers`, found by converting Hugging Face's own
state dict with every element replaced by its position. Both models run in float64. One deliberate change to
Hugging Face's model: its block and stage-end LayerNorms get eps 1e-6, the released code's (NVlabs/SegFormer,
``partial(nn.LayerNorm, eps=1e-6)``), where Hugging Face keeps torch's 1e-5; with that, the two agree to rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared tiny model

from mit_reference import (  # noqa: E402
    CLASSES,
    CONFIG,
    DECODER_CHANNELS,
    REFERENCE,
    checksum,
    decoder_logits,
    fixed_input,
    tiny_segformer,
)

from segmodels.models.backbones.mit_weights import from_transformers  # noqa: E402

_RELEASED_EPS = 1e-6


def hugging_face_model() -> torch.nn.Module:
    import transformers

    config = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=len(CONFIG.depths), depths=list(CONFIG.depths),
        sr_ratios=list(CONFIG.sr_ratios), hidden_sizes=list(CONFIG.embed_dims), patch_sizes=list(CONFIG.patch_sizes),
        strides=list(CONFIG.strides), num_attention_heads=list(CONFIG.num_heads), mlp_ratios=[CONFIG.mlp_ratio] * 4,
        hidden_act="gelu", decoder_hidden_size=DECODER_CHANNELS, num_labels=CLASSES,
    )  # fmt: skip
    model = transformers.SegformerForSemanticSegmentation(config).double().eval()
    for name, module in model.named_modules():  # the blocks' and stage ends' norms; not the patch embeddings' nor
        if isinstance(module, torch.nn.LayerNorm) and "patch_embeddings" not in name and "attention" not in name:
            module.eps = _RELEASED_EPS  # the sequence reduction's, which the released code leaves at 1e-5 too
    return model


def load_ours_into(theirs: torch.nn.Module, ours: dict[str, torch.Tensor]) -> None:
    """Fill ``theirs`` with our weights: each of our elements goes where from_transformers took it from."""
    state = theirs.state_dict()
    tagged, start = {}, 0
    for key, value in state.items():
        tagged[key] = torch.arange(start, start + value.numel(), dtype=torch.float64).reshape(value.shape)
        start += value.numel()
    positions = from_transformers(tagged)
    assert positions.keys() == ours.keys(), sorted(set(positions) ^ set(ours))
    flat = torch.full((start,), float("nan"), dtype=torch.float64)
    for key, value in ours.items():
        flat[positions[key].long().flatten()] = value.double().flatten()
    assert not flat.isnan().any(), "an element of Hugging Face's model has no counterpart in ours"
    start = 0
    for value in state.values():
        value.copy_(flat[start : start + value.numel()].reshape(value.shape).to(value.dtype))
        start += value.numel()


def main() -> None:
    import transformers

    ours, x = tiny_segformer(), fixed_input()
    theirs = hugging_face_model()
    load_ours_into(theirs, ours.state_dict())
    with torch.no_grad():
        expected = theirs(pixel_values=x).logits
    got = decoder_logits(ours, x)
    print(f"transformers {transformers.__version__}: logits {tuple(expected.shape)}, std {expected.std():.3f}, "
          f"max |ours - theirs| {(got - expected).abs().max():.3g}")  # fmt: skip
    np.savez_compressed(REFERENCE, logits=expected.numpy(), checksum=checksum(ours, x),
                        transformers=transformers.__version__)  # fmt: skip
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
