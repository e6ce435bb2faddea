"""DP-SGD step: clipping bound, sensitivity, noise, and the non-private limit, on the real CNN."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from toolkit.grads import _per_example as per_example
from toolkit.grads import clipping
from toolkit.nn import ActivationSpec, build_model
from toolkit.privacy import _privatizer as privatizer
from toolkit.training import _dpsgd as dpsgd

F32_EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def split_model():
    return nnx.split(build_model("mnist", ActivationSpec("relu"), seed=0), nnx.Param)


def _batch(n, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1)).astype(np.float32) * scale
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, n))


def _per_example_grads(graphdef, params, x, y):
    loss = per_example.per_example_loss_fn(graphdef)
    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("rule, bound", [("flat", 0.5), ("automatic", 1.0)])
def test_clip_bounds_every_norm_including_huge_gradients(split_model, rule, bound):
    graphdef, params = split_model
    x, y = _batch(16)
    x = x.at[:4].multiply(1e4)  # inputs of 1e4 give ReLU gradients of norm ~1e4 and more
    grads = _per_example_grads(graphdef, params, x, y)
    norms = clipping.per_example_norms(grads)
    assert float(norms.max()) > 1e3
    factors = clipping.clip_factors(norms, clipping=rule, clip_norm=0.5)
    clipped = jax.tree.map(lambda g: g * factors.reshape((-1,) + (1,) * (g.ndim - 1)), grads)
    after = clipping.per_example_norms(clipped)
    # Relative float32 rounding of a norm computed over 26k coordinates: a few eps.
    assert float(after.max()) <= bound * (1 + 8 * F32_EPS)


def test_non_finite_gradients_contribute_zero():
    g = {"w": jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [jnp.inf, 1.0], [3.0, 4.0]])}
    norms = clipping.per_example_norms(g)
    w = clipping.clip_factors(norms, clipping="flat", clip_norm=1.0)
    assert w.tolist()[1:3] == [0.0, 0.0]
    s = clipping.clipped_sum(g, w)["w"]
    expected = np.array([1.0, 2.0]) / math.sqrt(5) + np.array([3.0, 4.0]) / 5
    np.testing.assert_allclose(np.asarray(s), expected, rtol=4 * F32_EPS)


@pytest.mark.parametrize("rule, sens", [("flat", 0.1), ("automatic", 1.0)])
def test_sensitivity_of_clipped_sum_on_neighbouring_batches(split_model, rule, sens):
    """Adding one example (adversarial: huge or NaN gradient) moves the clipped sum by <= Delta."""
    graphdef, params = split_model
    mech = dpsgd.Mechanism(clipping=rule, clip_norm=0.1)
    acc = dpsgd.make_accumulate(graphdef, mech)
    x, y = _batch(32, seed=1)
    x = x.at[0].multiply(1e5)
    x_nan = x.at[1].set(jnp.nan)
    idx = jnp.arange(32, dtype=jnp.int32)
    zeros = dpsgd.zeros_like(params)
    for images, adversary in ((x, 0), (x_nan, 1)):
        with_all, _, _ = acc(params, zeros, images, y, idx, jnp.ones(32, bool))
        without, _, _ = acc(params, zeros, images, y, idx, jnp.arange(32) != adversary)
        diff = jax.tree.map(jnp.subtract, with_all, without)
        d = float(clipping.per_example_norms(jax.tree.map(lambda a: a[None], diff))[0])
        assert math.isfinite(d) and d <= sens * (1 + 1e-5)  # rounding of a 32-term float32 sum


def test_noise_std_matches_sigma_times_c():
    """26,010 coordinates: the sample std has relative standard error 1/sqrt(2n) = 0.44%."""
    graphdef, params = nnx.split(build_model("mnist", ActivationSpec("tanh"), seed=0), nnx.Param)
    mech = dpsgd.Mechanism(clip_norm=0.7, noise_multiplier=1.3)
    # The transformation training runs; B = 1 so that its output is the noise itself.
    tx = mech.privatized(optax.identity(), expected_batch_size=1.0, key=jax.random.key(0))
    zeros = dpsgd.zeros_like(params)
    noisy, _ = tx.update(zeros, tx.init(params), params)
    noise = np.concatenate([np.ravel(v) for v in jax.tree.leaves(noisy)])
    n, std = noise.size, 1.3 * 0.7
    assert abs(noise.std() / std - 1) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * std / math.sqrt(n)


def test_noise_independent_across_steps_and_leaves():
    tree = {"a": jnp.zeros(5000), "b": jnp.zeros(5000)}
    key = jax.random.key(0)
    s0 = privatizer.add_gaussian_noise(tree, jax.random.fold_in(key, 0), 1.0)
    s1 = privatizer.add_gaussian_noise(tree, jax.random.fold_in(key, 1), 1.0)
    pairs = [(s0["a"], s0["b"]), (s0["a"], s1["a"]), (s0["b"], s1["b"])]
    for u, v in pairs:  # correlation of independent N(0,1) vectors: std 1/sqrt(5000) = 0.014
        assert abs(float(jnp.corrcoef(u, v)[0, 1])) < 5 / math.sqrt(5000)


def test_no_clip_no_noise_full_batch_is_plain_sgd(split_model):
    """C = inf, sigma = 0, q = 1: the DP update equals the SGD update on the mean loss."""
    graphdef, params = split_model
    x, y = _batch(24, seed=2)
    mech = dpsgd.Mechanism(clip_norm=math.inf, noise_multiplier=0.0)
    opt = optax.sgd(0.1)
    acc, _, _ = dpsgd.make_accumulate(graphdef, mech)(
        params, dpsgd.zeros_like(params), x, y, jnp.arange(24, dtype=jnp.int32), jnp.ones(24, bool)
    )
    tx = mech.privatized(opt, expected_batch_size=24.0, key=jax.random.key(0))
    dp_params, _ = dpsgd.make_update(tx)(params, tx.init(params), acc)

    def mean_loss(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(mean_loss)(params)
    sgd_params = optax.apply_updates(params, opt.update(grads, opt.init(params), params)[0])
    for a, b in zip(jax.tree.leaves(dp_params), jax.tree.leaves(sgd_params)):
        # Same math, different float32 summation order (per-example sum vs batched backward).
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_microbatches_accumulate_to_the_single_batch_sum(split_model):
    graphdef, params = split_model
    x, y = _batch(48, seed=3)
    acc = dpsgd.make_accumulate(graphdef, dpsgd.Mechanism(clip_norm=0.05))
    zeros = dpsgd.zeros_like(params)
    whole, _, _ = acc(params, zeros, x, y, jnp.arange(48, dtype=jnp.int32), jnp.ones(48, bool))
    parts = zeros
    for start in (0, 16, 32):
        parts, _, _ = acc(
            params, parts, x, y, jnp.arange(start, start + 16, dtype=jnp.int32), jnp.ones(16, bool)
        )
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(parts)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
