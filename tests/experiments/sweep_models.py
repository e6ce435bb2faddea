"""A model that a sweep file names by import path (`tests.experiments.sweep_models:relu_mlp`).

ReLU is unbounded, so a huge learning rate overflows float32 within the first epoch: the
sweep tests' diverging grid point. (The tanh models elsewhere saturate instead.)
"""

from __future__ import annotations

import jax
from flax import nnx

FEATURES, CLASSES = 8, 3  # the shape of the data file the sweep tests write


class ReluMlp(nnx.Module):
    """Flatten, one hidden ReLU layer of 16 units, `CLASSES` logits."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(FEATURES, 16, rngs=rngs)
        self.out = nnx.Linear(16, CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x.reshape((x.shape[0], -1)))))


def relu_mlp(*, rngs: nnx.Rngs) -> ReluMlp:
    return ReluMlp(rngs=rngs)
