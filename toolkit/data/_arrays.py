"""A user's data set from one file: `.npz` (arrays `x`, `y`) or `.csv` (label last).

`load_arrays(path)` reads:

- `.npz`: arrays `x` (N, ...) and `y` (N,), and optionally `x_test` and `y_test` (a
  held-out split). Other arrays are ignored. Object arrays are refused (they unpickle).
- `.csv`: one example per row, numeric features then the label in the last column; a
  first row that is not numeric is taken as a header. No held-out split.

Inputs are returned as stored (uint8 images are scaled by `toolkit.data._datasets.to_float` where
a model needs floats). Labels must be integers, or floats with integer values; they are
returned as int32. Every problem is a one-line `ToolkitError` naming the file.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from toolkit.base import ToolkitError

FORMATS = (".npz", ".csv")


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayData:
    """Inputs and integer labels read from `path`; `test` is the held-out pair or None."""

    path: str
    x: np.ndarray
    y: np.ndarray
    test: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def classes(self) -> np.ndarray:
        """The sorted distinct labels of the training split."""
        return np.unique(self.y)

    def __repr__(self) -> str:
        test = None if self.test is None else self.test[0].shape
        return f"ArrayData({self.path!r}, x={self.x.shape}, test={test})"


def load_arrays(path: str | Path) -> ArrayData:
    """Read a user's data file (formats in the module docstring)."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ToolkitError(
            f"--data={str(path)!r}: unknown format {p.suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(FORMATS)}."
        )
    if not p.is_file():
        raise ToolkitError(f"--data={str(path)!r} is not a file.")
    if p.suffix.lower() == ".npz":
        x, y, test = _read_npz(p)
    else:
        x, y = _read_csv(p)
        test = None
    y = _labels(y, p, "y")
    _check_pair(x, y, p, "x", "y")
    if test is not None:
        tx, ty = test[0], _labels(test[1], p, "y_test")
        _check_pair(tx, ty, p, "x_test", "y_test")
        if tx.shape[1:] != x.shape[1:]:
            raise ToolkitError(
                f"{p}: x_test has example shape {tx.shape[1:]}, x has {x.shape[1:]}."
            )
        test = (tx, ty)
    return ArrayData(str(p), x, y, test)


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    if not zipfile.is_zipfile(p):  # np.load would read a .npy or pickle by its contents
        raise ToolkitError(f"{p} is not a readable .npz file (not a zip archive).")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test") if k in f.files}
            names = f.files
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ToolkitError(f"{p} is not a readable .npz file ({_first_line(e)}).") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ToolkitError(
            f"{p} has no array {' or '.join(map(repr, missing))} (it holds {names}); "
            "a data file needs inputs 'x' and labels 'y'."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ToolkitError(f"{p}: give both x_test and y_test, or neither.")
    test = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else None
    for name, a in arrays.items():
        real = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
        if not (real or a.dtype == np.bool_):
            raise ToolkitError(f"{p}: array {name!r} has dtype {a.dtype}; expected real numbers.")
    return arrays["x"], arrays["y"], test


def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        lines = [line for line in p.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{p} is not a readable text file ({_first_line(e)}).") from None
    if lines and not _numeric(lines[0]):
        lines = lines[1:]  # a header
    if not lines:
        raise ToolkitError(f"{p} has no data rows.")
    rows = []
    for i, line in enumerate(lines):
        cells = line.split(",")
        if not _numeric(line):
            raise ToolkitError(f"{p}: row {i + 1} ({line[:40]!r}) is not all numbers.")
        rows.append([float(c) for c in cells])
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() < 2:
        raise ToolkitError(f"{p}: rows need the same number (>= 2) of columns, label last.")
    table = np.asarray(rows, dtype=np.float64)
    return table[:, :-1], table[:, -1]


def _numeric(line: str) -> bool:
    try:
        [float(c) for c in line.split(",")]
    except ValueError:
        return False
    return True


def _labels(y: np.ndarray, p: Path, name: str) -> np.ndarray:
    if y.ndim != 1:
        raise ToolkitError(f"{p}: {name} has shape {y.shape}; labels must be one-dimensional.")
    if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise ToolkitError(f"{p}: {name} holds non-integer labels; expected integer classes.")
    if y.size and (y.min() < -(2**31) or y.max() >= 2**31):
        raise ToolkitError(f"{p}: {name} holds labels outside int32.")
    return y.astype(np.int32)


def _check_pair(x: np.ndarray, y: np.ndarray, p: Path, xn: str, yn: str) -> None:
    if x.ndim < 2 or len(x) != len(y) or len(y) == 0:
        raise ToolkitError(
            f"{p}: {xn} {x.shape} and {yn} {y.shape} need one equal leading size >= 1, "
            f"and {xn} at least one feature axis."
        )
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ToolkitError(f"{p}: {xn} holds NaN or inf.")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
