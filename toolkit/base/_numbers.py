"""NumPy and JAX scalars as the Python numbers they hold.

Every entry point that takes a number (`toolkit.fit`, `RunConfig`, `PrivacyParams`, ...)
accepts `np.float32(1.0)`, `np.int64(128)` or a 0-d `jax.Array` as it accepts `1.0` or
`128`: records hold plain ints and floats, and the type checks see the value, not its box.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def plain_number(value: Any) -> Any:
    """A 0-d NumPy or JAX number as a Python bool, int or float; anything else unchanged.

    >>> plain_number(np.int64(128)), plain_number(np.float32(0.5)), plain_number("a")
    (128, 0.5, 'a')
    """
    if not isinstance(value, np.generic) and isinstance(value, bool | int | float | str):
        return value  # np.float64 subclasses float: it is unboxed below
    boxed = isinstance(value, np.generic) or type(value).__module__.startswith("jax")
    if boxed and np.ndim(value) == 0:
        dtype = np.asarray(value).dtype
        if np.issubdtype(dtype, np.number) or dtype == np.bool_:
            return value.item()
    return value


def plain_fields(obj: Any) -> None:
    """Replace each NumPy/JAX scalar field of a (frozen) dataclass by its Python number."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        plain = plain_number(value)
        if plain is not value:
            object.__setattr__(obj, f.name, plain)
