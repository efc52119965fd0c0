"""A GPU node without internet, as a researcher has one: a Python that brings its own torch and torchvision, and a
wheelhouse made elsewhere (`make wheelhouse NODE=1`, tools/wheelhouse.py).

The node's Python is a venv of this test environment's base interpreter whose site-packages holds one ``.pth``
file naming a folder of symlinks to torch, torchvision and what they require (their requirement closure in this
test environment, read from its installed metadata): the node imports and pip sees exactly those, nothing is copied
or reinstalled. Into a copy of the checkout, ``make setup WHEELHOUSE=... SYSTEM_TORCH=1`` installs from the
wheelhouse with the index blocked (``PIP_NO_INDEX=1``; the Makefile also drops pip's configured find-links), and the
jobs run: ``segmodels --help``, a 3-iteration training that logs to MLflow's SQLite store through mlflow-skinny, its
evaluation, and ``benchmarks/gpu_check.py --plan``. Making the wheelhouse needs the package index (skipped without
one); pip's cache makes the downloads of a second run local.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a clone holds that the node needs: the Makefile and its tool, the package, the workflow, configs, benchmarks.
CHECKOUT = ("Makefile", "pyproject.toml", "README.md", "Snakefile", "segmodels", "tools", "workflow", "config",
            "benchmarks")  # fmt: skip
CONFIG = "config/test.yaml"
RUN = "results/test/mobilenetv2-fcn/seed0"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    return dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", COLUMNS="120", MPLBACKEND="Agg", **extra)


def _run(args: list[str | Path], cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{' '.join(result.args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_checkout(dest: Path) -> Path:
    dest.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in CHECKOUT:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _torch_closure() -> dict[str, metadata.Distribution]:
    """torch, torchvision and every distribution they require (extras followed), as installed here."""
    found: dict[str, metadata.Distribution] = {}
    todo, done = [("torch", ()), ("torchvision", ())], set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in done:
            continue
        done.add((canonicalize_name(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[canonicalize_name(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    return found


def _node_python(dest: Path) -> Path:
    """A Python whose own packages are this environment's torch and torchvision with their requirements."""
    farm = dest / "torch-site"
    farm.mkdir(parents=True)
    for dist in _torch_closure().values():
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (farm / top).exists():
                (farm / top).symlink_to(base / top)
    _ok(_run([sys.executable, "-m", "venv", dest / "python"], cwd=dest))
    python = dest / "python" / "bin" / "python"
    site = Path(_ok(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=dest)).strip())
    (site / "node-torch.pth").write_text(f"{farm}\n")
    return python


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    tmp = tmp_path_factory.mktemp("wheelhouse")
    probe = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                  tmp / "probe", "tqdm"], cwd=tmp, timeout=120)  # fmt: skip
    if probe.returncode:
        pytest.skip(f"making a wheelhouse needs the package index: {probe.stderr.strip().splitlines()[-1:]}")
    clone = _copy_checkout(tmp / "clone")
    out = _ok(_run(["make", "wheelhouse", "NODE=1", f"PYTHON={sys.executable}"], cwd=clone, timeout=900))
    print(out[-600:])
    return clone / "wheelhouse"


@pytest.fixture(scope="module")
def node(wheelhouse, tmp_path_factory) -> tuple[Path, Path]:
    """(the checkout copy, its venv) set up from the wheelhouse on the node's torch, with no index."""
    tmp = tmp_path_factory.mktemp("node")
    python = _node_python(tmp / "base")
    clone = _copy_checkout(tmp / "clone")
    _ok(_run(["make", "setup", f"WHEELHOUSE={wheelhouse}", "SYSTEM_TORCH=1", f"PYTHON={python}"], cwd=clone,
             PIP_NO_INDEX="1"))  # fmt: skip
    return clone, clone / ".venv"


def test_node_wheelhouse_leaves_out_torch_and_the_mlflow_server(wheelhouse):
    manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
    assert manifest["complete"] and manifest["set"] == "node" and manifest["make"] == "make wheelhouse NODE=1"
    names = {canonicalize_name(path.name.split("-")[0]) for path in wheelhouse.glob("*.whl")}
    assert set(manifest["wheels"]) == {path.name for path in wheelhouse.glob("*.whl")}
    assert {"mlflow-skinny", "sqlalchemy", "alembic", "snakemake", "timm", "setuptools"} <= names
    assert {"imagecorruptions", "scikit-image", "scipy"} <= names  # the robustness section's jobs run on the node
    left_out = {"torch", "torchvision", "triton", "mlflow", "flask", "gunicorn", "graphene", "pyarrow"}
    assert not names & left_out
    assert not any(name.startswith("nvidia-cu") or name.startswith("nvidia-nccl") for name in names)


