"""Model factories that the command line imports by name (`--model tests.cli_models:tiny`).

`toolkit train --model package.module:factory` calls `factory(rngs=nnx.Rngs(seed))`; the
tests run the command from the repository root, where `tests` is importable. The other
names are the wrong things a `--model` spec can point at.
"""

from __future__ import annotations

import jax
from flax import nnx

FEATURES, CLASSES = 8, 3  # the shape of the data files the CLI tests write


class Tiny(nnx.Module):
    """Flatten, one hidden tanh layer, `classes` logits: for flat or small image inputs."""

    def __init__(self, features: int, classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(features, 16, rngs=rngs)
        self.out = nnx.Linear(16, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        return self.out(jax.nn.tanh(self.hidden(x)))


def tiny(*, rngs: nnx.Rngs) -> Tiny:
    """For inputs of `FEATURES` numbers (a flat vector, or e.g. a 2x4 image): `CLASSES` logits."""
    return Tiny(FEATURES, CLASSES, rngs=rngs)


def tiny_image(*, rngs: nnx.Rngs) -> Tiny:
    """For 28x28x1 images (the Fashion-MNIST shape): 10 logits."""
    return Tiny(28 * 28, 10, rngs=rngs)


def not_a_module(*, rngs: nnx.Rngs) -> dict:
    """A factory that returns no `nnx.Module`."""
    return {"kernel": rngs.params()}


NOT_CALLABLE = 3  # `--model tests.cli_models:NOT_CALLABLE` names something that is not a factory
