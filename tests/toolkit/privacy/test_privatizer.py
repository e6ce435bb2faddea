"""The Gaussian noise that training adds: its scale, and fresh draws at every step and leaf.

Measured on what the real path produces (`Mechanism.privatized`, and `toolkit.fit` with a
loss whose gradient is exactly zero, so that the update is the noise alone) rather than
on `add_gaussian_noise` with keys chosen by the test.

Tolerances. For n i.i.d. normal coordinates the sample std has relative standard error
1/sqrt(2n) and the correlation of two independent draws has standard error 1/sqrt(n);
every check allows 5 standard errors (a false failure has probability < 1e-6, and the
keys are fixed, so a pass is reproducible). The bugs they stand against are far outside:
noise scaled by C = 0.1 instead of 1 is off by a factor of 10, and a reused key gives a
correlation of exactly 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import toolkit
from toolkit.training import _dpsgd as dpsgd

SIGMA, C, B = 2.0, 0.1, 4.0


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _corr(u, v) -> float:
    return float(np.corrcoef(np.ravel(u), np.ravel(v))[0, 1])


@pytest.mark.parametrize("clipping, sensitivity", [("automatic", 1.0), ("flat", C)])
def test_noise_std_is_sigma_times_the_sensitivity_over_b(clipping, sensitivity):
    """Automatic clipping's sum has sensitivity 1 whatever clip_norm is: noise std sigma / B.

    Flat clipping with the same C = 0.1 is the contrast: sigma C / B. 40,000 coordinates:
    tolerance 5 / sqrt(80,000) = 1.8% relative.
    """
    mech = dpsgd.Mechanism(clipping=clipping, clip_norm=C, noise_multiplier=SIGMA)
    zeros = {"w": jnp.zeros((200, 100)), "b": jnp.zeros(20_000)}
    tx = mech.privatized(optax.identity(), expected_batch_size=B, key=jax.random.key(1))
    noisy, _ = tx.update(zeros, tx.init(zeros), zeros)
    noise = _flat(noisy)
    std = SIGMA * sensitivity / B
    assert abs(noise.std() / std - 1) < 5 / math.sqrt(2 * noise.size)
    assert abs(noise.mean()) < 5 * std / math.sqrt(noise.size)


def test_privatizer_draws_fresh_noise_at_every_step_and_leaf():
    """Three steps of the privatizer on zero sums, two leaves of 20,000 coordinates each:
    every pair of (step, leaf) draws is uncorrelated, |r| < 5 / sqrt(20,000) = 0.035."""
    n = 20_000
    zeros = {"a": jnp.zeros(n), "b": jnp.zeros(n)}
    tx = toolkit.gaussian_privatizer(
        noise_multiplier=1.0, sensitivity=1.0, expected_batch_size=1.0, key=jax.random.key(0)
    )
    state = tx.init(zeros)
    draws = []
    for _ in range(3):
        out, state = tx.update(zeros, state)
        draws += [np.asarray(out["a"]), np.asarray(out["b"])]
    for i in range(len(draws)):
        assert abs(float(draws[i].std()) - 1.0) < 5 / math.sqrt(2 * n)  # noise on every leaf
        for j in range(i):
            assert abs(_corr(draws[i], draws[j])) < 5 / math.sqrt(n), (i, j)


class _TwoLayers(nnx.Module):
    """Two 100x100 kernels (10,000 coordinates each) and their biases."""

    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(100, 100, rngs=rngs)
        self.b = nnx.Linear(100, 100, rngs=rngs)

    def __call__(self, x):
        return self.a(x) + self.b(x)


def _zero_loss(outputs, labels):
    del labels
    return 0.0 * jnp.sum(outputs, axis=-1)  # every gradient is exactly 0


def _fit_params(epochs: int) -> dict[str, np.ndarray]:
    n = 40  # B = N: one step per epoch, q = 1
    x = np.random.default_rng(0).normal(size=(n, 100)).astype(np.float32)
    result = toolkit.fit(
        _TwoLayers(nnx.Rngs(0)), (x, np.zeros(n, np.int32)), loss_fn=_zero_loss,
        optimizer=optax.sgd(1.0), batch_size=n, epochs=epochs, clip_norm=C,
        clipping="automatic", noise_multiplier=SIGMA, seed=4, classification=False,
    )  # fmt: skip
    params = nnx.state(result.model, nnx.Param)
    return {
        "/".join(str(k) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(params)
    }


def test_fit_noise_under_automatic_clipping_has_std_sigma_over_b_and_is_fresh_each_step():
    """`toolkit.fit` with clipping="automatic", clip_norm=0.1, sigma=2, B=N=40 and a zero
    gradient: each step moves the parameters by exactly -noise / B with noise std sigma * 1
    (sigma * C would be 10 times smaller). Per kernel (10,000 coordinates) the std is within
    5 / sqrt(20,000) = 3.5%, and the draws of step 1 and step 2, and of the two kernels in
    one step, are uncorrelated within 5 / sqrt(10,000) = 0.05."""
    init = {
        "/".join(str(k) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(
            nnx.state(_TwoLayers(nnx.Rngs(0)), nnx.Param)
        )
    }
    one, two = _fit_params(1), _fit_params(2)
    step1 = {k: (init[k] - one[k]) * 40 for k in init}  # the noise of step 1, sgd(1.0)
    step2 = {k: (one[k] - two[k]) * 40 for k in init}
    kernels = sorted(k for k in init if "kernel" in k)
    assert len(kernels) == 2
    for noise in (step1, step2):
        for k, v in noise.items():
            tol = 5 / math.sqrt(2 * v.size)
            assert abs(v.std() / SIGMA - 1) < tol, (k, v.std())
        assert abs(_corr(noise[kernels[0]], noise[kernels[1]])) < 5 / math.sqrt(10_000)
    for k in kernels:
        assert abs(_corr(step1[k], step2[k])) < 5 / math.sqrt(10_000), k
