#!/usr/bin/env python3
"""Wheelhouses: every wheel the project needs in one folder, for a machine without a package index (a GPU node).

    python tools/wheelhouse.py build --out DIR [--node [--no-report]] [--python-version 3.12]   # make wheelhouse
    python tools/wheelhouse.py check --venv VENV [--wheelhouse DIR] [--system-torch]            # make setup, first
    python tools/wheelhouse.py link-torch VENV           # make setup SYSTEM_TORCH=1: the base's torch, pinned
    python tools/wheelhouse.py requirements [--wheelhouse DIR]        # what make setup installs first
    python tools/wheelhouse.py verify VENV [--system-torch]            # make setup, last
    python tools/wheelhouse.py can-report                                # make run: the report stack is there

The sets come from pyproject.toml, read when the wheelhouse is made and again when it is installed (so a clone whose
dependencies changed since is told which wheel is missing):

- full (`make wheelhouse`): what `make setup` installs, `.[dev]`, plus the `gpu` extra, torch and torchvision included.
- node (`NODE=1`): what runs the study's jobs and its Snakemake workflow on a GPU node that brings its own torch and
  torchvision: the dependencies without torch and torchvision (nor what only they need: CUDA libraries, triton,
  sympy ...); MLflow's client `mlflow-skinny` with SQLAlchemy and Alembic (the `sqlite:///` store) in place of
  `mlflow`, whose UI server stays on the machine that shows it; the `gpu` and `robustness` extras; pytest (`make gpu-check` runs the
  cuda-marked tests). `--no-report` (`REPORT=0`) also leaves out Typst, matplotlib, seaborn and Pygments, for a
  node whose figures and report are made elsewhere.

Standard library and pip only (pip's own copy of `packaging`): the base interpreter runs it before the venv exists.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


def _pip_wheel_on_path() -> None:
    """A base interpreter without pip (and without packaging) still has the pip wheel that venv installs from."""
    try:
        import pip  # noqa: F401
    except ImportError:
        import ensurepip

        sys.path += [str(p) for p in sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))[-1:]]


_pip_wheel_on_path()
try:  # the copy that the pip installing the wheels uses
    from pip._vendor.packaging import tags
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version
except ImportError:  # pragma: no cover - an interpreter without pip
    from packaging import tags
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "wheelhouse.json"
PROVIDED = ("torch", "torchvision")  # what SYSTEM_TORCH=1 takes from the base interpreter
NODE_DROP = {"mlflow"}  # replaced by NODE_ADD
NODE_ADD = ("sqlalchemy>=1.4,<3", "alembic>=1.0,!=1.10.0,<2")  # mlflow's own bounds; mlflow-skinny gets mlflow's
ROBUSTNESS_EXTRA = "robustness"  # the corruptions of config/config.yaml's robustness section: its jobs run on the node
NODE_DEV = ("pytest",)  # from the dev extra: make gpu-check runs `pytest -m cuda`
REPORT_STACK = {"typst", "matplotlib", "seaborn", "pygments"}
GPU_EXTRA = "gpu"


class Refusal(Exception):
    """A one-line answer to bad input; printed without a traceback."""


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The sets


def pyproject(root: Path = ROOT) -> dict:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())


def set_requirements(kind: str, report: bool = True, root: Path = ROOT) -> tuple[list[str], list[str], list[str]]:
    """(requirements to install, requirements the node provides, build requirements) of a set, from pyproject."""
    project = pyproject(root)
    deps = list(project["project"]["dependencies"])
    extras = project["project"].get("optional-dependencies", {})
    build = list(project.get("build-system", {}).get("requires", []))
    if kind == "full":
        return deps + extras.get("dev", []) + extras.get(GPU_EXTRA, []), [], build
    install, provided = [], []
    for line in deps:
        name = canonicalize_name(Requirement(line).name)
        if name in PROVIDED:
            provided.append(line)
        elif name in NODE_DROP:
            install.append("mlflow-skinny" + line[len(Requirement(line).name) :])
            install.extend(NODE_ADD)
        elif report or name not in REPORT_STACK:
            install.append(line)
    install += extras.get(GPU_EXTRA, []) + extras.get(ROBUSTNESS_EXTRA, [])
    install += [line for line in extras.get("dev", []) if canonicalize_name(Requirement(line).name) in NODE_DEV]
    return install, provided, build


def bare(line: str) -> str:
    """A requirement without its comment."""
    return line.split("#", 1)[0].strip()


# ---------------------------------------------------------------------------------------------------------------
# Targets (the interpreter the wheels are for) and distributions (a wheel, or an item of pip's resolution report)


@dataclass
class Target:
    version: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def native(self) -> bool:
        return self.version == sys.version_info[:2]

    def environment(self) -> dict[str, str]:
        env = dict(default_environment())
        if not self.native:
            env.update(python_version=self.label, python_full_version=f"{self.label}.0",
                       implementation_version=f"{self.label}.0")  # fmt: skip
        return env

    def tags(self) -> set:
        if self.native:
            return set(tags.sys_tags())
        return set(tags.cpython_tags(self.version)) | set(tags.compatible_tags(self.version))

    def pip_options(self) -> list[str]:
        return [] if self.native else ["--python-version", self.label, "--only-binary=:all:"]


@dataclass
class Dist:
    name: str  # as published
    version: Version
    requires: list[str]
    requires_python: str | None = None
    file: Path | None = None
    wheel_tags: frozenset = field(default_factory=frozenset)
    url: str = ""

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    def fits(self, target: Target, supported: set) -> bool:
        if self.requires_python and not SpecifierSet(self.requires_python).contains(
            target.environment()["python_full_version"], prereleases=True
        ):
            return False
        return not self.wheel_tags or bool(self.wheel_tags & supported)


def read_wheel(path: Path) -> Dist:
    name, version, _, wheel_tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        headers = email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"), headersonly=True)
    return Dist(headers.get("Name", str(name)), version, headers.get_all("Requires-Dist") or [],
                headers.get("Requires-Python"), path, frozenset(wheel_tags))  # fmt: skip


def wheels(folder: Path) -> dict[str, list[Dist]]:
    found: dict[str, list[Dist]] = {}
    for path in sorted(folder.glob("*.whl")):
        dist = read_wheel(path)
        found.setdefault(dist.key, []).append(dist)
    return found


@dataclass
class Missing:
    requirement: str
    needed_by: str
    why: str = ""

    @property
    def name(self) -> str:
        return canonicalize_name(Requirement(self.requirement).name)


def closure(roots: list[str], index: dict[str, list[Dist]], target: Target, provided: dict[str, Version] | None = None,
            stop: set[str] = frozenset()) -> tuple[dict[str, Dist], list[Missing]]:  # fmt: skip
    """The distributions that `roots` need from `index` (highest fitting version of each, as pip picks), walking
    each one's Requires-Dist under the target's markers. `provided` (name → version) are installed already and not
    walked into; names in `stop` are skipped with everything only they need."""
    env, supported = target.environment(), target.tags()
    chosen: dict[str, Dist] = {}
    expanded: set[tuple[str, frozenset]] = set()
    missing: list[Missing] = []
    queue = [(Requirement(bare(line)), "pyproject.toml") for line in roots if bare(line)]
    queue = [(req, by) for req, by in queue if not req.marker or req.marker.evaluate(dict(env, extra=""))]
    while queue:
        req, by = queue.pop(0)
        key = canonicalize_name(req.name)
        if key in stop:
            continue
        if provided and key in provided:
            if not req.specifier.contains(provided[key], prereleases=True):
                missing.append(Missing(str(req), by, f"the base interpreter has {req.name} {provided[key]}"))
            continue
        fitting = [d for d in index.get(key, []) if d.fits(target, supported)
                   and req.specifier.contains(d.version, prereleases=True)]  # fmt: skip
        if not fitting:
            others = sorted({str(d.version) for d in index.get(key, [])})
            missing.append(Missing(str(req), by, f"only {', '.join(others)} there" if others else ""))
            continue
        dist = chosen[key] if key in chosen and chosen[key] in fitting else max(fitting, key=lambda d: d.version)
        chosen[key] = dist
        extras = frozenset(canonicalize_name(e) for e in req.extras)
        if (key, extras) in expanded:
            continue
        expanded.add((key, extras))
        for line in dist.requires:
            child = Requirement(line)
            if child.marker and not any(child.marker.evaluate(dict(env, extra=e)) for e in ("", *sorted(extras))):
                continue
            queue.append((child, f"{dist.name} {dist.version}"))
    return chosen, missing


# ---------------------------------------------------------------------------------------------------------------
# make wheelhouse


def pip(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, *(["-q"] if quiet else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        noise = re.compile(r"^WARNING: Location .* is ignored")
        tail = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if not noise.match(line))
        raise Refusal(f"pip {' '.join(args[:2])} failed:\n{tail[-4000:]}")
    return result


def resolve(requirements: list[str], target: Target, find_links: Path | None) -> dict[str, list[Dist]]:
    """pip's own resolution of `requirements` for the target, nothing installed: {name: [Dist(url=...)]}."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "requirements.txt").write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        options = ["--target", str(Path(tmp) / "none")] if not target.native else []
        options += ["--find-links", str(find_links)] if find_links else []
        pip("install", "--dry-run", "--ignore-installed", "--prefer-binary", "--report", str(report),
            "-r", str(Path(tmp) / "requirements.txt"), *target.pip_options(), *options)  # fmt: skip
        items = json.loads(report.read_text())["install"]
    found = {}
    for item in items:
        meta = item["metadata"]
        found[canonicalize_name(meta["name"])] = [Dist(meta["name"], Version(meta["version"]),
                                                      meta.get("requires_dist") or [], meta.get("requires_python"),
                                                      url=item["download_info"]["url"])]  # fmt: skip
    return found


