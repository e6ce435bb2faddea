"""Augmentation multiplicity (De et al. 2022, "Unlocking high-accuracy differentially
private image classification through scale", section 3.1).

Each sampled example is expanded into K augmented views; the example's loss is the mean
of the views' losses, so its gradient is the mean of the views' gradients, and that one
gradient is clipped. Each example still contributes one clipped vector, so the clipped
sum's sensitivity is unchanged (C flat, 1 automatic) and so is the accounting.

The views are random shifts by up to `max_shift` pixels (zero padding, as a padded
random crop) and, with `flip`, random horizontal flips. Their randomness is the
example's own key (`toolkit.privacy.randomness`: the run's secret key, the step and the
example's identity, a hash of its bytes), so an example's views, like its gradient, are
a function of the example, the step and the secret key alone: they do not change when
another example is added or removed, and a resumed run draws the same views.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from toolkit.privacy.randomness import view_key


@dataclasses.dataclass(frozen=True)
class Augmult:
    """K random views of one image (H, W, C): `views(x, key) -> (K, H, W, C)`."""

    k: int
    max_shift: int = 2
    flip: bool = True

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"augmult k={self.k}; expected >= 1.")
        if self.max_shift < 0:
            raise ValueError(f"augmult max_shift={self.max_shift}; expected >= 0.")

    def views(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """The K views of `x`, drawn from the example's key (`toolkit.privacy.randomness`)."""
        keys = jax.random.split(view_key(key), self.k)
        return jax.vmap(lambda k: self.one_view(k, x))(keys)

    def one_view(self, key: jax.Array, x: jax.Array) -> jax.Array:
        h, w = x.shape[0], x.shape[1]
        s = self.max_shift
        shift_key, flip_key = jax.random.split(key)
        if s > 0:
            padded = jnp.pad(x, ((s, s), (s, s), (0, 0)))
            dy, dx = jax.random.randint(shift_key, (2,), 0, 2 * s + 1)
            x = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, x.shape[2]))
        if self.flip:
            x = jnp.where(jax.random.bernoulli(flip_key), x[:, ::-1], x)
        return x
