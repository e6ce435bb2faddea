"""Check 6 (analysis.conservative): line and loop integrals as the independent computation.

A field F is the gradient of L_hat iff L_hat(b) - L_hat(a) = int_a^b F . dl along
every path; it is conservative only if its circulation around every loop is 0.
Both are computed here with scipy's adaptive quadrature, which shares nothing
with `jax.jacfwd`.
"""

import jax
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import expit

from analysis import conservative
from analysis.precision import float64

T, C = 2.0, 0.5


def data(n=24, dim=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    z *= rng.uniform(0.2, 1.0, size=(n, 1)) / np.linalg.norm(z, axis=1, keepdims=True)
    return z, rng.choice([-1.0, 1.0], size=n), rng.integers(0, classes, size=n)


def kinks(path, z, y, lo, hi):
    """Parameters where some example's gradient norm crosses C along `path` (numpy, eq. 4).

    The clipped field is continuous but kinked there; quad is given them as breakpoints
    so that every piece it integrates is smooth.
    """
    rho = np.linalg.norm(z, axis=1)

    def excess_norm(s):
        return T * rho * expit(-T * y * (z @ path(s))) - C

    grid = np.linspace(lo, hi, 4001)
    signs = np.sign(np.stack([excess_norm(s) for s in grid]))
    out = []
    for i in range(len(z)):
        for k in np.flatnonzero(signs[:-1, i] * signs[1:, i] < 0):
            out.append(brentq(lambda s, i=i: excess_norm(s)[i], grid[k], grid[k + 1], xtol=1e-15))
    return sorted(out)


def piecewise_quad(f, lo, hi, breaks):
    edges = [lo, *breaks, hi]
    return sum(quad(f, u, v, epsabs=1e-14, epsrel=1e-13)[0] for u, v in zip(edges, edges[1:]))


@float64
def test_binary_surrogate_difference_equals_line_integral_of_clipped_field():
    z, y, _ = data()
    field = jax.jit(
        lambda th: conservative.binary_clipped_field(th, z, y, inverse_temp=T, clip_norm=C)
    )
    a, b = np.array([-2.0, 1.0, 0.5]), np.array([1.5, -1.0, 2.0])

    def path(s):
        return a + s * (b - a)

    breaks = kinks(path, z, y, 0.0, 1.0)
    assert breaks  # the path does cross clipping boundaries
    integral = piecewise_quad(lambda s: float(np.asarray(field(path(s))) @ (b - a)), 0, 1, breaks)

    def surrogate(th):
        return float(conservative.binary_surrogate(th, z, y, inverse_temp=T, clip_norm=C))

    # Smooth pieces: quad reaches ~1e-14 on each; 1e-11 leaves room for ~20 pieces.
    assert surrogate(b) - surrogate(a) == pytest.approx(integral, abs=1e-11)


def _circle(centre, i, j, radius=0.5):
    def path(phi):
        th = centre.copy()
        th[i] += radius * np.cos(phi)
        th[j] += radius * np.sin(phi)
        return th

    def tangent(phi):
        v = np.zeros_like(centre)
        v[i], v[j] = -radius * np.sin(phi), radius * np.cos(phi)
        return v

    return path, tangent


@float64
def test_clipped_binary_field_has_no_circulation_but_softmax_field_does():
    z, y, y_multi = data(classes=3)
    bfield = jax.jit(
        lambda th: conservative.binary_clipped_field(th, z, y, inverse_temp=T, clip_norm=C)
    )
    mfield = jax.jit(
        lambda th: conservative.multiclass_clipped_field(
            th, z, y_multi, inverse_temp=T, clip_norm=C, k=3
        )
    )
    rng = np.random.default_rng(1)
    binary = []
    for _ in range(2):
        path, tangent = _circle(rng.normal(size=3) * 2, 0, 1)
        breaks = kinks(path, z, y, 0.0, 2 * np.pi)
        binary.append(
            piecewise_quad(
                lambda p, path=path, tangent=tangent: float(
                    np.asarray(bfield(path(p))) @ tangent(p)
                ),
                0.0,
                2 * np.pi,
                breaks,
            )
        )
    softmax = []
    for i, j in [(0, 4), (1, 5)]:
        path, tangent = _circle(rng.normal(size=9) * 2, i, j)
        softmax.append(
            quad(
                lambda p, path=path, tangent=tangent: float(
                    np.asarray(mfield(path(p))) @ tangent(p)
                ),
                0.0,
                2 * np.pi,
                limit=200,
            )[0]
        )
    assert max(abs(v) for v in binary) <= 1e-11  # a gradient field: zero to quadrature error
    assert max(abs(v) for v in softmax) >= 1e-3  # clearly non-zero: the gradient of nothing


def test_check_conservative_rows_pass_and_agree_with_finite_differences():
    rows = conservative.check_conservative(
        n=16, dim=3, classes=3, inverse_temp=T, clip_norm=C, points=2, seed=0
    )
    assert [r.passed for r in rows] == [True] * 4
    # Row 0: ||J - H|| / ||H|| with H the hand-derived Hessian of L_hat (round-off).
    assert rows[0].value <= 1e-12 and rows[2].value >= 0.05
    # Without clipping the softmax field is grad L_T: symmetric to round-off.
    assert rows[2].details["asymmetry without clipping"] <= 1e-12


def test_asymmetry_of_known_matrices():
    assert conservative.asymmetry(np.eye(3)) == 0.0
    assert conservative.asymmetry(np.zeros((2, 2))) == 0.0
    # [[0, 1], [0, 0]]: ||J - J^T|| = sqrt(2), ||J|| = 1.
    assert conservative.asymmetry(np.array([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(np.sqrt(2))


def test_binary_jacobian_is_the_hand_derived_hessian_of_the_surrogate():
    # Independent reference: central differences of the numpy hand-derived gradient
    # (analysis.solvers), compared with the closed-form Hessian mean_i h''(m_i) z_i z_i^T.
    from analysis import solvers

    z, y, _ = data()
    rng = np.random.default_rng(5)
    h = 1e-6
    for _ in range(3):
        theta = rng.normal(size=3) * 2.0

        def grad(th):
            return solvers.surrogate_value_and_grad(th, z, y, inverse_temp=T, clip_norm=C)[1]

        fd = np.stack([(grad(theta + h * e) - grad(theta - h * e)) / (2 * h) for e in np.eye(3)])
        hess = conservative.binary_surrogate_hessian(theta, z, y, inverse_temp=T, clip_norm=C)
        # Central differences: O(h^2 T^4) + O(eps / h) ~ 1e-9 (no kink within h here).
        np.testing.assert_allclose(hess, fd, atol=1e-8)
