"""Checks 1-3 (analysis.bounds): each compared with a computation that does not use it."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

from analysis import bounds
from analysis.precision import EPS, float64
from toolkit.nn import tempered_sigmoid


@float64
def test_tempered_221_is_numpy_tanh_float64():
    x = np.linspace(-20.0, 20.0, 20_001)
    got = np.asarray(tempered_sigmoid(x, scale=2.0, inverse_temp=2.0, offset=1.0))
    # 2 sigmoid(2x) - 1 subtracts O(1) numbers: a few ulps of 1, absolute.
    assert np.max(np.abs(got - np.tanh(x))) <= 4 * EPS


@float64
@pytest.mark.parametrize("s, t, o", [(2.0, 2.0, 1.0), (1.58, 3.0, 0.71), (0.5, 8.0, 0.25)])
def test_tempered_derivative_peaks_at_st_over_4(s, t, o):
    # Independent: central differences of the function itself, and the closed form s T / 4.
    h = 1e-6
    x = np.linspace(-3.0, 3.0, 601)
    fd = (
        np.asarray(tempered_sigmoid(x + h, scale=s, inverse_temp=t, offset=o))
        - np.asarray(tempered_sigmoid(x - h, scale=s, inverse_temp=t, offset=o))
    ) / (2 * h)
    # FD error: h^2 |phi'''| / 6 + eps / h, both < 1e-9 here.
    assert np.max(fd) == pytest.approx(s * t / 4, abs=1e-8)
    assert x[np.argmax(fd)] == pytest.approx(0.0, abs=1e-12)


def test_sigmoid_check_rows_all_pass():
    rows = bounds.check_tempered_sigmoid(grid_size=2001)
    assert [r.passed for r in rows] == [True] * 4


@float64
def test_eq4_gradient_matches_finite_differences_of_numpy_loss():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) / 3
    th = rng.normal(size=(50, 4))
    y = rng.choice([-1.0, 1.0], size=50)
    t = rng.choice([-2.0, 0.5, 3.0], size=50)

    def loss(theta):
        return np.logaddexp(0.0, -t * y * np.sum(z * theta, axis=1))

    h = 1e-6
    fd = np.stack([(loss(th + h * e) - loss(th - h * e)) / (2 * h) for e in np.eye(4)], axis=1)
    # Central differences: O(h^2 T^3) + O(eps / h) ~ 1e-9.
    np.testing.assert_allclose(bounds.eq4_gradient(th, z, y, t), fd, atol=1e-8)


def test_eq4_ratio_on_adversarial_points_is_sigmoid_of_margin():
    (row, agree) = bounds.check_eq4(num_random=100, dim=3, seed=0)
    assert row.passed and agree.passed
    curve = next(v for k, v in row.details.items() if k.startswith("1 - ratio"))
    for tm, one_minus in curve.items():
        # 1 - sigmoid(-x) = sigmoid(x), by scipy. The ratio is ||g|| / (|T| ||z||): two
        # norms and a division, a few ulps of 1 each, hence 8 eps absolute on 1 - ratio.
        assert one_minus == pytest.approx(expit(float(tm)), abs=8 * EPS)


@pytest.mark.parametrize("k", [2, 10, 100])
def test_eq5_one_wrong_class_witness_matches_closed_form(k):
    theta, z, y = bounds.one_wrong_class_witness(k=k, dim=3, wrong_logit=6.0)
    g = bounds.eq5_gradient(theta[None], z[None], np.array([y]), np.array([1.0]))[0]
    # p_wrong = e^6 / (e^6 + k - 1), every other class (y included) 1 / (e^6 + k - 1).
    denom = math.exp(6.0) + k - 1
    p_other, p_wrong = 1.0 / denom, math.exp(6.0) / denom
    expected = math.sqrt((1 - p_other) ** 2 + p_wrong**2 + (k - 2) * p_other**2)
    assert np.linalg.norm(g) == pytest.approx(expected, rel=1e-14)


def test_eq5_check_reports_sqrt_two_over_k():
    rows = bounds.check_eq5(num_random=20, dim=3, seed=0)
    assert all(r.passed for r in rows)
    for k, d in rows[0].details["per k"].items():
        # The witness gets within 1e-12 of sqrt(2)|T| ||z||, so the paper ratio is sqrt(2/k).
        assert d["sup ratio to sqrt(k)|T|||z|| (paper)"] == pytest.approx(
            math.sqrt(2 / int(k)), rel=1e-9
        )


@settings(max_examples=50, deadline=None)
@given(
    logits=st.lists(st.floats(-30, 30), min_size=2, max_size=12),
    y=st.integers(0, 11),
)
def test_softmax_residual_never_exceeds_sqrt_two(logits, y):
    # The inequality behind the tight eq. (5) bound, checked on scipy-free numpy.
    p = np.exp(np.array(logits) - max(logits))
    p /= p.sum()
    y = y % len(p)
    e = np.zeros_like(p)
    e[y] = 1.0
    sq = np.sum((e - p) ** 2)
    assert sq <= 2 * (1 - p[y]) ** 2 + 4 * EPS
    assert sq <= 2 + 4 * EPS


@float64
def test_autodiff_gradients_agree_with_eq5_closed_form():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(6, 3, 5))
    z = rng.normal(size=(6, 3)) / 2
    y = rng.integers(0, 5, size=6).astype(np.int32)
    t = np.full(6, 1.7)
    got = np.asarray(bounds._multiclass_grads(theta, z, y, t))
    np.testing.assert_allclose(got, bounds.eq5_gradient(theta, z, y, t), atol=1e-14)


def test_float64_context_does_not_flip_global_config():
    before = jax.config.jax_enable_x64
    bounds.check_tempered_sigmoid(grid_size=101)
    assert jax.config.jax_enable_x64 == before