def make_line(kind: str, report: bool, target: Target, out: Path) -> str:
    words = ["make", "wheelhouse"]
    if kind == "node":
        words.append("NODE=1")
    if not report:
        words.append("REPORT=0")
    if not target.native:
        words.append(f"PY={target.label}")
    rel = os.path.relpath(out, ROOT) if out.is_relative_to(ROOT) else str(out)
    if rel != "wheelhouse":
        words.append(f"WHEELHOUSE={shlex.quote(rel)}")
    return " ".join(words)


def build(out: Path, kind: str, report: bool, target: Target) -> None:
    out = out.resolve()
    install, provided, build_reqs = set_requirements(kind, report)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise Refusal(f"{out} holds files but no {MANIFEST}: name a new or empty folder (WHEELHOUSE=...)")
    out.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in out.glob("*.whl")}
    line = make_line(kind, report, target, out)
    # Written first, so a build that stops halfway leaves a folder that the next `make wheelhouse` takes up again.
    (out / MANIFEST).write_text(json.dumps({"complete": False, "make": line}) + "\n")
    stop = {canonicalize_name(Requirement(req).name) for req in provided}
    say(f"resolving the {kind} set for Python {target.label} on this platform ({len(install)} requirements"
        + (f"; {', '.join(sorted(stop))} left to the node" if stop else "") + ") ...")  # fmt: skip
    if not target.native:
        # pip cannot build an sdist for another Python. Resolve for this one first, build its sdists here, and
        # keep those that make pure-Python wheels, which any Python 3 installs.
        native = resolve(install + provided + build_reqs, Target(sys.version_info[:2]), None)
        sdists = [d for (d,) in native.values() if not d.url.endswith(".whl") and d.key not in stop]
        build_sdists(sdists, out, pure_only=True, target=target)
    resolved = resolve(install + provided + build_reqs, target, out if not target.native else None)
    needed, missing = closure(install + build_reqs, resolved, target, stop=stop)
    if missing:  # pip's resolution applies this interpreter's markers; these are the target's
        say(f"  not in pip's resolution for Python {target.label}: {', '.join(m.requirement for m in missing)}")
    here = [d for d in needed.values() if d.url.startswith(out.as_uri() + "/")]  # built above
    binaries = [d for d in needed.values() if d.url.endswith(".whl") and d not in here]
    sdists = [d for d in needed.values() if not d.url.endswith(".whl")]
    say(f"downloading {len(binaries)} wheels into {out} ...")
    if binaries:
        pip("download", "--no-deps", "--only-binary=:all:", "-d", str(out), *target.pip_options(),
            *[f"{d.name}=={d.version}" for d in binaries])  # fmt: skip
    if target.native and sdists:
        build_sdists(sdists, out, pure_only=False, target=target)
    # Close the set over the wheels themselves, under the target's markers: fetch what pip's resolution left out.
    for _ in range(5):
        chosen, missing = closure(install + build_reqs, wheels(out), target, stop=stop)
        if not missing:
            break
        for gap in missing:
            say(f"  fetching {gap.requirement} (needed by {gap.needed_by})")
            pip("download", "--no-deps", "--only-binary=:all:", "-d", str(out), *target.pip_options(), gap.requirement)
    else:
        raise Refusal(f"the wheelhouse cannot be completed: {'; '.join(m.requirement for m in missing)}")
    kept = {d.file.name for d in chosen.values()}
    for path in out.glob("*.whl"):
        if path.name not in kept:
            path.unlink()
    sizes = {d.file.name: d.file.stat().st_size for d in chosen.values()}
    manifest = {"complete": True, "set": kind, "report": report, "python": target.label,
                "platform": sysconfig.get_platform(), "make": line, "provided": provided,
                "wheels": dict(sorted(sizes.items()))}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    new = len(kept - present)
    total = sum(sizes.values())
    largest = sorted(chosen.values(), key=lambda d: -sizes[d.file.name])[:8]
    say(f"{out}: {len(sizes)} wheels ({new} new), {total / 1e6:.1f} MB, for Python {target.label} on "
        f"{sysconfig.get_platform()}; largest: "
        + ", ".join(f"{d.name} {sizes[d.file.name] / 1e6:.1f}" for d in largest) + " MB")  # fmt: skip
    if kind == "node":
        left = "torch, torchvision (the node's)" + ("" if report else ", the report stack (typst, matplotlib, seaborn)")
        say(f"left out: {left}; mlflow's UI server (mlflow-skinny logs to sqlite:/// through SQLAlchemy and Alembic)")


