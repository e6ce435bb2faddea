"""The Gaussian privatizer of DP-SGD as an optax `GradientTransformation`.

Its input is the clipped *sum* of a step (`toolkit.grads._per_example`), never a mean:

    update = (clipped_sum + N(0, (sigma * Delta)^2 I)) / B

with Delta the sum's sensitivity (C flat, 1 automatic) and B the *expected* batch size
q N (dividing by the realised size would leak it). The noise of step t is drawn from
`fold_in(key, t)`, and t is the state's counter, so a run resumed from a checkpoint of
its optimizer state draws bit for bit the noise an uninterrupted run draws. Chain it in
front of any optax optimizer::

    tx = optax.chain(gaussian_privatizer(noise_multiplier=1.1, sensitivity=1.0,
                                         expected_batch_size=256, key=key),
                     optax.sgd(0.1, momentum=0.9))

`noise_multiplier=0` adds nothing (and gives no privacy).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from toolkit.base import ToolkitError


class PrivatizerState(NamedTuple):
    key: jax.Array  # the run's noise key; step t draws from fold_in(key, t)
    count: jax.Array  # int32 scalar: steps privatized so far


def add_gaussian_noise(tree, key: jax.Array, std: float):
    """tree + N(0, std^2) i.i.d. on every coordinate; one independent subkey per leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    # Drawn flat, then shaped: the same numbers (threefry fills in row-major order), and
    # XLA:CPU compiles a 1-D draw several times faster than a 4-D one.
    noisy = [
        x + std * jax.random.normal(k, (x.size,), x.dtype).reshape(x.shape)
        for x, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noisy)


def gaussian_privatizer(
    *, noise_multiplier: float, sensitivity: float, expected_batch_size: float, key: jax.Array
) -> optax.GradientTransformation:
    """Noise of std `noise_multiplier * sensitivity` on the clipped sum, then / B.

    Args:
        noise_multiplier: sigma >= 0.
        sensitivity: L2 sensitivity of the sum it receives (`ClippedGradFn.sensitivity`).
        expected_batch_size: B = q N > 0, the divisor applied after the noise.
        key: The run's noise key.

    Returns:
        An optax transformation whose state is `PrivatizerState`.
    """
    if not noise_multiplier >= 0 or noise_multiplier == float("inf"):
        raise ToolkitError(f"noise_multiplier={noise_multiplier} must be finite and >= 0.")
    if not expected_batch_size > 0:
        raise ToolkitError(f"expected_batch_size={expected_batch_size} must be > 0.")
    std = noise_multiplier * sensitivity if noise_multiplier > 0 else 0.0

    def init(params) -> PrivatizerState:
        del params
        return PrivatizerState(key, jax.numpy.zeros((), jax.numpy.int32))

    def update(clipped_sum, state: PrivatizerState, params=None):
        del params
        noisy = (
            add_gaussian_noise(clipped_sum, jax.random.fold_in(state.key, state.count), std)
            if std > 0
            else clipped_sum
        )
        grads = jax.tree.map(lambda g: g / expected_batch_size, noisy)
        return grads, PrivatizerState(state.key, state.count + 1)

    return optax.GradientTransformation(init, update)
