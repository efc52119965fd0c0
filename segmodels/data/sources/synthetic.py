"""The generated dataset of ``segmodels synth``: read by the reader of the layout it was written in.

``segmodels synth`` writes the Cityscapes layout by default, so the demo packs through exactly the code that
packs real Cityscapes. Written with ``--layout voc|ade20k|folder`` (:mod:`segmodels.data.layouts`), its
``synth.json`` names that layout and the matching reader opens it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from segmodels.data.sources import Source, open_source

__all__ = ["PARAMS_FILE", "generated_layout", "open_synthetic"]

PARAMS_FILE = "synth.json"
_OTHER_LAYOUTS = ("voc", "ade20k", "folder")  # what segmodels.data.layouts writes besides Cityscapes


def generated_layout(root: Path) -> str:
    """The layout recorded in ``root/synth.json``: cityscapes unless the generator wrote another one."""
    try:
        record = json.loads((root / PARAMS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "cityscapes"
    layout = record.get("layout") if isinstance(record, dict) else None
    return layout if layout in _OTHER_LAYOUTS else "cityscapes"  # the Cityscapes generator records "tree"/"zip"


def open_synthetic(root: str | os.PathLike) -> Source:
    """The generated dataset at ``root``; FileNotFoundError saying how to generate it when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no generated dataset in {root}: run `segmodels synth --out {root}` "
            f"(or `segmodels synth --config CONFIG`) first"
        )
    return open_source(generated_layout(root), root)
