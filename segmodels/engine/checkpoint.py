"""The state of a run folder: final weights (``checkpoint.pt``), resume state (``last.pt``), training log.

The file names are those of :mod:`segmodels.study.runs`. Checkpoints hold only tensors and plain Python types, so
``torch.load(path, weights_only=True)`` reads them: random-generator states are converted to tensors and lists
here. Every file is written atomically (temporary file in the same folder, fsync, ``os.replace``), so a job killed
at any instant leaves either the old file or the new one, never half of one. The training log grows in
``train_log.partial.csv`` and is renamed to ``train_log.csv`` when training ends; a resumed run first drops the
rows past the iteration of ``last.pt``. :class:`TrainState` is what a training updates and ``last.pt`` holds.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmodels.atomic import fsync_dir, write_atomic
from segmodels.engine.distributed import DistInfo, barrier
from segmodels.study import runs
from segmodels.study.config import StudyConfig, config_to_dict
from segmodels.study.schema import effective_norm
from segmodels.study.typed import flatten

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_FORMAT",
    "TrainLog",
    "TrainState",
    "clear_run_state",
    "config_differences",
    "get_rng_state",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_resume_state",
    "resume_state",
    "save_atomic",
    "set_rng_state",
]

CHECKPOINT_FORMAT = 1
RESUME_FORMAT = 1

# Keys that change neither the weights nor the batches a run sees: a resumed run may differ in these.
_RESUME_NEUTRAL = {
    "train.log_every",
    "train.val_every",
    "train.ckpt_every",
    "train.device",
    "train.compile",
    "train.channels_last",
    "train.deterministic",
    "train.region_weight",  # retired: OCR's regions are the aux logits (train.aux_weight); no other head read it
}
_RESUME_SECTIONS = ("train.", "model.", "run.")
_RESUME_DATA_KEYS = {"data.dataset", "data.size"}


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file beside ``path``, fsync and rename."""
    return write_atomic(path, lambda fh: torch.save(obj, fh))


