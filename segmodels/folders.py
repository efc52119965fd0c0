"""Where a command may write: never over a person's own files, never over the command's own input.

A command that replaces a whole folder (``prepare --out``) or writes its files into one (``synth --out``) first
calls :func:`check_replaceable`: the folder must be absent or empty, or be the command's own (its record file says
so, or it has none) and hold nothing besides what the command writes there. Anything else is refused before any
work, with the entries at fault named. :func:`check_apart` refuses an output that is, holds or lies inside one of
the command's inputs (symlinks resolved), so a run cannot delete what it reads; :func:`check_file_output` refuses
an output file path that names an existing folder.

Commands that only write files of their own names atomically (figures, the report, evaluation and deployment
folders) need none of this: they never remove what they did not write.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

__all__ = ["Layout", "check_apart", "check_file_output", "check_replaceable", "foreign_entries", "listed"]

# What a command writes in its folder: top-level name → None (anything under that name is the command's own)
# or the file names that folder may hold.
Layout = Mapping[str, Collection[str] | None]


def listed(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` names, enough to tell what a folder holds."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _name(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder).as_posix()
    return rel + "/" if path.is_dir() and not path.is_symlink() else rel


def foreign_entries(folder: str | Path, layout: Layout) -> list[str]:
    """The entries of ``folder`` that a command writing ``layout`` does not write (``notes.txt``, ``train/x.npy``,
    ``data/``); a symbolic link is never a command's own."""
    folder = Path(folder)
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name not in layout or entry.is_symlink():
            found.append(_name(entry, folder))
            continue
        inner = layout[entry.name]
        if inner is None:
            continue
        if not entry.is_dir():
            found.append(_name(entry, folder))
            continue
        found += [_name(p, folder) for p in sorted(entry.iterdir())
                  if p.name not in inner or p.is_symlink() or not p.is_file()]  # fmt: skip
    return found


def check_replaceable(
    folder: str | Path,
    layout: Layout | None,
    *,
    ours: bool,
    what: str,
    verb: str = "replace",
    option: str = "--out",
    why: str = "",
) -> None:
    """ValueError naming what is in the way unless ``folder`` is absent or empty, or (``ours``: no record file of
    another kind there) holds only the entries of ``layout`` (None: anything). ``what`` names the command's output
    ("a packed dataset"), ``verb`` what it does to the folder, ``why`` why the folder is not ``ours``."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise ValueError(f"{option} {folder} is a broken symbolic link; give a folder path")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file, not a folder; choose another {option}")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    if not ours:
        other = [_name(p, folder) for p in entries]
    else:
        other = [] if layout is None else foreign_entries(folder, layout)
    if other:
        because = f" ({why})" if why else ""
        raise ValueError(f"{folder} holds other data than {what}{because}: {listed(other)}; refusing to {verb} it: "
                         f"choose another {option}, or move those out")  # fmt: skip


def check_apart(out: str | Path, inputs: Mapping[str, str | Path], *, option: str = "--out") -> None:
    """ValueError when ``out`` is, holds or lies inside one of ``inputs`` (description → path), symlinks resolved:
    writing there would replace or mix with what the command reads."""
    target = Path(out).resolve()
    for name, path in inputs.items():
        source = Path(path).resolve()
        if target == source:
            problem = f"is the {name} {path}"
        elif target in source.parents:
            problem = f"holds the {name} {path}"
        elif source in target.parents:
            problem = f"lies inside the {name} {path}"
        else:
            continue
        raise ValueError(f"{option} {out} {problem}; writing there would destroy or mix with it: choose another "
                         f"{option}, outside it")  # fmt: skip


def check_file_output(path: str | Path, *, option: str = "--out") -> None:
    """ValueError when the output file ``path`` names an existing folder (it would be refused after the work)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the path of the file to write")