def build_sdists(sdists: list[Dist], out: Path, pure_only: bool, target: Target) -> None:
    for dist in sdists:
        say(f"  building {dist.name} {dist.version} from its source distribution")
        with tempfile.TemporaryDirectory() as tmp:
            pip("wheel", "--no-deps", "-w", tmp, f"{dist.name}=={dist.version}")
            (built,) = Path(tmp).glob("*.whl")
            if pure_only and not any(t.abi == "none" and t.platform == "any" for t in parse_wheel_filename(built.name)[3]):
                raise Refusal(f"{dist.name} {dist.version} has no wheel for Python {target.label} and its source "
                              f"builds a wheel for this Python only ({built.name}): make the wheelhouse with Python "
                              f"{target.label} itself, make wheelhouse PYTHON=python{target.label}")  # fmt: skip
            shutil.move(built, out / built.name)


# ---------------------------------------------------------------------------------------------------------------
# make setup WHEELHOUSE=... [SYSTEM_TORCH=1]: checks before any work, then what to install


def base_torch() -> dict[str, Version]:
    """torch and torchvision of this interpreter, checked against pyproject's bounds: {name: version}."""
    from importlib import metadata

    _, provided, _ = set_requirements("node")
    found = {}
    for line in provided:
        req = Requirement(line)
        try:
            version = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            raise Refusal(f"SYSTEM_TORCH=1: {sys.executable} has no {req.name}; name the interpreter that has the "
                          f"node's torch and torchvision: make setup PYTHON=/path/to/python SYSTEM_TORCH=1") from None
        if not req.specifier.contains(version, prereleases=True):
            raise Refusal(f"SYSTEM_TORCH=1: {req.name} {version} of {sys.executable} is older than the project's "
                          f"{req} (pyproject.toml); load a newer one or leave out SYSTEM_TORCH=1")  # fmt: skip
        found[canonicalize_name(req.name)] = version
    return found


