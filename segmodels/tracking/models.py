"""The trained model as an MLflow model of its run, its versions in the model registry, and the study's champion.

- :func:`log_trained_model` logs a run's model with ``mlflow.pytorch.log_model`` into the run its folder names
  (``mlflow_run_id``): the segmentor returning its logits tensor (:class:`segmodels.engine.export.LogitsOnly`;
  MLflow cannot sign the ``{"out": ...}`` dict), a signature (float32 images ``(N, 3, H, W)`` to logits
  ``(N, C, H, W)``), a small input example, and the run's config (``config.yaml``) and class names
  (``class_names.json``) in the model's ``extra_files/``. With ``tracking.register`` the model also becomes a
  version of :func:`registered_name`.
- :func:`set_champion` (the summary job) gives the alias ``champion`` to the registered version of the study's best
  model: ``models:/segbench-{experiment}@champion``.

MLflow 3 keeps a logged model beside the run's artifacts, as a model of the experiment whose source is the run;
``runs:/<run id>/model`` resolves to the newest model named ``model`` logged from that run, so
``mlflow.pytorch.load_model(f"runs:/{run_id}/model")`` gives the segmentor. The model is pickled (MLflow's "pt2"
format would trace one input shape; the pickle runs at any size). Loading it unpickles, which can run any code the
store holds: load only from a store you trust, in an environment where ``segmodels`` imports. Its input is RGB
scaled to [0, 1] and normalised with ImageNet's mean and std (:data:`segmodels.data.loader.MEAN`, ``STD``), as the
MLmodel file's metadata says. Logging the same weights into a run again adds nothing. When the store cannot be
reached, nothing is logged and a one-line warning says so; training is never stopped by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from segmodels.study.runs import CONFIG, RUN_ID_FILE, RunFolder
from segmodels.tracking.logger import read_run_id
from segmodels.tracking.store import client, tracking_uri

__all__ = ["CHAMPION", "EXAMPLE_SIZE", "MODEL_NAME", "log_trained_model", "registered_name", "set_champion"]

MODEL_NAME = "model"  # the logged model's name: runs:/<run id>/model
CHAMPION = "champion"  # the alias of the study's best model
EXAMPLE_SIZE = (64, 128)  # [height, width] of the input example: small, and enough for every output stride
_DIGEST_TAG = "segbench.weights_sha256"  # the logged model's tag: the same weights are not logged twice


def registered_name(cfg: Any, model: str) -> str:
    """The registered model of run ``model`` of study ``cfg``: ``tracking.registered_name`` with ``{experiment}``
    (the study's name) and ``{model}`` (the run's) filled in; by default ``segbench-{experiment}``, one per study."""
    return cfg.tracking.registered_name.format(experiment=cfg.experiment, model=model)


def log_trained_model(
    target: str | Path,
    model: Any = None,
    cfg: Any = None,
    class_names: Sequence[str] | None = None,
    *,
    uri: str | None = None,
) -> dict[str, Any] | None:
    """Log the trained ``model`` as the MLflow model of a run; returns what was logged, or None.

    ``target`` is a run folder (its ``mlflow_run_id`` names the run) or a run id. ``model`` is the trained module
    (copied to the CPU in fp32; the caller's is left as it is); None loads the folder's ``checkpoint.pt``. ``cfg``
    is the run's effective StudyConfig: its ``tracking`` section, and the config file logged beside the model; None
    reads the one the folder's checkpoint records (``log_trained_model(RUN_DIR)`` logs a run's model later, e.g.
    once ``segmodels mlflow-sync`` has created a run that trained offline).
    ``class_names`` default to those the folder's checkpoint records, else ``class{i}``. ``uri`` defaults
    to ``tracking_uri(cfg.tracking.uri)``. Returns ``{"run_id", "model_id", "model_uri", "registered_name",
    "version"}`` (the last two None unless ``tracking.register``). Nothing is logged (None) with
    ``tracking.log_model`` false, for a folder that names no run, or, with a warning, when the store fails.
    Loading the model unpickles it: see the module docstring.
    """
    if cfg is None:
        cfg = _recorded_config(target)
    if not cfg.tracking.log_model:
        return None
    run_id = _run_id(target)
    if run_id is None:
        return None
    module = _loggable(model, target)
    num_classes = getattr(module.model, "num_classes", cfg.model.num_classes)
    names = list(class_names) if class_names is not None else _class_names(num_classes, target)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model of {num_classes} classes: {names}")
    uri = uri or tracking_uri(cfg.tracking.uri)
    try:
        return _log(module, run_id, cfg, names, uri)
    except Exception as exc:  # an unreachable or failing store: the job goes on without the MLflow model
        warnings.warn(f"MLflow model of run {run_id} not logged: {uri} failed ({type(exc).__name__}: "
                      f"{str(exc)[:300]})", RuntimeWarning, stacklevel=2)  # fmt: skip
        return None


def _run_id(target: str | Path) -> str | None:
    """The run id ``target`` names: a run folder's ``mlflow_run_id`` (None, with a warning, when it has none)."""
    if not (isinstance(target, Path) or os.sep in str(target) or Path(target).is_dir()):
        return str(target)
    if not Path(target).is_dir():
        raise FileNotFoundError(f"run folder not found: {target}")
    run_id = read_run_id(target)
    if run_id is None:
        warnings.warn(f"{RunFolder(Path(target)).run_id_file} is missing (the training never reached the MLflow "
                      "store); the MLflow model is not logged now: `segmodels mlflow-sync` logs it once the store is back",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
    return run_id


def _recorded_config(target: str | Path) -> Any:
    """The StudyConfig a run folder's checkpoint.pt was trained with."""
    from segmodels.engine.checkpoint import load_checkpoint
    from segmodels.study.config import StudyConfig, from_dict

    path = RunFolder(Path(target)).checkpoint
    return from_dict(StudyConfig, load_checkpoint(path)["config"], where=f"{path} (its training config)")


def _loggable(model: Any, target: str | Path) -> Any:
    """The eval-mode CPU fp32 module to log, returning the logits tensor: a copy of ``model``, or the checkpoint's."""
    import copy

    import torch

    from segmodels.engine.export import LogitsOnly

    if model is None:
        from segmodels.engine.checkpoint import load_model_from_checkpoint

        checkpoint = RunFolder(Path(target)).checkpoint
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no model given and no checkpoint at {checkpoint}")
        model = load_model_from_checkpoint(checkpoint)
    else:
        model = copy.deepcopy(model)
    model = model.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
    return LogitsOnly(model).eval()


def _class_names(num_classes: int, target: str | Path) -> list[str]:
    """The class names recorded in the run folder's checkpoint (the packed data's label set), else numbered."""
    import torch

    from segmodels.data.labelset import checkpoint_label_set, names_or_indices

    checkpoint = RunFolder(Path(target)).checkpoint if Path(target).is_dir() else None
    if checkpoint is not None and checkpoint.is_file():
        meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        if meta.get("num_classes") == num_classes and (labels := checkpoint_label_set(meta)) is not None:
            return list(labels.classes)
    return names_or_indices(None, num_classes)


def _digest(module: Any) -> str:
    """SHA-256 of the module's state dict (names and raw bytes): the same weights give the same digest."""
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _fluent(uri: str, experiment_id: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI and experiment set to ``uri`` and ``experiment_id`` for the block.

    ``mlflow.pytorch.log_model`` reads both from the process, and puts the logged model into the active experiment
    (Default unless set), not its run's, while ``runs:/<run id>/model`` looks in the run's experiment only. Both
    are restored after, so the rest of the process (another store in ``$MLFLOW_TRACKING_URI``) is unaffected.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils  # the URI set in the process; None when unset

    saved_uri = utils._tracking_uri
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID",
                                                       "MLFLOW_EXPERIMENT_NAME")}  # fmt: skip
    mlflow.set_tracking_uri(uri)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)  # a name would win over the id
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)  # None unsets $MLFLOW_TRACKING_URI too: put back what was there
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _log(module: Any, run_id: str, cfg: Any, names: list[str], uri: str) -> dict[str, Any]:
    import mlflow
    from mlflow.entities import LoggedModelStatus

    store = client(uri)
    run = store.get_run(run_id)
    tags = {k: run.data.tags[k] for k in ("model", "seed", "study") if k in run.data.tags}
    digest = _digest(module)
    newest = f"name = '{MODEL_NAME}' and source_run_id = '{run_id}'"  # what runs:/<run id>/model resolves to
    found = store.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=newest, max_results=1)
    with tempfile.TemporaryDirectory() as tmp, _fluent(uri, run.info.experiment_id):
        if found and found[0].tags.get(_DIGEST_TAG) == digest and found[0].status == LoggedModelStatus.READY:
            model_id = found[0].model_id  # these weights are the run's model already
        else:
            model_id = _log_model(module, run_id, cfg, names, Path(tmp), {**tags, _DIGEST_TAG: digest}).model_id
        name = version = None
        if cfg.tracking.register:
            name = registered_name(cfg, tags.get("model") or module.model.name)
            source = f"models:/{model_id}"
            held = [v for v in store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                    if v.source == source]  # fmt: skip
            version = held[0].version if held else mlflow.register_model(source, name, tags=tags).version
    return {"run_id": run_id, "model_id": model_id, "model_uri": f"runs:/{run_id}/{MODEL_NAME}",
            "registered_name": name, "version": None if version is None else str(version)}  # fmt: skip