def test_setup_uses_the_nodes_torch(wheelhouse, node):
    clone, venv = node
    site = Path(_ok(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=clone)).strip())  # fmt: skip
    assert not list(site.glob("torch-*.dist-info")) and not list(site.glob("torchvision-*.dist-info"))
    assert list(site.glob("mlflow_skinny-*.dist-info")) and not list(site.glob("mlflow-*.dist-info"))
    check = "import torch, mlflow; print(torch.__file__); import importlib.metadata as m; m.version('mlflow')"
    result = _run([venv / "bin" / "python", "-c", check], cwd=clone)
    assert "PackageNotFoundError" in result.stderr  # the full mlflow (its UI server) is not installed
    assert "torch-site" in result.stdout
    # A second `make setup` with the same variables does nothing.
    again = _ok(_run(["make", "setup", f"WHEELHOUSE={wheelhouse}", "SYSTEM_TORCH=1"], cwd=clone, PIP_NO_INDEX="1"))
    assert "Nothing to be done" in again or "is up to date" in again


def test_node_runs_the_jobs(node):
    clone, venv = node
    segmodels = venv / "bin" / "segmodels"
    assert "train" in _ok(_run([segmodels, "--help"], cwd=clone))
    _ok(_run([segmodels, "synth", "--config", CONFIG], cwd=clone))
    _ok(_run([segmodels, "prepare", "--config", CONFIG], cwd=clone))
    _ok(_run([segmodels, "train", "--config", CONFIG, "--model", "mobilenetv2-fcn", "--out", RUN,
              "--set", "train.iterations=3", "--set", "train.ckpt_every=3"], cwd=clone))  # fmt: skip
    _ok(_run([segmodels, "evaluate", "--config", CONFIG, "--run", RUN], cwd=clone))
    with sqlite3.connect(clone / "results" / "mlflow.db") as db:
        runs = dict(db.execute("select name, status from runs"))
        keys = {key for (key,) in db.execute("select distinct key from metrics")}
    assert runs.get("mobilenetv2-fcn-seed0") == "FINISHED", runs
    assert {"train/loss", "miou"} <= keys, keys
    plan = _ok(_run([venv / "bin" / "python", "benchmarks/gpu_check.py", "--plan"], cwd=clone))
    assert "snakemake" in plan


def _make_setup(clone: Path, venv: Path, *variables: str) -> subprocess.CompletedProcess:
    return _run(["make", "setup", f"VENV={venv}", *variables], cwd=clone, PIP_NO_INDEX="1")


def test_bad_input_is_one_line_before_any_work(wheelhouse, node, tmp_path):
    clone, _ = node
    # SYSTEM_TORCH=1 with a base interpreter without torch.
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "bare"], cwd=tmp_path))
    result = _make_setup(clone, tmp_path / "v1", f"WHEELHOUSE={wheelhouse}", "SYSTEM_TORCH=1",
                         f"PYTHON={tmp_path / 'bare' / 'bin' / 'python'}")  # fmt: skip
    assert result.returncode != 0 and not (tmp_path / "v1").exists()
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert "has no torch" in line and "PYTHON=" in line
    # A wheelhouse without one of the wheels it needs.
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in wheelhouse.iterdir():
        if not path.name.lower().startswith("sqlalchemy-"):
            (partial / path.name).symlink_to(path)
    python = clone / ".venv" / "bin" / "python"  # sees the node's torch
    result = _make_setup(clone, tmp_path / "v2", f"WHEELHOUSE={partial}", "SYSTEM_TORCH=1", f"PYTHON={python}")
    assert result.returncode != 0 and not (tmp_path / "v2").exists()
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert "no wheel of sqlalchemy" in line and "make wheelhouse NODE=1" in line
    # A node set without SYSTEM_TORCH=1.
    result = _make_setup(clone, tmp_path / "v3", f"WHEELHOUSE={wheelhouse}", f"PYTHON={python}")
    assert result.returncode != 0 and "SYSTEM_TORCH=1" in result.stderr and not (tmp_path / "v3").exists()
