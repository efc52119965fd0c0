"""Shared fixtures: a tiny packed dataset written with numpy, a throw-away MLflow store, small study configs.

The dataset is built here, not by the synthetic-scene generator, so training tests depend on the
packed layout only (``{split}/images.npy``, ``{split}/labels.npy``, ``manifest.json``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from segmodels.data.labelset import cityscapes_label_set
from segmodels.study.config import StudyConfig, config_to_dict, from_dict

# Three classes with distinct colours (train ids of Cityscapes: road, sky, car), noise on top.
_CLASSES = {0: (128, 64, 128), 10: (70, 130, 180), 13: (200, 30, 30)}


def pytest_report_header(config: pytest.Config) -> str:
    """The free disk under the test folders, printed first: a full disk fails the study tests at torch.save."""
    import tempfile

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    return f"free disk under {tempfile.gettempdir()}: {free_gb:.1f} GB (the slow study tests need about 1 GB at a time)"


def pytest_configure(config: pytest.Config) -> None:
    """In one of several test processes (``pytest -n N``), torch and the processes the tests start use this
    process's share of the cores: N processes each spinning OpenMP threads on every core run slower than one."""
    import os

    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files holding slow tests first, each file whole and in its order: with several test processes (``make
    test``), the minutes-long studies start at once and the many short tests fill the other processes around them,
    instead of one study starting last while the other processes idle."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)


def make_packed_dataset(
    root: str | Path, *, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0
) -> Path:
    """Write a packed dataset into ``root`` (which becomes ``data/packed/{name}``-like) and return it.

    Each image: sky above a random horizon, road below, one car rectangle, pixel noise; the labels
    hold those train ids, with a 2-pixel ignore (255) frame as in Cityscapes' unlabelled borders.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images = np.zeros((n, h, w, 3), np.uint8)
        labels = np.zeros((n, h, w), np.uint8)
        for i in range(n):
            horizon = int(rng.integers(h // 3, 2 * h // 3))
            label = np.zeros((h, w), np.uint8)
            label[:horizon] = 10
            ch, cw = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 5, w // 2))
            y0 = int(rng.integers(horizon - ch // 2, h - ch))
            x0 = int(rng.integers(0, w - cw))
            label[y0 : y0 + ch, x0 : x0 + cw] = 13
            colours = np.array([_CLASSES.get(c, (0, 0, 0)) for c in range(256)], np.int16)
            image = colours[label] + rng.integers(-20, 21, (h, w, 3))
            images[i] = np.clip(image, 0, 255).astype(np.uint8)
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255
            labels[i] = label
        (root / split).mkdir(parents=True, exist_ok=True)
        np.save(root / split / "images.npy", images)
        np.save(root / split / "labels.npy", labels)
        splits[split] = {"count": n, "names": [f"{split}_{i:03d}" for i in range(n)]}
    manifest = {
        "format": 1,
        "dataset": root.name,
        "source": "test-fixture",
        "size": [h, w],
        **cityscapes_label_set().to_manifest(),  # the ids above are Cityscapes' train ids
        "splits": splits,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def random_checkpoint(path: str | Path, *, num_classes: int, iteration: int = 1):
    """A resnet18-fcn of seeded random weights saved as a trained checkpoint at ``path``, with BatchNorm statistics
    spread out so that its predictions vary over an image; returns the model (eval mode)."""
    import torch

    from segmodels.engine.checkpoint import save_atomic
    from segmodels.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", "fcn", num_classes=num_classes, pretrained=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_atomic({"format": 1, "model": model.state_dict(), "backbone": "resnet18", "head": "fcn",
                 "num_classes": num_classes, "output_stride": 8, "aux": True,
                 "config": config_to_dict(StudyConfig()), "iteration": iteration}, Path(path))  # fmt: skip
    return model.eval()


def small_config(**sections: dict[str, Any]) -> StudyConfig:
    """A StudyConfig sized for CPU tests; ``sections`` update it, e.g. ``train={"iterations": 5}``."""
    data: dict[str, Any] = {
        "experiment": "test",
        "models": ["mobilenetv2-fcn"],
        "data": {"dataset": "tiny", "size": [64, 64]},
        "model": {"pretrained": None, "output_stride": 8, "aux": True},
        "train": {
            "iterations": 6, "batch_size": 2, "crop_size": [64, 64], "scale_range": [1.0, 1.0], "lr": 0.01,
            "log_every": 2, "ckpt_every": 3, "device": "cpu", "amp": False, "channels_last": False,
        },
        "evaluate": {"batch_size": 2, "samples": [0, 1]},  # the packed_data fixture has 2 validation images
        "tracking": {"experiment": "segbench-test", "flush_seconds": 0.0},
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(StudyConfig, data, where="small_config")


def write_config(path: str | Path, cfg: StudyConfig) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def packed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packed dataset folder (4 train, 2 val images of 64×64); treat it as read-only."""
    return make_packed_dataset(tmp_path_factory.mktemp("packed") / "tiny")


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with the schema in place; creating one costs seconds, copying it nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_mlflow_db: Path) -> str:
    """An empty SQLite tracking store of this test (schema only), also exported as MLFLOW_TRACKING_URI."""
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(_empty_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def unreachable_mlflow(monkeypatch: pytest.MonkeyPatch) -> str:
    """MLFLOW_TRACKING_URI pointing at a closed local port, with no retries and short timeouts."""
    uri = "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return uri


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread for a module: tiny inputs gain nothing from intra-op threads, and on a
    busy machine OpenMP's spinning threads slow such tests down tenfold. Restores the setting after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