# --- random generators -------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors and plain types."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    nps = state["numpy"]
    np.random.set_state(
        ("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    )
    pys = state["python"]
    random.setstate((pys["version"], tuple(int(v) for v in pys["internal"].tolist()), pys["gauss_next"]))


# --- loading -----------------------------------------------------------------------------------


def _load(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a {what} (top level is {type(obj).__name__}, expected a dict)")
    return obj


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a final checkpoint (``checkpoint.pt`` or a run folder holding one) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = runs.RunFolder(path).checkpoint
    ckpt = _load(path, "checkpoint")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, this version reads {CHECKPOINT_FORMAT}")
    missing = [k for k in ("model", "backbone", "head", "num_classes", "output_stride", "aux") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def load_model_from_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    expect_backbone: str | None = None,
    expect_head: str | None = None,
    expect_num_classes: int | None = None,
) -> nn.Module:
    """Build the model a checkpoint describes (architecture, ``aux``, ``head_options``, ``norm``) and load its weights
    (eval mode, on ``device``)."""
    from segmodels.models import build_model
    from segmodels.study.config import import_plugins

    ckpt = load_checkpoint(path)
    import_plugins(ckpt.get("config") or {}, where=f"{path} (its training config)")  # a model of a plugin's
    for key, expected in (("backbone", expect_backbone), ("head", expect_head), ("num_classes", expect_num_classes)):
        if expected is not None and ckpt[key] != expected:
            raise ValueError(f"{path}: checkpoint has {key}={ckpt[key]!r}, expected {expected!r}")
    model = build_model(
        ckpt["backbone"],
        ckpt["head"],
        num_classes=ckpt["num_classes"],
        output_stride=ckpt["output_stride"],
        aux=ckpt["aux"],
        pretrained=None,
        head_options=ckpt.get("head_options"),  # absent in checkpoints written before heads had options: defaults
        norm=ckpt.get("norm", "batch"),  # absent in checkpoints written before model.norm: BatchNorm
    )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {ckpt['backbone']}-{ckpt['head']}: {exc}") from exc
    return model.to(device).eval()


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read ``last.pt``; a file of another format raises ValueError naming it."""
    path = Path(path)
    state = _load(path, "resume state")
    if state.get("format") != RESUME_FORMAT or "iteration" not in state or "model" not in state:
        raise ValueError(f"{path}: not a resume state of format {RESUME_FORMAT}; remove it or pass --restart")
    return state


def _resume_relevant(flat: Mapping[str, Any]) -> dict[str, Any]:
    out = {
        k: v
        for k, v in flat.items()
        if (k.startswith(_RESUME_SECTIONS) or k in _RESUME_DATA_KEYS) and k not in _RESUME_NEUTRAL
    }
    # train.sync_bn: true is the earlier spelling of model.norm: sync; a state of either spelling resumes under both
    if out.pop("train.sync_bn", False) and out.get("model.norm", "batch") == "batch":
        out["model.norm"] = "sync"
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Training-relevant keys whose values differ, as ``key: saved -> current`` lines (flat dicts in). A key that
    ``saved`` lacks (a setting added since it was written) differs only when ``current`` sets it off its default:
    the default of a new setting keeps the behaviour the state was trained with."""
    old, new = _resume_relevant(saved), _resume_relevant(current)
    defaults = flatten(config_to_dict(StudyConfig()))
    old |= {key: defaults[key] for key in new.keys() - old.keys() if key in defaults}
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            out.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return out


# --- the run folder ----------------------------------------------------------------------------


def _folder(folder: str | Path | runs.RunFolder) -> runs.RunFolder:
    return folder if isinstance(folder, runs.RunFolder) else runs.RunFolder(Path(folder))


def clear_run_state(folder: str | Path | runs.RunFolder) -> None:
    """Forget a folder's previous training (``--restart``): resume state, outputs, MLflow run id."""
    folder = _folder(folder)
    for path in (folder.last, folder.train_log_partial, folder.train_log, folder.checkpoint, folder.run_id_file):
        path.unlink(missing_ok=True)
    if folder.offline.is_file():  # the abandoned run's unsent records: kept aside, not mixed in
        aside = folder.offline.with_name(f"{folder.offline.stem}.restarted-{int(time.time())}{folder.offline.suffix}")
        shutil.move(folder.offline, aside)
        warnings.warn(f"--restart: unsent MLflow records of the previous run moved to {aside}", stacklevel=2)


def resume_state(folder: runs.RunFolder, params: dict[str, Any], *, data_dir: Path, is_main: bool,
                 restart: bool) -> dict[str, Any] | None:  # fmt: skip
    """The folder's ``last.pt`` when training may continue from it; None to start afresh. ``restart`` clears the
    folder first (the main process; all wait for it); a state of other data or other training-relevant settings
    than ``params`` (the run's flat params) raises ValueError."""
    if is_main:
        folder.path.mkdir(parents=True, exist_ok=True)
        if restart:
            clear_run_state(folder)
    barrier()
    last = folder.last
    state = load_resume_state(last) if last.is_file() else None
    if state is not None and (saved := state["params"].get("run.data_identity")) != params["run.data_identity"]:
        if "run.data_identity" in state["params"]:  # older resume states did not record it
            raise ValueError(
                f"{last} was trained on other data than {data_dir} holds now (data identity {saved} "
                f"-> {params['run.data_identity']}: the dataset was packed again from other files, at another "
                "size or with other classes); not resuming it. Pass --restart to train from scratch on this data."
            )
        state["params"]["run.data_identity"] = params["run.data_identity"]
    if state is not None and (diff := config_differences(state["params"], params)):
        raise ValueError(f"{last} was written with other settings; not resuming it (pass --restart "
                         "to discard it and start over):\n  " + "\n  ".join(diff))
    return state


@dataclass
class TrainState:
    """What a training updates and ``last.pt`` holds, and where it trains."""

    cfg: StudyConfig
    model: nn.Module  # unwrapped: no DDP, no torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: dict[str, Any]  # the run's flat params, compared with last.pt's on resume
    info: DistInfo
    device: torch.device
    folder: runs.RunFolder
    start: int = 0  # the iteration training continues from
    accumulation: Any = None  # the micro-batch and accumulation (segmodels.engine.micro_batch.Accumulation)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a resume state read by :func:`resume_state`."""
        self.model.load_state_dict(saved["model"])
        impl = [{k: g.get(k) for k in ("fused", "foreach")} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved["optimizer"])
        for group, keep in zip(self.optimizer.param_groups, impl, strict=True):
            group.update(keep)  # the kernel choice suits this machine, not the one that saved
        self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        self.start = int(saved["iteration"])
        if self.info.is_main:
            print(f"resuming from {self.folder.last} at iteration {self.start}", flush=True)
        if saved["world_size"] != self.info.world_size and self.info.is_main:
            warnings.warn(f"resuming with {self.info.world_size} processes where last.pt had {saved['world_size']}: "
                          "the batches differ from an uninterrupted run", stacklevel=3)

    def save_last(self, iteration: int) -> None:
        """last.pt: everything to continue from ``iteration``."""
        save_atomic({
            "format": RESUME_FORMAT, "iteration": iteration, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": get_rng_state(),
            "config": config_to_dict(self.cfg), "params": self.params, "world_size": self.info.world_size,
            "accumulation": self._accumulation(),
        }, self.folder.last)  # fmt: skip

    def _accumulation(self) -> dict[str, Any] | None:
        acc = self.accumulation
        return None if acc is None else {"micro_batch": acc.micro_batch, "accumulate": acc.accumulate,
                                         "searched": acc.searched}  # fmt: skip

    def save_final(self, name: str, label_set: dict[str, Any] | None = None) -> None:
        """checkpoint.pt of run ``name``: the weights, the model's description, the run's config and the classes
        it was trained on (``label_set``: the packed manifest's, for ``predict``'s colours and MLflow's names)."""
        from segmodels.models.catalog import arch_of

        m, (backbone, head) = self.cfg.model, arch_of(name)
        save_atomic({
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "run": name,
            "backbone": backbone, "head": head, "num_classes": m.num_classes, "output_stride": m.output_stride,
            "aux": m.aux, "head_options": dict(m.head_options), "norm": effective_norm(self.cfg),
            "config": config_to_dict(self.cfg),
            "iteration": self.cfg.train.iterations, "accumulation": self._accumulation(),
            **({"label_set": label_set} if label_set is not None else {}),
        }, self.folder.checkpoint)  # fmt: skip


class TrainLog:
    """Rows appended (and fsynced) to ``train_log.partial.csv``; ``finish()`` renames it to ``train_log.csv``."""

    def __init__(self, folder: Path | runs.RunFolder, columns: Sequence[str], *, resume_iteration: int = 0) -> None:
        self.columns = list(columns)
        folder = _folder(folder)
        self.partial, self.final = folder.train_log_partial, folder.train_log
        source = self.partial if self.partial.is_file() else self.final
        rows = []
        if resume_iteration > 0 and source.is_file():
            with source.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= resume_iteration]
        write_atomic(self.partial, lambda fh: fh.write(self._format(rows, header=True).encode()))
        self._fh = self.partial.open("a", newline="")

    def _format(self, rows: list[dict], header: bool = False) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def write(self, iteration: int, row: Mapping[str, float]) -> None:
        self._fh.write(self._format([{**row, "iteration": iteration}]))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def finish(self) -> None:
        self._fh.close()
        os.replace(self.partial, self.final)
        fsync_dir(self.final.parent)  # the rename itself survives a power cut
