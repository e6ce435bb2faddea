"""Activation functions, with the tempered sigmoid of Papernot et al. (2021), eq. (3).

    phi_{s,T,o}(x) = s / (1 + exp(-T x)) - o

`s` is the scale, `T` the inverse temperature and `o` the offset. The range is
(-o, s - o), the derivative is at most s*T/4 (attained at x = 0), and
phi_{2,2,1} = tanh exactly, since 2*sigmoid(2x) - 1 = tanh(x).

Activations are chosen by name through `ActivationSpec`, a frozen dataclass
that a run record can store and rebuild.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from toolkit.base import ToolkitError

Activation = Callable[[jax.Array], jax.Array]


def tempered_sigmoid(
    x: jax.typing.ArrayLike, *, scale: float, inverse_temp: float, offset: float
) -> jax.Array:
    """phi_{s,T,o}(x) = s * sigmoid(T x) - o (eq. 3).

    Computed as `s * jax.nn.sigmoid(T * x) - o`; `jax.nn.sigmoid` is stable for
    large |x|, so the function is finite for every finite input.

    Args:
      x: input array.
      scale: s > 0, the width of the output range.
      inverse_temp: T > 0, rescales the pre-activation.
      offset: o, shifts the output; the range is (-o, s - o).

    Returns:
      An array of the same shape and dtype as `x`.

    >>> float(tempered_sigmoid(0.3, scale=2.0, inverse_temp=2.0, offset=1.0))  # tanh(0.3)
    0.29131261...
    """
    x = jnp.asarray(x)
    return scale * jax.nn.sigmoid(inverse_temp * x) - offset


def _elu(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x)


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


# Parameter-free activations by name.
_FIXED: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "elu": _elu,
    "gelu": _gelu,
}

ACTIVATION_NAMES: tuple[str, ...] = (*_FIXED, "tempered")


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """A named activation; `scale`, `inverse_temp`, `offset` only for 'tempered'.

    Validated on construction, so a spec that exists is usable.
    """

    name: str = "tanh"
    scale: float = 2.0
    inverse_temp: float = 2.0
    offset: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ACTIVATION_NAMES:
            raise ToolkitError(
                f"activation={self.name!r} is unknown; "
                f"expected one of {', '.join(ACTIVATION_NAMES)}."
            )
        if self.name == "tempered":
            for field, value in (("scale", self.scale), ("inverse_temp", self.inverse_temp)):
                if not (math.isfinite(value) and value > 0):
                    raise ToolkitError(f"{field}={value} must be finite and > 0.")
            if not math.isfinite(self.offset):
                raise ToolkitError(f"offset={self.offset} must be finite.")

    @property
    def label(self) -> str:
        """Short human-readable label, e.g. 'tanh' or 'tempered(s=2,T=2,o=1)'."""
        if self.name != "tempered":
            return self.name
        return f"tempered(s={self.scale:g},T={self.inverse_temp:g},o={self.offset:g})"

    def to_dict(self) -> dict:
        if self.name != "tempered":
            return {"name": self.name}
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActivationSpec:
        return cls(**d)

    def build(self) -> Activation:
        """The activation function as a callable of one array."""
        if self.name in _FIXED:
            return _FIXED[self.name]
        s, t, o = self.scale, self.inverse_temp, self.offset

        def act(x: jax.Array) -> jax.Array:
            return tempered_sigmoid(x, scale=s, inverse_temp=t, offset=o)

        return act


def get_activation(name: str, **params: float) -> Activation:
    """Activation by name: `get_activation('tempered', scale=2, inverse_temp=2, offset=1)`."""
    return ActivationSpec(name, **params).build()
