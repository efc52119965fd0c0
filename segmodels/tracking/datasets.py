"""The packed data of a training as MLflow dataset inputs of its run: the runs table's Dataset column.

Each split a training reads becomes one dataset input, ``training`` for ``train`` and ``validation`` for ``val``:

- name ``{dataset}-{split}`` (the manifest's ``dataset``, else the folder's name), e.g. ``cityscapes-train``;
- digest :func:`segmodels.data.pack.data_identity` of the packed folder: the same value as the run's
  ``run.data_identity`` param, so runs on other data never share a dataset however the folders are named;
- source the split folder (``local``);
- schema and profile from the arrays' headers (``mlflow.data.from_numpy`` on memory-mapped arrays): the images'
  shape ``[N, H, W, 3]``, the labels' ``[N, H, W]``, their dtype and bytes. No pixel is read or copied.

MLflow is imported inside the function.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["CONTEXTS", "packed_inputs"]

CONTEXTS = {"train": "training", "val": "validation"}  # split -> MLflow's dataset context tag


def packed_inputs(data_dir: str | Path, splits: tuple[str, ...] = ("train", "val")) -> list[dict[str, Any]]:
    """The dataset inputs of the packed data at ``data_dir`` for :meth:`~segmodels.tracking.RunLogger.log_inputs`:
    ``{"dataset": <mlflow.entities.Dataset fields>, "context": "training" | "validation"}`` for each of ``splits``
    that has its arrays. Without a ``manifest.json`` there is no digest to tell the data apart: nothing, with a
    warning."""
    import numpy as np
    from mlflow.data import from_numpy
    from mlflow.data.sources import LocalArtifactDatasetSource

    from segmodels.data.pack import data_identity, read_manifest

    data_dir = Path(data_dir)
    digest = data_identity(data_dir)
    if digest is None:
        warnings.warn(f"{data_dir}: no manifest.json, so the run records no dataset inputs", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
        return []
    name = read_manifest(data_dir).get("dataset") or data_dir.resolve().name
    inputs = []
    for split in splits:
        if split not in CONTEXTS:
            raise ValueError(f"split {split!r}: expected one of {', '.join(CONTEXTS)}")
        folder = (data_dir / split).resolve()
        if not (folder / "images.npy").is_file() or not (folder / "labels.npy").is_file():
            continue
        images, labels = (np.load(folder / f"{kind}.npy", mmap_mode="r") for kind in ("images", "labels"))
        dataset = from_numpy(images, targets=labels, source=LocalArtifactDatasetSource(str(folder)),
                             name=f"{name}-{split}", digest=digest)  # fmt: skip
        inputs.append({"dataset": dataset.to_dict(), "context": CONTEXTS[split]})
    return inputs