def read_manifest(folder: Path) -> dict:
    if not (folder / MANIFEST).is_file():
        what = "no such folder" if not folder.is_dir() else f"no {MANIFEST} in it"
        raise Refusal(f"WHEELHOUSE={folder}: not a wheelhouse ({what}); make one where the index is reachable: "
                      f"make wheelhouse [NODE=1], and copy the folder here")  # fmt: skip
    manifest = json.loads((folder / MANIFEST).read_text())
    if not manifest.get("complete"):
        raise Refusal(f"WHEELHOUSE={folder}: its `{manifest.get('make', 'make wheelhouse')}` did not finish; run it again")
    return manifest


def check(venv: Path, wheelhouse: Path | None, system_torch: bool) -> None:
    cfg = venv / "pyvenv.cfg"
    if system_torch and cfg.is_file() and "include-system-site-packages = true" not in cfg.read_text():
        raise Refusal(f"SYSTEM_TORCH=1: {venv} exists and was made without it (it cannot see the base's torch); "
                      f"remove it (rm -r {venv}) or name another: VENV=...")  # fmt: skip
    provided = base_torch() if system_torch else {}
    if wheelhouse is None:
        return
    manifest = read_manifest(wheelhouse)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest["python"] != here:
        raise Refusal(f"WHEELHOUSE={wheelhouse} holds wheels for Python {manifest['python']}, and {sys.executable} "
                      f"is Python {here}: make wheelhouse {'NODE=1 ' if manifest['set'] == 'node' else ''}PY={here}")
    if manifest["set"] == "node" and not system_torch:
        raise Refusal(f"WHEELHOUSE={wheelhouse} is a node set without torch and torchvision: add SYSTEM_TORCH=1 to "
                      f"use the base interpreter's, or make a full one: make wheelhouse")  # fmt: skip
    install, _, build_reqs = set_requirements(manifest["set"], manifest.get("report", True))
    _, missing = closure(install + build_reqs, wheels(wheelhouse), Target(sys.version_info[:2]), provided)
    if missing:
        first, names = missing[0], list(dict.fromkeys(m.name for m in missing))
        why = f"; {first.why}" if first.why else ""
        raise Refusal(f"WHEELHOUSE={wheelhouse} has no wheel of {', '.join(names)} for this Python ({first.requirement}"
                      f", needed by {first.needed_by}{why}): remake it with `{manifest['make']}`")  # fmt: skip


