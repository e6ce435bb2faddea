"""A user's own model and loss, in a module so a run can record them by import path.

`toolkit.fit(tempered_mlp, ...)` records `model = "examples.models:tempered_mlp"`, so
`toolkit train --resume`, `toolkit bias` and `toolkit.load_run` rebuild the model from
the run directory alone (a model defined in a script's `__main__` is recorded as
`python:<name>` and has to be passed again from Python).
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

import toolkit


class TemperedMLP(nnx.Module):
    """784 -> 128 -> 10 with a tempered sigmoid (s, T, o) = (2, 2, 1) in between."""

    def __init__(self, rngs: nnx.Rngs, width: int = 128):
        self.hidden = nnx.Linear(784, width, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        h = self.hidden(x.reshape(len(x), -1))
        return self.out(toolkit.tempered_sigmoid(h, scale=2.0, inverse_temp=2.0, offset=1.0))


def tempered_mlp(*, rngs: nnx.Rngs) -> TemperedMLP:
    """The factory a run records: called as `tempered_mlp(rngs=nnx.Rngs(seed))`."""
    return TemperedMLP(rngs)


def smoothed_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy against labels smoothed by 0.1, shape (batch,)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(logits, targets)
