"""Float64 for the theory checks, without flipping JAX's global configuration.

Every public entry point of `analysis/` that computes something theoretical is
wrapped in `float64`, which runs it inside `jax.enable_x64(True)`. The global
flag is untouched, so importing `analysis` changes nothing for training code
running in the same process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
import numpy as np

P = ParamSpec("P")
R = TypeVar("R")

# Machine epsilon of float64, the unit every tolerance below is stated in.
EPS = float(np.finfo(np.float64).eps)


def float64(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` with 64-bit JAX types enabled (a context manager, not a global switch)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper
