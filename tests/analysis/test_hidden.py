"""analysis.hidden: the per-layer gradient bounds hold (tanh, any weights) and are tight where
a construction attains them, so a wrong constant fails."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from analysis import hidden
from toolkit.nn import ActivationSpec, build_model

# Per-example gradients are float32: a measured norm can exceed its exact value by ~1e-6
# relative; the bounds are float64. 1e-5 relative slack covers the rounding, no more.
SLACK = 1 + 1e-5
SPECS = (ActivationSpec("tanh"), ActivationSpec("tempered", scale=3.0, inverse_temp=0.5,
         offset=1.0), ActivationSpec("sigmoid"))  # fmt: skip


def _set(model, name, kernel=None, bias=None):
    layer = getattr(model, name)
    if kernel is not None:
        layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
    if bias is not None:
        layer.bias[...] = jnp.asarray(bias, jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_bounds_hold_on_random_weights_and_inputs(spec):
    model = build_model("fashion-mnist", spec, seed=0)
    rng = np.random.default_rng(0)
    slope = hidden.slope_of(spec)
    for scale in (0.3, 1.0, 5.0):  # small weights (steepest slope) to saturating ones
        for name in hidden.LAYERS:  # random weights of every size, biases too
            layer = getattr(model, name)
            _set(model, name, rng.normal(size=layer.kernel.shape) * scale / 4,
                 rng.normal(size=layer.bias.shape) * scale)  # fmt: skip
        x = rng.uniform(0, 1, size=(6, 28, 28, 1)).astype(np.float32)
        x[3] *= 20  # an input far outside [0, 1]
        y = rng.integers(0, 10, 6).astype(np.int32)
        m = hidden.measure(model, x, y)
        params = nnx.state(model, nnx.Param)
        for i in range(6):
            bound = hidden.layer_bounds(params, slope, float(m["act_x"][i]))
            forward = {k: m[f"fwd_{k}"][i] for k in bound}
            dd = hidden.data_dependent_bounds(params, slope, forward)
            for name in hidden.LAYERS:
                assert m[name][i] <= dd[name] * SLACK <= bound[name] * SLACK**2, (scale, name, i)


def _saturating(spec, *, fc1_zero: bool):
    """Weights that attain the fc2 bound (fc1_zero=False) or the fc1 bound (True).

    conv2's bias +50 saturates a2 (hence h) at s - o = A; class 0 gets all the softmax mass
    (fc2 bias) while the label is 1, so ||p - e_y|| -> sqrt(2). For fc2: fc1's bias +50
    saturates a3 at A. For fc1: fc1 = 0 puts u3 at 0 where phi' = D, and fc2's kernel is
    c u v^T + (c/2) u' v'^T with v = (e0 - e1)/sqrt(2): W4 Delta4 = c sqrt(2) u, so
    ||Delta3|| = D ||W4||_2 sqrt(2) exactly, while ||W4||_F > ||W4||_2.
    """
    model = build_model("fashion-mnist", spec, seed=0)
    _set(model, "conv2", bias=np.full(32, 50.0))
    fc2_bias = np.zeros(10)
    fc2_bias[0] = 60.0
    if not fc1_zero:
        _set(model, "fc1", kernel=np.zeros((512, 32)), bias=np.full(32, 50.0))
        _set(model, "fc2", kernel=np.zeros((32, 10)), bias=fc2_bias)
    else:
        _set(model, "fc1", kernel=np.zeros((512, 32)), bias=np.zeros(32))
        u, u2 = np.eye(32)[0], np.eye(32)[1]
        v, v2 = (np.eye(10)[0] - np.eye(10)[1]) / np.sqrt(2), np.eye(10)[5]
        _set(model, "fc2", kernel=0.5 * np.outer(u, v) + 0.25 * np.outer(u2, v2), bias=fc2_bias)
    return model


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.label)
@pytest.mark.parametrize("layer", ["fc2", "fc1"])
def test_bound_is_attained_so_a_wrong_constant_fails(spec, layer):
    model = _saturating(spec, fc1_zero=layer == "fc1")
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 28, 28, 1)).astype(np.float32)
    y = np.ones(2, np.int32)
    m = hidden.measure(model, x, y)
    bound = hidden.layer_bounds(nnx.state(model, nnx.Param), hidden.slope_of(spec), 1.0)
    ratio = m[layer] / bound[layer]
    # Attained up to p_y = exp(-60) and float32 rounding: 1e-5 either side.
    assert np.all(ratio <= SLACK) and np.all(ratio >= 1 - 1e-5), ratio


def test_max_pool_adjoint_gain_two_is_attained():
    # One entry is the maximum of all four 2x2 windows containing it: the adjoint of the
    # pool sends all four window gradients there, ||pool^T v|| = 4 = 2 ||v|| for v = 1.
    a = np.zeros((1, 3, 3, 1), np.float32)
    a[0, 1, 1, 0] = 1.0
    pool = lambda t: nnx.max_pool(t, (2, 2), strides=(1, 1), padding="VALID")  # noqa: E731
    out, vjp = jax.vjp(pool, jnp.asarray(a))
    (back,) = vjp(jnp.ones_like(out))
    assert float(jnp.linalg.norm(back)) == pytest.approx(hidden.POOL_GAIN * 2.0, rel=1e-7)


def test_patch_counts_match_an_explicit_convolution():
    # sum_p ||patch_p(v)||^2 for v = 1 counts the in-bounds (patch, entry) pairs; the
    # adjoint of an all-ones convolution applied to 1 gives each input's coverage.
    for size, k, stride, padding in [(28, 8, 2, "SAME"), (13, 4, 2, "VALID")]:
        ones = jnp.ones((1, size, size, 1))
        conv = lambda t, k=k, stride=stride, padding=padding: jax.lax.conv_general_dilated(  # noqa: E731
            t, jnp.ones((k, k, 1, 1)), (stride, stride), padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        out, vjp = jax.vjp(conv, ones)
        (cover,) = vjp(jnp.ones_like(out))
        c = hidden.coverage_1d(size, k, stride, padding)
        np.testing.assert_array_equal(np.asarray(cover)[0, :, :, 0], np.outer(c, c))
        assert float(jnp.sum(out)) == c.sum() ** 2
    assert hidden._max_coverage(hidden._CONV1) == 16 and hidden._pairs(hidden._CONV2) == 6400