def _log_model(module: Any, run_id: str, cfg: Any, names: list[str], tmp: Path, tags: dict[str, str]) -> Any:
    """``mlflow.pytorch.log_model`` of ``module`` into run ``run_id`` (inside :func:`_fluent`)."""
    import mlflow
    import numpy as np
    import torch
    import torchvision
    import yaml
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from segmodels.data.loader import MEAN, STD
    from segmodels.study.schema import config_to_dict

    files = [tmp / CONFIG, tmp / "class_names.json"]
    files[0].write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    files[1].write_text(json.dumps(names, indent=1) + "\n")
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(names), -1, -1))]))  # fmt: skip
    metadata = {"input": "float32 images (N, 3, H, W): RGB in [0, 1], minus mean, over std", "mean": list(MEAN),
                "std": list(STD), "output": "float32 logits (N, num_classes, H, W) at the input size",
                "num_classes": len(names), **tags}  # fmt: skip
    return mlflow.pytorch.log_model(
        module, name=MODEL_NAME, run_id=run_id, signature=signature, metadata=metadata, tags=tags,
        input_example=np.zeros((1, 3, *EXAMPLE_SIZE), np.float32), extra_files=[str(f) for f in files],
        pip_requirements=[f"{m.__name__}=={m.__version__.split('+')[0]}" for m in (torch, torchvision)],
        serialization_format="pickle", step=cfg.train.iterations,  # the run's final training metrics join it
    )  # fmt: skip