def requirements(wheelhouse: Path | None) -> None:
    """What make setup installs before the project: the wheelhouse's set and the build backend, or (installing
    from the index with SYSTEM_TORCH=1) the build backend only."""
    install, _, build_reqs = set_requirements("node")
    if wheelhouse:
        manifest = read_manifest(wheelhouse)
        install, _, build_reqs = set_requirements(manifest["set"], manifest.get("report", True))
        say(f"# make setup WHEELHOUSE={wheelhouse}: the {manifest['set']} set of pyproject.toml, and its build backend")
    else:
        install = []
        say("# make setup SYSTEM_TORCH=1: the build backend of pyproject.toml (the project builds in the venv)")
    for line in install + build_reqs:
        say(bare(line))


def link_torch(venv: Path) -> None:
    """The venv sees the base's torch (--system-site-packages; when the base is itself a venv, whose packages a
    venv made from it does not see, a .pth file adds them), and pip may never replace it: a pin file."""
    if sys.prefix != sys.base_prefix:
        site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        dirs = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
        (site / "_system_torch.pth").write_text(
            f"# make setup SYSTEM_TORCH=1: the packages of the base venv {sys.prefix}, after this venv's own\n"
            + "\n".join(lines) + "\n"
        )
    pins = base_torch()
    (venv / "system-torch.txt").write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))


def verify(venv: Path, system_torch: bool) -> None:
    import mlflow  # noqa: F401
    import torch
    import torchvision

    import segmodels  # noqa: F401

    inside = [m.__name__ for m in (torch, torchvision) if Path(m.__file__).resolve().is_relative_to(venv.resolve())]
    if system_torch and inside:
        raise Refusal(f"SYSTEM_TORCH=1, yet {', '.join(inside)} was installed into {venv}: remove it and report this")
    if system_torch:
        say(f"torch {torch.__version__} and torchvision {torchvision.__version__} from "
            f"{Path(torch.__file__).parents[1]} (the base interpreter's)")  # fmt: skip


def can_report() -> None:
    """`make run` (the whole study, report included) in an environment without the report stack: say so at once."""
    import importlib.util

    absent = [name for name in sorted(REPORT_STACK - {"pygments"}) if importlib.util.find_spec(name) is None]
    if absent:
        raise Refusal(f"{sys.prefix} has no {', '.join(absent)} (made from a REPORT=0 wheelhouse?), which the "
                      f"figures and the report need: make run TARGETS=\"summarize compare\" runs every other job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    b.add_argument("--node", action="store_true")
    b.add_argument("--no-report", action="store_true")
    b.add_argument("--python-version", default="")
    c = sub.add_parser("check")
    c.add_argument("--venv", type=Path, required=True)
    c.add_argument("--wheelhouse", type=Path)
    c.add_argument("--system-torch", action="store_true")
    r = sub.add_parser("requirements")
    r.add_argument("--wheelhouse", type=Path)
    t = sub.add_parser("link-torch")
    t.add_argument("venv", type=Path)
    v = sub.add_parser("verify")
    v.add_argument("venv", type=Path)
    v.add_argument("--system-torch", action="store_true")
    sub.add_parser("can-report")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            version = args.python_version or f"{sys.version_info[0]}.{sys.version_info[1]}"
            if not re.fullmatch(r"3\.\d+", version):
                raise Refusal(f"PY={version}: give a Python version as 3.12")
            if args.no_report and not args.node:
                raise Refusal("REPORT=0 goes with NODE=1: the full set is what `make setup` installs")
            build(args.out, "node" if args.node else "full", not args.no_report,
                  Target(tuple(int(p) for p in version.split("."))))  # fmt: skip
        elif args.command == "check":
            check(args.venv, args.wheelhouse, args.system_torch)
        elif args.command == "requirements":
            requirements(args.wheelhouse)
        elif args.command == "link-torch":
            link_torch(args.venv)
        elif args.command == "verify":
            verify(args.venv, args.system_torch)
        else:
            can_report()
    except Refusal as refusal:
        print(refusal, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
