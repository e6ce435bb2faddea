"""analysis.sharp: the witness by hand, and the dual bound against solved random datasets."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from analysis import sharp, solvers
from analysis.theorem1 import paper_bound


def test_limit_witness_matches_a_hand_solution():
    t, c, r, n = 32.0, 0.01, 1.0, 64
    w, info = sharp.limit_witness(t, c, r, n)
    k, a = w.counts[0], info["a"]
    p = k / n

    # 1-D objective in theta along e: k points with u = +1, n - k with u = -a.
    def risk(th):
        return p * math.log1p(math.exp(-t * th)) + (1 - p) * math.log1p(math.exp(-t * a * -th))

    def d_unclipped(th):
        return -p * t * expit(-t * th) + (1 - p) * t * a * expit(t * a * th)

    theta_star = brentq(d_unclipped, -r, r, xtol=1e-15)
    # Clipped: at theta = -R the unit points pull with C (clipped), the small ones with
    # min(T a sigma(-T a R), C); theta_c = -R iff the surrogate's slope there is >= 0.
    pull_unit = min(t * expit(t * r), c)
    pull_small = min(t * a * expit(-t * a * r), c)
    assert (1 - p) * pull_small - p * pull_unit >= 0
    assert w.theta_clipped == -r
    assert w.theta_star == pytest.approx(theta_star, abs=1e-12)
    assert w.excess == pytest.approx(risk(-r) - risk(theta_star), abs=1e-10)
    # The counting argument: ratio -> (k / n) / 4 as C/T -> 0, T R -> oo; k = n/2 - 1.
    assert k == n // 2 - 1
    assert w.ratio == pytest.approx(p / 4, rel=0.01)


def test_dual_bound_holds_on_solved_random_datasets():
    t, c, r = 4.0, 0.2, 1.0
    upper, mu = sharp.dual_bound(t, c, r)
    assert mu > 0
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(6):
        n = 12
        z = rng.normal(size=(n, 2))
        z *= 10.0 ** rng.uniform(-2, 0, size=(n, 1)) / np.linalg.norm(z, axis=1, keepdims=True)
        y = rng.choice([-1.0, 1.0], size=n)
        th_c, _ = solvers.scipy_minimise(z, y, inverse_temp=t, clip_norm=c, radius=r)
        th_s, _ = solvers.scipy_minimise(z, y, inverse_temp=t, radius=r)
        excess = solvers.objective(th_c, z, y, inverse_temp=t) - solvers.objective(
            th_s, z, y, inverse_temp=t
        )
        worst = max(worst, excess)
        assert excess <= upper + 1e-9  # SLSQP's ~1e-10 accuracy
    # The witness family is a dataset too.
    w, _ = sharp.limit_witness(t, c, r, 64)
    assert w.excess <= upper
    assert worst > 0  # the check is not vacuous


def test_dual_bound_tends_to_an_eighth_of_the_bound():
    # Analytic limit: with mu = T / (2 C) the Lagrangian's max is ~T R / 2 when C/T -> 0,
    # T R >> 1 and C R << 1, so U / bound -> 1/8; the witness is below it.
    t, c, r = 32.0, 0.01, 1.0
    upper, _ = sharp.dual_bound(t, c, r)
    w, _ = sharp.limit_witness(t, c, r, 128)
    assert w.ratio <= upper / paper_bound(t, c, r) <= 0.1255


def test_relaxation_lp_is_below_its_dual_bound():
    out = sharp.relaxation_bound(0.05, 4.0, n_rho=8, n_t=17, fine=2)
    assert 0 < out["lp"] <= out["dual"] + 1e-12
    assert all(m >= 0 for m in out["mu"])


def test_check_sharp_row_passes():
    (row,) = sharp.check_sharp(dim=3, seed=0, tol=1e-10)
    assert row.passed and sharp.WITNESS_MIN_RATIO <= row.value < 0.125