def set_champion(cfg: Any, results: str | Path, model: str, *, uri: str | None = None,
                 alias: str = CHAMPION) -> dict[str, Any] | None:  # fmt: skip
    """Give ``alias`` to the registered version of run ``model``'s best seed (by its metrics.json mIoU).

    The summary job calls it with the study's best model. Registered models of the study's other runs lose the
    alias (when ``tracking.registered_name`` gives each its own). Returns ``{"name", "version", "alias",
    "model_uri", "model", "run_id", "miou"}``; None, with a warning, when no seed of ``model`` has a score, a run
    id and a registered version, or the store fails.
    """
    from segmodels.study.matrix import run_names
    from segmodels.study.runs import run_dir

    scored = []
    for seed in cfg.seeds:
        folder = RunFolder(run_dir(results, cfg.experiment, model, seed))
        miou, run_id = (folder.read_metrics() or {}).get("miou"), folder.read_run_id()
        if miou is not None and run_id is not None:
            scored.append((miou, run_id))
    name, uri = registered_name(cfg, model), uri or tracking_uri(cfg.tracking.uri)
    if not scored:
        warnings.warn(f"no seed of {model} has metrics.json and {RUN_ID_FILE}; no '{alias}' alias set",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return None
    miou, run_id = max(scored)
    try:
        store = client(uri)
        versions = store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not versions:
            warnings.warn(f"registered model '{name}' has no version of run {run_id} ({model}); no '{alias}' alias "
                          "set (tracking.register: true registers the trained models)",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            return None
        version = str(max(int(v.version) for v in versions))
        store.set_registered_model_alias(name, alias, version)
        for other in {registered_name(cfg, m) for m in run_names(cfg)} - {name}:
            with contextlib.suppress(Exception):  # a model never registered, or without the alias
                store.delete_registered_model_alias(other, alias)
    except Exception as exc:
        warnings.warn(f"alias '{alias}' of {name} not set: {uri} failed ({type(exc).__name__}: {str(exc)[:300]})",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return None
    return {"name": name, "version": version, "alias": alias, "model_uri": f"models:/{name}@{alias}", "model": model,
            "run_id": run_id, "miou": miou}  # fmt: skip
