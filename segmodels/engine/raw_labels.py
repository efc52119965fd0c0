"""The raw labels of a packed split, for scoring at the dataset's own resolution (``evaluate.full_resolution``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["RawLabels"]


class RawLabels:
    """The raw masks of every packed image of a split, as class indices at full resolution.

    Only the raw masks carry the full resolution (the packed ones were resized); the packed manifest
    names the source, the raw dataset's root and each image's mask file, which is read through the same
    reader as ``prepare`` (:func:`segmodels.data.sources.open_source`: Cityscapes' extracted tree or zip,
    Pascal VOC, ADE20K, a folder dataset). All headers are checked here, before inference; a missing
    manifest, root or file raises naming it.
    """

    def __init__(self, split_dir: Path, names: list[str]) -> None:  # names: all of the split's, or its first ones
        from segmodels.data.pack import read_manifest
        from segmodels.data.sources import Sample, open_source

        split = split_dir.name
        try:
            manifest = read_manifest(split_dir)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"full-resolution evaluation needs the raw labels: {exc}") from None
        entry = manifest.get("splits", {}).get(split)
        if not entry or "inputs" not in entry or "root" not in manifest:
            raise ValueError(
                f"the manifest of {split_dir.parent} records no raw files for split '{split}', so the full-resolution "
                "labels cannot be found; evaluate at the packed resolution instead (drop --full-resolution)"
            )
        # ``names``: the split's images, or its first ones (a robustness evaluation of a few)
        if (entry.get("names") or [])[: len(names)] != names:
            raise ValueError(f"the manifest of {split_dir.parent} lists other images than {split_dir}; re-run prepare")
        root = Path(manifest["root"])
        if not root.exists():
            raise FileNotFoundError(f"raw dataset not found: {root} (the root recorded in the manifest of {split_dir})")
        self.source = open_source(manifest.get("source", "cityscapes"), root)
        self.samples = [Sample(n, i["image"], i["label"]) for n, i in zip(names, entry["inputs"][: len(names)], strict=True)]
        self.sizes = [self.source.check_headers(sample) for sample in self.samples]
        # the raw instance ids, where the packed split has them (the source's files beside the labels)
        self.instances = bool(entry.get("instances"))

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        classes = self.source.read_label(sample)
        if classes.shape != self.sizes[index]:
            raise ValueError(f"{sample.label} in {self.source.root}: decoded size differs from its header")
        return classes

    def read_instances(self, index: int) -> np.ndarray | None:
        """The raw instance ids of image ``index`` (H×W), None where the split has none."""
        if not self.instances:
            return None
        sample = self.samples[index]
        ids = self.source.read_instances(sample)
        if ids is None or ids.shape != self.sizes[index]:
            raise ValueError(f"instance ids of {sample.label} in {self.source.root}: missing or not of its size")
        return ids
