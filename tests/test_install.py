"""The package as a user installs it: a wheel of the checkout, installed (not editable) outside the checkout, runs
``segmodels --help`` and typesets a report with nothing but its own files (the report template is package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from. A temporary copy: stale build/ or *.egg-info folders of the checkout stay out of it.
SOURCES = ("pyproject.toml", "README.md", "segmodels")

# Runs `python -m segmodels ARGS` with only the installed copy in INSTALLED importable: the editable install's
# finder (a sys.meta_path entry that maps segmodels to the checkout) is dropped first, and every segmodels module
# loaded must come from INSTALLED (exit status 3 names the ones that did not).
_LAUNCH = textwrap.dedent(
    """
    import runpy, sys
    from pathlib import Path

    home = Path(sys.argv[1]).resolve()
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.argv = ["segmodels", *sys.argv[2:]]
    try:
        runpy.run_module("segmodels", run_name="__main__", alter_sys=True)
    finally:
        stray = sorted(name for name, module in sys.modules.items() if name.partition(".")[0] == "segmodels"
                       and not Path(getattr(module, "__file__", None) or home).resolve().is_relative_to(home))
        if stray:
            print(f"not from the installed copy {home}: {', '.join(stray)}", file=sys.stderr)
            sys.exit(3)
    """
)


def _pip(*args: str | Path, cwd: Path) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    result = subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"pip {' '.join(map(str, args))}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding segmodels installed from a freshly built wheel (``pip install --target``)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp / "dist", src, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("segmodels-*.whl")
    _pip("install", "--no-deps", "--no-index", "-q", "--target", tmp / "site", wheel, cwd=tmp)
    return tmp / "site"


def _env(installed: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(installed), COLUMNS="120", MPLBACKEND="Agg")


def _segmodels(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LAUNCH, str(installed), *args], capture_output=True, text=True,
                          cwd=cwd, env=_env(installed), timeout=300)  # fmt: skip


def test_installed_package_has_its_data_and_no_checkout_files(installed):
    assert (installed / "segmodels" / "report" / "template" / "report.typ").is_file()
    assert not (installed / "segmodels" / "tests").exists() and not (installed / "tests").exists()


def test_installed_help_lists_the_same_commands(installed, tmp_path):
    checkout = subprocess.run([sys.executable, "-m", "segmodels", "--help"], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, COLUMNS="120"), timeout=120)  # fmt: skip
    assert checkout.returncode == 0, checkout.stderr
    result = _segmodels(installed, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == checkout.stdout
    script = subprocess.run([str(installed / "bin" / "segmodels"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=_env(installed), timeout=120)  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert script.stdout == checkout.stdout


def test_installed_report_writes_a_pdf(installed, tmp_path):
    """The smallest study a report accepts: a config and no results yet (every model listed as missing)."""
    (tmp_path / "study.yaml").write_text("experiment: installed\nmodels: [resnet18-ppm]\nseeds: [0]\n")
    out = tmp_path / "reports" / "report.pdf"
    result = _segmodels(installed, "report", "--config", "study.yaml", "--results", "results", "--figures",
                        "figures", "--out", str(out.relative_to(tmp_path)), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote reports/report.pdf" in result.stdout
    assert out.read_bytes()[:5] == b"%PDF-"
