"""Check 4 (analysis.solvers, analysis.theorem1) against closed forms and a second solver."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.special import expit

from analysis import solvers, theorem1
from analysis.datasets import DATASET_KINDS, make_datasets
from analysis.losses import huberised_binary_loss
from analysis.precision import EPS, float64

# Two clusters on the e1 axis: 3 points (e1, +1) and 1 point (e1, -1), T = 4, C = 1.
# Unclipped: 3 sigma(-T th) = sigma(T th) -> theta* = ln(3) / T.
# Clipped: the lone point is clipped (T sigma(T th) > C) and the others are not, so
# 3 T sigma(-T th) = C -> theta_c = ln(3 T / C - 1) / T = ln(11) / 4.
T, C, R = 4.0, 1.0, 2.0
THETA_STAR = math.log(3.0) / T
THETA_CLIPPED = math.log(3 * T / C - 1) / T


def two_cluster(dim: int = 3):
    z = np.zeros((4, dim))
    z[:, 0] = 1.0
    return z, np.array([1.0, 1.0, 1.0, -1.0])


def test_projected_gd_finds_closed_form_optima():
    z, y = two_cluster()
    sol = solvers.projected_gd(
        np.stack([z, z]),
        np.stack([y, y]),
        inverse_temp=np.array([T, T]),
        clip_norm=np.array([C, math.inf]),
        radius=R,
        tol=1e-12,
    )
    assert sol.certified.all()
    # Curvature at both optima is >= 0.1, so ||G|| <= 1e-12 pins theta to ~1e-11.
    assert sol.theta[0] == pytest.approx([THETA_CLIPPED, 0, 0], abs=1e-10)
    assert sol.theta[1] == pytest.approx([THETA_STAR, 0, 0], abs=1e-10)
    assert sol.ever_clipped.tolist() == [True, False]

    def risk(th):
        return 0.75 * math.log1p(math.exp(-T * th)) + 0.25 * math.log1p(math.exp(T * th))

    excess = solvers.objective(sol.theta[0], z, y, inverse_temp=T) - solvers.objective(
        sol.theta[1], z, y, inverse_temp=T
    )
    assert excess == pytest.approx(risk(THETA_CLIPPED) - risk(THETA_STAR), abs=1e-12)
    assert 0 < excess <= theorem1.paper_bound(T, C, R)


def test_projected_gd_stops_on_the_boundary_for_separable_data():
    z, y = two_cluster()
    y = np.ones(4)  # separable: the optimum is the boundary point R e1, for any C
    sol = solvers.projected_gd(
        z[None], y[None], inverse_temp=np.array([T]), clip_norm=np.array([C]), radius=R, tol=1e-12
    )
    assert sol.theta[0] == pytest.approx([R, 0, 0], abs=1e-12)


@float64
def test_numpy_surrogate_matches_jax_surrogate_and_its_autodiff():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(20, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True) * rng.uniform(1.0, 4.0, size=(20, 1))
    y = rng.choice([-1.0, 1.0], size=20)

    def mean_hub(th):
        per = jax.vmap(
            lambda zi, yi: huberised_binary_loss(th, zi, yi, inverse_temp=3.0, clip_norm=0.4)
        )(z, y)
        return per.mean()

    value_and_grad = jax.jit(jax.value_and_grad(mean_hub))
    for _ in range(5):
        theta = rng.normal(size=3) * 2
        jax_value, jax_grad = value_and_grad(theta)
        value, grad = solvers.surrogate_value_and_grad(theta, z, y, inverse_temp=3.0, clip_norm=0.4)
        # Two implementations (numpy by hand, JAX + autodiff): round-off only.
        assert value == pytest.approx(float(jax_value), abs=1e-14)
        np.testing.assert_allclose(grad, np.asarray(jax_grad), atol=1e-14)


@pytest.mark.parametrize("t, c, r", [(2.0, 1.0, 1.0), (8.0, 0.1, 1.0), (1.0, 0.5, 4.0)])
def test_sharpened_bound_matches_quadrature(t, c, r):
    # G = max over ||z|| of int_{-R}^{R} (T rho sigma(-T rho s) - C)_+ ds, by scipy quad.
    def gap(rho):
        value, _ = quad(
            lambda s: max(t * rho * expit(-t * rho * s) - c, 0.0), -r, r, limit=200, epsabs=1e-13
        )
        return value

    reference = max(gap(rho) for rho in np.linspace(0.01, 1.0, 100))
    got = theorem1.sharpened_bound(t, c, r)
    assert got == pytest.approx(reference, rel=1e-6)  # the rho grid of 100 limits the reference
    assert got <= (t - c) * 2 * r  # half the paper's bound


def test_no_bias_threshold_is_where_the_sharpened_bound_vanishes():
    t, r = 2.0, 1.0
    c0 = theorem1.no_bias_threshold(1.0, t, r)  # = T sigma(T R) < T
    assert c0 == pytest.approx(t * expit(t * r))
    assert theorem1.sharpened_bound(t, c0 * (1 + 1e-9), r) == 0.0
    assert theorem1.sharpened_bound(t, c0 * 0.99, r) > 0.0


def test_datasets_have_unit_bounded_norms_and_pm1_labels():
    for d in make_datasets(n=40, dim=3, seed=1):
        assert d.name in DATASET_KINDS
        assert np.all(np.linalg.norm(d.z, axis=1) <= 1 + 4 * EPS)
        assert set(np.unique(d.y)) <= {-1.0, 1.0}


def test_grid_respects_bound_zero_bias_and_scipy():
    datasets = make_datasets(n=16, dim=3, seed=0)
    cells = theorem1.run_grid(
        datasets, temperatures=(1.0, 4.0), clip_norms=(0.5, 8.0), radius=1.0, tol=1e-10
    )
    assert len(cells) == len(DATASET_KINDS) * 4
    for cell in cells:
        # Bound recomputed here from its definition: 2 max(T - C, 0) times diameter 2R.
        bound = 2 * max(cell.inverse_temp - cell.clip_norm, 0.0) * 2 * cell.radius
        assert cell.bound == bound
        assert cell.certified
        assert cell.excess <= bound + cell.cert_clipped
        assert cell.scipy_error <= theorem1.SCIPY_TOL
        if cell.clip_norm >= cell.inverse_temp * cell.max_norm:
            assert abs(cell.excess) <= cell.cert_clipped + cell.cert_unclipped
            assert not cell.ever_clipped
    assert all(r.passed for r in theorem1.check_theorem1(cells, tol=1e-10))


def test_momentum_phase_certifies_a_nearly_flat_surrogate():
    # C << T: most gradients are clipped, the surrogate is nearly flat and plain GD
    # crawls; after PLAIN_STEPS the solver adds momentum. Its answer must still agree
    # with SLSQP (an unrelated solver) on the surrogate's optimal value.
    datasets = make_datasets(n=16, dim=3, seed=0)[:1]
    cells = theorem1.run_grid(
        datasets, temperatures=(32.0,), clip_norms=(0.01,), radius=4.0, tol=1e-10
    )
    (cell,) = cells
    assert cell.iterations > solvers.PLAIN_STEPS and cell.certified
    # The certificate was computed at the extrapolated point: numpy redoes it there.
    assert cell.cert_recheck <= 1.0
    assert cell.scipy_error <= theorem1.SCIPY_TOL and cell.scipy_below_certificate
    assert cell.excess <= cell.bound + cell.cert_clipped


@pytest.mark.parametrize(
    "t, c, r",
    [(2.0, 1.0, 1.0), (8.0, 0.1, 1.0), (1.0, 0.1, 1.0), (0.5, 0.1, 2.0), (32.0, 0.01, 4.0)],
)
def test_sharpened_bound_by_trapezoid_matches_scipy_quad(t, c, r):
    # (1, 0.1, 1) has t0 > R at the maximiser (sigma(-1) > 0.1): the clipping interval
    # must stop at the ball's edge. Reference: scipy quad at each rho of a grid, refined.
    def gap(rho):
        f = lambda s: max(t * rho * expit(-t * rho * s) - c, 0.0)  # noqa: E731
        return quad(f, -r, r, limit=400, epsabs=1e-13, epsrel=1e-12)[0]

    rhos = np.linspace(0.005, 1.0, 200)
    j = int(np.argmax([gap(x) for x in rhos]))
    lo, hi = rhos[max(j - 1, 0)], rhos[min(j + 1, len(rhos) - 1)]
    reference = max(gap(x) for x in np.linspace(lo, hi, 41))
    # Both are maxima over rho grids of a function flat at its max: 1e-6 relative.
    assert theorem1.sharpened_bound_by_quadrature(t, c, r) == pytest.approx(reference, rel=1e-6)
    assert theorem1.sharpened_bound(t, c, r) == pytest.approx(reference, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    t=st.floats(0.05, 64.0),
    c_frac=st.floats(0.001, 0.999),
    r=st.floats(0.01, 10.0),
)
def test_sharpened_bound_is_below_a_quarter_of_the_paper_bound(t, c_frac, r):
    # Proved in analysis.theorem1: G < R (T - C) = bound / 4 whenever T > C.
    c = c_frac * t
    assert theorem1.sharpened_bound(t, c, r) < theorem1.paper_bound(t, c, r) / 4


def test_measured_diameter_is_twice_the_radius():
    for r in (0.5, 1.0, 3.0):
        assert theorem1.measured_diameter(r, dim=4, seed=0) == pytest.approx(2 * r, rel=1e-15)


def _closed_form_solution(tol, *, t=T, c=C, r=R):
    z, y = two_cluster()
    sol = solvers.projected_gd(
        np.stack([z, z]),
        np.stack([y, y]),
        inverse_temp=np.array([t, t]),
        clip_norm=np.array([c, math.inf]),
        radius=r,
        tol=tol,
    )
    return z, y, sol


def test_loose_certificate_bounds_the_true_suboptimality():
    # At tol = 1e-3 the certificate is far from 0, and the exact optima are known in
    # closed form (THETA_CLIPPED, THETA_STAR): f(theta) - f* must be <= gap.
    z, y, sol = _closed_form_solution(1e-3)
    for i, (c, th_exact) in enumerate([(C, THETA_CLIPPED), (math.inf, THETA_STAR)]):
        exact = np.zeros(3)
        exact[0] = th_exact
        f, _ = solvers.surrogate_value_and_grad(sol.theta[i], z, y, inverse_temp=T, clip_norm=c)
        f_star, _ = solvers.surrogate_value_and_grad(exact, z, y, inverse_temp=T, clip_norm=c)
        assert 0 <= f - f_star <= sol.gap[i]
        assert sol.gap[i] > 1e-6  # the check is not vacuous


def test_recheck_certificate_reproduces_the_solver_and_flags_a_wrong_gap():
    z, y, sol = _closed_form_solution(1e-12)
    args = dict(inverse_temp=np.array([T, T]), clip_norm=np.array([C, math.inf]))
    zz, yy = np.stack([z, z]), np.stack([y, y])
    assert solvers.recheck_certificate(sol, zz, yy, **args).max() <= 1.0
    # A certificate computed as ||G|| R (not ||G|| (||y|| + R)) must be flagged.
    wrong = dataclasses.replace(sol, gap=sol.gradient_mapping * R)
    assert solvers.recheck_certificate(wrong, zz, yy, **args)[:, 3].max() > 1.0
    # So must an anchor that is not the point the last step started from.
    moved = dataclasses.replace(sol, anchor=sol.anchor + 1e-6)
    assert solvers.recheck_certificate(moved, zz, yy, **args).max() > 1.0


def test_theorem1_rows_fail_on_a_negative_excess():
    cells = theorem1.run_grid(
        make_datasets(n=16, dim=3, seed=0)[:1],
        temperatures=(4.0,),
        clip_norms=(0.5,),
        radius=1.0,
        tol=1e-10,
    )
    assert all(r.passed for r in theorem1.check_theorem1(cells, tol=1e-10))
    bad = [dataclasses.replace(cells[0], excess=-1e-6)]
    rows = {r.name: r.passed for r in theorem1.check_theorem1(bad, tol=1e-10)}
    assert not rows["Thm 1: max excess/(4R max(T-C,0))"]
    assert not rows["Thm 1: excess in [-cert, G + cert]"]


def test_certificate_is_reproduced_mid_momentum():
    # Stopped a few steps into the momentum phase, where the extrapolated point y (the
    # anchor) differs from the iterate: numpy must redo G and the certificate at y.
    d = make_datasets(n=16, dim=3, seed=0)[0]
    args = dict(inverse_temp=np.array([32.0]), clip_norm=np.array([0.01]))
    sol = solvers.projected_gd(
        d.z[None], d.y[None], **args, radius=4.0, tol=1e-10, max_iter=solvers.PLAIN_STEPS + 25
    )
    assert not sol.certified[0] and sol.iterations[0] == solvers.PLAIN_STEPS + 25
    assert np.linalg.norm(sol.anchor[0] - sol.theta[0]) > 0  # momentum is active
    assert solvers.recheck_certificate(sol, d.z[None], d.y[None], **args).max() <= 1.0


def test_shared_data_glm_path_matches_the_per_example_path():
    # The same problems solved two ways: z of shape (n, d) shared by the batch (the GLM
    # field, Z^T (dl/ds * factors) / n) and z stacked per problem (autodiff of every
    # per-example gradient). Includes a momentum-phase problem (T = 32, C = 0.01).
    d = make_datasets(n=32, dim=4, seed=2)[3]  # `spread`: norms over 3 decades
    args = dict(
        inverse_temp=np.array([1.0, 4.0, 32.0, 4.0]),
        clip_norm=np.array([0.3, 0.5, 0.01, math.inf]),
        radius=np.array([1.0, 1.0, 4.0, 1.0]),
    )
    shared = solvers.projected_gd(d.z, d.y, **args, tol=1e-10)
    stacked = solvers.projected_gd(np.stack([d.z] * 4), np.stack([d.y] * 4), **args, tol=1e-10)
    assert shared.certified.all() and stacked.certified.all()
    assert shared.ever_clipped.tolist() == stacked.ever_clipped.tolist() == [
        True, True, True, False,
    ]  # fmt: skip
    for i, (t, c) in enumerate(zip(args["inverse_temp"], args["clip_norm"])):
        a, _ = solvers.surrogate_value_and_grad(shared.theta[i], d.z, d.y, inverse_temp=t,
                                                clip_norm=c)  # fmt: skip
        b, _ = solvers.surrogate_value_and_grad(stacked.theta[i], d.z, d.y, inverse_temp=t,
                                                clip_norm=c)  # fmt: skip
        # Both are within their certificate of the same minimum value.
        assert abs(a - b) <= shared.gap[i] + stacked.gap[i]
    # The certificates of the shared path are redone in numpy like the stacked ones.
    assert solvers.recheck_certificate(shared, d.z, d.y, **{k: args[k] for k in
                                       ("inverse_temp", "clip_norm")}).max() <= 1.0  # fmt: skip


@float64
def test_glm_field_equals_the_per_example_field():
    # Two formulas for mean_i clip_C(grad l_i): round-off only (gradients are O(T) = O(4)).
    rng = np.random.default_rng(5)
    d = make_datasets(n=40, dim=6, seed=5)[3]
    norms = np.linalg.norm(d.z, axis=1)
    for c in (0.05, 0.5, math.inf):
        theta = rng.normal(size=6)
        glm, glm_any = solvers._glm_clipped_field(theta, d.z, d.y, norms, 4.0, c)
        ref, ref_any = solvers._clipped_field(theta, d.z, d.y, 4.0, c)
        np.testing.assert_allclose(np.asarray(glm), np.asarray(ref), rtol=0, atol=64 * EPS)
        assert bool(glm_any) == bool(ref_any)


def test_frank_wolfe_gap_bounds_the_suboptimality_and_is_small_at_the_optimum():
    # Closed-form optima (two_cluster): the gap at a point is >= f(point) - f*, and at the
    # PGD output it is <= 4R ||G|| (derived in solvers.frank_wolfe_gap).
    z, y, sol = _closed_form_solution(1e-12)
    for i, (c, th_exact) in enumerate([(C, THETA_CLIPPED), (math.inf, THETA_STAR)]):
        exact = np.zeros(3)
        exact[0] = th_exact
        f_star, _ = solvers.surrogate_value_and_grad(exact, z, y, inverse_temp=T, clip_norm=c)
        off = exact + np.array([0.3, -0.2, 0.1])  # a point inside the ball, not optimal
        f_off, _ = solvers.surrogate_value_and_grad(off, z, y, inverse_temp=T, clip_norm=c)
        gap_off = solvers.frank_wolfe_gap(off, z, y, inverse_temp=T, clip_norm=c, radius=R)
        assert gap_off >= f_off - f_star > 1e-3
        gap = solvers.frank_wolfe_gap(sol.theta[i], z, y, inverse_temp=T, clip_norm=c, radius=R)
        assert -64 * EPS * R * T <= gap <= 4 * R * sol.gradient_mapping[i] + 64 * EPS * R * T
