"""analysis.multiclass against independent computations: jax.grad, scipy, and the k=2 reduction."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from scipy.special import softmax

from analysis import multiclass as mc
from analysis import solvers
from analysis.losses import multiclass_loss
from analysis.precision import float64

TOL = 1e-11


def _gradient_norms(theta, z, y, t):
    """Per-example ||grad l_i|| = |T| ||z_i|| ||e_y - p_i|| (eq. 5 before bounding), numpy."""
    p = softmax(t * (z @ theta), axis=1)
    p[np.arange(len(y)), y] -= 1.0
    return abs(t) * np.linalg.norm(z, axis=1) * np.linalg.norm(p, axis=1)


def _data(n=16, dim=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim))
    z *= rng.uniform(0.3, 1.0, size=(n, 1)) / np.linalg.norm(z, axis=1, keepdims=True)
    return z, rng.integers(0, k, size=n).astype(np.int32)


@float64
def test_numpy_risk_and_eq5_gradient_norms_match_jax():
    z, y = _data()
    theta = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)) * 3.0)
    t = 2.5
    per = jax.jit(jax.vmap(lambda zi, yi: multiclass_loss(theta, zi, yi, inverse_temp=t)))
    grads = jax.jit(
        jax.vmap(lambda zi, yi: jax.grad(multiclass_loss)(theta, zi, yi, inverse_temp=t))
    )(jnp.asarray(z), jnp.asarray(y))
    # Both sides are O(1) sums of a dozen terms: agreement to ~1e-14 is rounding.
    assert mc.objective(np.asarray(theta), z, y, inverse_temp=t) == pytest.approx(
        float(jnp.mean(per(jnp.asarray(z), jnp.asarray(y)))), abs=1e-13
    )
    norms = np.linalg.norm(np.asarray(grads).reshape(len(y), -1), axis=1)
    np.testing.assert_allclose(_gradient_norms(np.asarray(theta), z, y, t), norms, rtol=1e-12)
    assert np.all(norms < math.sqrt(2) * t * np.linalg.norm(z, axis=1))


def _scipy_softmax(z, y, t, radius, k):
    """SLSQP on the Frobenius ball with the hand gradient -T z (e_y - p)^T (shares no code)."""
    n, d = z.shape

    def fun(flat):
        theta = flat.reshape(d, k)
        p = softmax(t * z @ theta, axis=1)
        e = np.eye(k)[y]
        value = -np.mean(np.log(p[np.arange(n), y]))
        return value, (-t * z.T @ (e - p) / n).ravel()

    res = scipy.optimize.minimize(
        fun,
        np.zeros(d * k),
        jac=True,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda v: radius**2 - v @ v, "jac": lambda v: -2 * v}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.fun


def test_unclipped_optimum_matches_scipy_within_the_certificate():
    z, y = _data()
    t, r = 3.0, 1.5
    # (C = 1e9, C = inf): same batch shape as solve_cells' (one compile for the file).
    sol = mc.clipped_gd(
        np.stack([z, z]),
        np.stack([y, y]),
        classes=3,
        inverse_temp=np.array([t, t]),
        clip_norm=np.array([1e9, math.inf]),
        radius=r,
        tol=TOL,
    )
    f_pgd = mc.objective(sol.next_point[1], z, y, inverse_temp=t)
    f_sp = _scipy_softmax(z, y, t, r, 3)
    assert sol.certified.all()
    # SLSQP has no certificate; it stops on a 1e-15 relative change. 1e-9 is the agreement
    # the binary grid accepts (theorem1.SCIPY_TOL). And scipy cannot beat the certified value.
    assert abs(f_pgd - f_sp) <= 1e-9
    assert f_sp >= f_pgd - sol.gap[1] - 1e-14
    # C = 1e9 never clips: the same run, bitwise.
    assert np.array_equal(sol.next_point[0], sol.next_point[1])


def _numpy_clipped_field(theta, z, y, t, c, k):
    p = softmax(t * z @ theta, axis=1)
    g = -t * z[:, :, None] * (np.eye(k)[y] - p)[:, None, :]  # eq. (5), per example (n, d, k)
    norms = np.linalg.norm(g.reshape(len(y), -1), axis=1)
    scale = np.where(norms > c, c / norms, 1.0)
    return np.mean(g * scale[:, None, None], axis=0)


def test_clipped_solution_is_a_fixed_point_of_an_independent_numpy_field():
    z, y = _data(seed=3)
    t, c, r = 4.0, 0.5, 2.0
    sol = mc.clipped_gd(
        np.stack([z, z]),
        np.stack([y, y]),
        classes=3,
        inverse_temp=np.array([t, t]),
        clip_norm=np.array([c, math.inf]),
        radius=r,
        tol=TOL,
    )
    assert sol.certified.all()
    theta = sol.point[0]
    eta = mc.step_size(z[None], np.array([t]))[0]
    step = theta - eta * _numpy_clipped_field(theta, z, y, t, c, 3)
    nxt = step * min(1.0, r / np.linalg.norm(step))
    # The residual is a difference of O(1) numbers divided by eta: rounding ~ eps / eta.
    residual = np.linalg.norm(theta - nxt) / eta
    assert residual <= TOL + 1e-13 / eta
    # The certificate is the Beck bound ||G(y)|| (||y|| + R) at the returned point.
    assert sol.gap[0] == pytest.approx(residual * (np.linalg.norm(theta) + r), rel=1e-3)
    # Clipping is active at the fixed point, and the bias is certified positive.
    assert _gradient_norms(theta, z, y, t).max() > c
    cell = mc.solve_cells([("d", z, y, t, c)], classes=3, radius=r, tol=TOL)[0]
    assert cell.excess > 1e-6


def test_two_classes_reduce_to_binary_with_c_over_sqrt2_and_radius_sqrt2():
    """k = 2: w = theta_1 - theta_0 follows binary clipped GD at (T, C/sqrt2, sqrt2 R).

    ||grad_theta||_F = sqrt2 ||grad_w||, and ||theta||_F = ||w|| / sqrt2 on the iterates
    (columns summing to 0), so the fixed points and risks coincide.
    """
    z, y01 = _data(k=2, seed=5)
    ybin = np.where(y01 == 1, 1.0, -1.0)
    t, c, r = 4.0, 1.0, 1.0
    cell = mc.solve_cells([("d", z, y01, t, c)], classes=2, radius=r, tol=TOL)[0]
    sol = solvers.projected_gd(
        np.stack([z, z]),
        np.stack([ybin, ybin]),
        inverse_temp=np.array([t, t]),
        clip_norm=np.array([c / math.sqrt(2), math.inf]),
        radius=math.sqrt(2) * r,
        tol=TOL,
    )
    binary = solvers.objective(sol.theta[0], z, ybin, inverse_temp=t) - solvers.objective(
        sol.theta[1], z, ybin, inverse_temp=t
    )
    assert binary > 1e-4
    # Both excesses are certified to ~2R tol (fixed points pinned to ~tol / curvature).
    assert cell.excess == pytest.approx(binary, abs=1e-8)


def test_threshold_witness_is_positive_below_and_exactly_zero_at_sqrt2():
    row = mc.check_threshold(tol=1e-12)
    assert row.passed, row
    assert row.details["excess at sqrt2 T max||z||"] == 0.0
    assert row.value > 1e-10


def test_grid_rows_zero_above_threshold_and_trend():
    ds = mc.make_multiclass_datasets(n=24, dim=3, classes=3, seed=0)[:2]
    cells = mc.run_grid(ds, temperatures=(0.5, 2.0), clip_norms=(0.25, 1.0), radius=1.0, tol=1e-10)
    rows = mc.check_grid(cells, tol=1e-10)
    assert all(r.passed for r in rows), rows
    above = [c for c in cells if c.above_threshold]
    assert above and all(c.excess == 0.0 for c in above)
    # Below the threshold with T > C the field is clipped at the solution: bias > 0.
    assert all(c.excess > 0 for c in cells if c.inverse_temp == 2.0 and c.clip_norm == 0.25)
