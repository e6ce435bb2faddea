"""Output paths of every command: what a path names, and whether it can be written.

Every command that writes checks its outputs with these functions before it does any
work, so that a bad `--out` costs nothing and leaves nothing behind:

- `file_set(path, suffixes)`: the files an option such as `--out figs/pareto-eps2.7` names
  (`figs/pareto-eps2.7.png`, `.pdf`): only a trailing suffix of the set is replaced, every
  other dot is part of the name.
- `check_files(option, paths)`: each file can be created (its folder exists or can be
  made, is writable, is not a file) and does not exist yet, unless `overwrite`.
- `check_new_dir(option, path)`: a directory that will hold a new run: absent or empty.
- `check_dir(option, path)`: a directory that may already exist (a sweep's root).
- `writing(option, path)`: a failed write (full disk, permissions changed meanwhile)
  becomes a one-line `ToolkitError`.

Each error names the option, the path and what is allowed (exit 2 in the CLI).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from toolkit.base._errors import ToolkitError


def file_set(path: str | os.PathLike, suffixes: Sequence[str]) -> list[Path]:
    """PATH + suffix for each suffix; a trailing suffix of the set is dropped first.

    >>> [p.name for p in file_set("figs/pareto-eps2.7", (".png", ".pdf"))]
    ['pareto-eps2.7.png', 'pareto-eps2.7.pdf']
    >>> [p.name for p in file_set("table.md", (".md", ".csv"))]
    ['table.md', 'table.csv']
    """
    stem = Path(path)
    if stem.suffix.lower() in {s.lower() for s in suffixes}:
        stem = stem.with_name(stem.stem)
    return [stem.with_name(stem.name + suffix) for suffix in suffixes]


def _creatable_dir(option: str, value: Path, directory: Path) -> None:
    """`directory` exists as a writable folder, or can be created under one."""
    anchor = directory.absolute()
    while not anchor.exists() and not anchor.is_symlink():
        anchor = anchor.parent
    if anchor.is_symlink() and not anchor.exists():
        raise ToolkitError(
            f"{option}={value}: {anchor} is a symbolic link to {os.readlink(anchor)}, which "
            "does not exist; create its target or choose another path."
        )
    if not anchor.is_dir():
        raise ToolkitError(
            f"{option}={value}: {anchor} is a file, not a directory; choose another path."
        )
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ToolkitError(
            f"{option}={value}: directory {anchor} is not writable; "
            "choose a directory you can write to."
        )


def check_files(
    option: str, paths: Sequence[Path], *, value: Path | None = None, overwrite: bool = False
) -> None:
    """Each file can be written: its folder can be made and written, it is not a folder,
    and it does not exist yet unless `overwrite`."""
    shown = value if value is not None else paths[0]
    for path in paths:
        if path.is_dir():
            raise ToolkitError(f"{option}={shown}: {path} is a directory; give a file name.")
        _creatable_dir(option, shown, path.parent)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise ToolkitError(
                    f"{option}={shown}: {path} already exists; choose a new name, or pass "
                    "--overwrite to replace it."
                )
            if not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
                raise ToolkitError(f"{option}={shown}: {path} is not writable.")


def check_new_dir(option: str, path: Path, *, hint: str = "", ignore: Sequence[str] = ()) -> None:
    """`path` can hold a new run: absent, or an empty directory (but for the names in
    `ignore`), and creatable."""
    if path.exists() and (not path.is_dir() or any(p.name not in ignore for p in path.iterdir())):
        if not path.is_dir():
            raise ToolkitError(f"{option}={path} is not a directory; choose a new directory.")
        raise ToolkitError(
            f"{option}={path} exists and is not empty; choose a new directory{hint}."
        )
    _creatable_dir(option, path, path)


def check_dir(option: str, path: Path) -> None:
    """`path` is a writable directory, or can be created (it may hold earlier outputs)."""
    if path.exists() and not path.is_dir():
        raise ToolkitError(f"{option}={path} is a file; give a directory.")
    _creatable_dir(option, path, path)


@contextlib.contextmanager
def writing(option: str, path: Path) -> Iterator[None]:
    """Turn an OSError while writing `path` into a one-line ToolkitError."""
    try:
        yield
    except OSError as e:
        raise ToolkitError(
            f"{option}={path} could not be written ({e.strerror or e}); "
            "files already there are intact."
        ) from None
