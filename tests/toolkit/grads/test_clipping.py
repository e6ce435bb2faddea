"""Clipping's bound, for every clip norm: what one example can add to the clipped sum.

`test_dpsgd.py` checks the bound with C = 0.1 and 0.5, where automatic clipping's bound
(1) is above C, so a rule that scaled the normalised gradient by C would pass there.
Here C ranges over 0.1, 1 and 10 on both per-example paths.

Tolerance: the difference of two float32 sums of 16 clipped gradients carries rounding of
a few ulps per term; 1e-5 relative is far above that and far below a wrong scale (x10).
"""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("split", ["equal", "size"])
def test_layer_clip_norms_share_c_squared_from_shapes_alone(split):
    """sum_l C_l^2 = C^2 (float64 sums: 1e-12); `equal` gives each of the L layers
    C / sqrt(L), `size` gives C sqrt(d_l / d); the values do not depend on the params'
    values."""
    _, params, _ = toolkit.split_model(_Mlp(nnx.Rngs(0)))
    c = clipping.layer_clip_norms(params, clip_norm=0.3, split=split)
    assert list(c) == ["fc1", "fc2"]
    assert math.isclose(sum(v**2 for v in c.values()), 0.09, rel_tol=1e-12)
    sizes = {"fc1": D * 8 + 8, "fc2": 8 * K + K}
    for name, value in c.items():
        share = 0.5 if split == "equal" else sizes[name] / sum(sizes.values())
        assert math.isclose(value, 0.3 * math.sqrt(share), rel_tol=1e-12)
    doubled = jax.tree.map(lambda v: 2 * v, params)
    assert clipping.layer_clip_norms(doubled, clip_norm=0.3, split=split) == c


@pytest.mark.parametrize("split", ["equal", "size"])
def test_per_layer_clipping_bounds_each_layer_and_both_paths_agree(split):
    """Each example's clipped part in layer l has norm <= C_l (checked on one-example
    sums), so its whole clipped gradient is <= C; the examples with large gradients reach
    C_l in every layer. Book-keeping and vmap give the same sum (rtol 1e-5: float32 sums
    of 16 terms)."""
    graphdef, params, state = toolkit.split_model(_Mlp(nnx.Rngs(0)))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(N, D)).astype(np.float32) * np.float32(100.0))
    y = jnp.asarray(rng.integers(0, K, N).astype(np.int32))
    c_l = clipping.layer_clip_norms(params, clip_norm=0.5, split=split)
    sums = {}
    for impl in ("bookkeeping", "vmap"):
        fn = toolkit.clipped_grad(graphdef, clipping="per-layer", clip_norm=0.5,
                                  implementation=impl, layer_split=split)  # fmt: skip
        assert fn.sensitivity == 0.5
        call = jax.jit(lambda mask, fn=fn: fn(params, state, x, y, mask).clipped_sum)
        sums[impl] = call(jnp.ones(N, bool))
        for i in range(N):
            one = call(jnp.arange(N) == i)
            for name, bound in c_l.items():
                part = math.sqrt(sum(float(np.sum(np.square(np.asarray(v))))
                                     for v in one[name].values()))  # fmt: skip
                assert part <= bound * (1 + 1e-5), (impl, i, name, part, bound)
            assert _norm(one) <= 0.5 * (1 + 1e-5)
    for a, b in zip(jax.tree.leaves(sums["bookkeeping"]), jax.tree.leaves(sums["vmap"]),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # an example scaled up 100x is clipped in every layer: its parts have norm C_l exactly
    fn = toolkit.clipped_grad(graphdef, clipping="per-layer", clip_norm=0.5, layer_split=split)
    one = fn(params, state, x * 100, y, jnp.arange(N) == 0).clipped_sum
    for name, bound in c_l.items():
        part = math.sqrt(sum(float(np.sum(np.square(np.asarray(v)))) for v in one[name].values()))
        assert math.isclose(part, bound, rel_tol=1e-4), (name, part, bound)
