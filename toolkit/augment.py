"""Augmentation multiplicity (De et al. 2022, "Unlocking high-accuracy differentially
private image classification through scale", section 3.1).

Each sampled example is expanded into K augmented views; the example's loss is the mean
of the views' losses, so its gradient is the mean of the views' gradients, and that one
gradient is clipped. Each example still contributes one clipped vector, so the clipped
sum's sensitivity is unchanged (C flat, 1 automatic) and so is the accounting: the views
are a function of the one example alone. Compute grows by K.

The views are random shifts by up to `max_shift` pixels (zero padding, as a padded
random crop) and, with `flip`, random horizontal flips. Their randomness is keyed by
(seed, step, micro-batch, row), so a resumed run draws the same views.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augmult:
    """K random views of one image (H, W, C): `views(x, data) -> (K, H, W, C)`."""

    k: int
    max_shift: int = 2
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"augmult k={self.k}; expected >= 1.")
        if self.max_shift < 0:
            raise ValueError(f"augmult max_shift={self.max_shift}; expected >= 0.")

    def views(self, x: jax.Array, data: jax.Array) -> jax.Array:
        """The K views of `x`; `data` (unsigned integers) keys their randomness."""
        key = jax.random.key(self.seed)
        for d in jnp.atleast_1d(data):
            key = jax.random.fold_in(key, d)
        return jax.vmap(lambda k: self.one_view(k, x))(jax.random.split(key, self.k))

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
