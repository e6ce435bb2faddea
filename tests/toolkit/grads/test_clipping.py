"""Clipping's bound, for every clip norm: what one example can add to the clipped sum.

`test_dpsgd.py` checks the bound with C = 0.1 and 0.5, where automatic clipping's bound
(1) is above C, so a rule that scaled the normalised gradient by C would pass there.
Here C ranges over 0.1, 1 and 10 on both per-example paths.

Tolerance: the difference of two float32 sums of 16 clipped gradients carries rounding of
a few ulps per term; 1e-5 relative is far above that and far below a wrong scale (x10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import toolkit
from toolkit.grads import clipping

D, K, N = 6, 3, 16


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(D, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def _norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in jax.tree.leaves(tree))))


@pytest.mark.parametrize("implementation", ["bookkeeping", "vmap"])
@pytest.mark.parametrize("clip_norm", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("rule", ["flat", "automatic"])
def test_one_example_moves_the_clipped_sum_by_at_most_the_sensitivity(
    rule, clip_norm, implementation
):
    """Removing any one example moves the clipped sum by <= C (flat) or <= 1 (automatic),
    whatever C is; `sensitivity` (what the noise is scaled by) is that bound, and examples
    with large gradients reach it (so the bound is not met by shrinking everything)."""
    graphdef, params, state = toolkit.split_model(_Mlp(nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32) * np.float32(1000.0))
    y = jnp.asarray(rng.integers(0, K, N).astype(np.int32))
    fn = toolkit.clipped_grad(
        graphdef, clipping=rule, clip_norm=clip_norm, implementation=implementation
    )
    bound = clip_norm if rule == "flat" else 1.0
    assert fn.sensitivity == bound
    assert clipping.sensitivity(clipping=rule, clip_norm=clip_norm) == bound
    call = jax.jit(lambda mask: fn(params, state, x, y, mask))
    everyone = call(jnp.ones(N, bool))
    moves = []
    for i in range(N):
        without = call(jnp.arange(N) != i)
        moves.append(_norm(jax.tree.map(jnp.subtract, everyone.clipped_sum, without.clipped_sum)))
    assert max(moves) <= bound * (1 + 1e-5)
    big = np.asarray(everyone.norms) > 10 * bound  # pre-clip norms far above the bound
    assert big.any() and min(np.asarray(moves)[big]) >= 0.9 * bound
