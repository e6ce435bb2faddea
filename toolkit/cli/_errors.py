"""One-line errors for every `toolkit` command (shared by all commands and plugins).

A `ToolkitError` prints `error: ...` to stderr and exits 2 (3 for a diverged run), with no
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

import typer

from toolkit.base import ToolkitError


def fail(message: str, code: int = 2) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def one_line_errors(fn: Callable) -> Callable:
    """Turn ToolkitError into `error: ...` on stderr and exit 2 (3 for a diverged run)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from toolkit.training import TrainingDiverged

        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        try:
            return fn(*args, **kwargs)
        except TrainingDiverged as e:
            raise fail(str(e), 3) from None
        except ToolkitError as e:
            raise fail(str(e)) from None

    return wrapper
