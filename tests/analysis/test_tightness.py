"""Check 5 (analysis.tightness): the 1-D scorer against closed forms, witnesses against SLSQP."""

import math

import numpy as np
import pytest

from analysis import solvers, tightness
from analysis.tightness import QUICK_EFFORT, TightnessResult


def test_score_matches_the_two_cluster_closed_form():
    # 3 points at u = +1, 1 at u = -1 (T = 4, C = 1, R = 2): see test_analysis_theorem1.
    t, c = 4.0, 1.0
    ex, th_c, th_s = tightness.score(
        np.array([[1.0, -1.0]]), np.array([[3, 1]]), np.array([t]), np.array([c]), 2.0
    )
    th_star, th_clip = math.log(3.0) / t, math.log(3 * t / c - 1) / t

    def risk(th):
        return 0.75 * math.log1p(math.exp(-t * th)) + 0.25 * math.log1p(math.exp(t * th))

    # theta* by bisection to float64 resolution. theta_c is the end of the surrogate's
    # near-flat set (|derivative| <= FLAT max(T, 1) = 4e-12) nearest theta*, so it sits
    # up to 4e-12 / curvature (~0.9 here) towards theta*: 1e-10 covers it, and the
    # excess moves by at most |L_T'| 1e-10 < 1e-10.
    assert th_s[0] == pytest.approx(th_star, abs=1e-14)
    assert th_c[0] == pytest.approx(th_clip, abs=1e-10)
    assert ex[0] == pytest.approx(risk(th_clip) - risk(th_star), abs=1e-10)


def test_flat_surrogate_is_scored_at_the_minimiser_nearest_theta_star():
    # Both clusters clipped everywhere on [-R, R] (4 sigma(-1) > 1) with equal counts:
    # the surrogate is flat, every theta minimises it, and the excess must be scored 0.
    ex, th_c, th_s = tightness.score(
        np.array([[1.0, -1.0]]), np.array([[2, 2]]), np.array([4.0]), np.array([1.0]), 0.25
    )
    assert th_s[0] == pytest.approx(0.0, abs=1e-15)
    assert th_c[0] == th_s[0]
    assert ex[0] == pytest.approx(0.0, abs=1e-15)


def test_search_finds_verified_witnesses_below_the_ceiling():
    pairs = [(8.0, 0.1), (2.0, 1.0)]
    found = tightness.search(pairs, radius=1.0, n=16, seed=0, effort=QUICK_EFFORT)
    found = tightness.verify(found, dim=2, seed=0, tol=1e-10)
    for r in found:
        assert sum(r.counts) == 16
        # The ratio against the bound written out here: 2 (T - C) times diameter 2R.
        assert r.ratio == pytest.approx(r.excess / (4 * r.radius * (r.inverse_temp - r.clip_norm)))
        assert 0 < r.ratio <= r.ceiling_ratio < 0.5
        assert r.verified  # the d-dim clipped projected GD agrees
    assert all(row.passed for row in tightness.check_tightness(found))
    # The two-cluster construction reaches ~1/8 of the bound when C << T.
    assert found[0].ratio > 0.1


def test_witness_excess_matches_scipy_on_the_embedded_dataset():
    witness = TightnessResult(
        inverse_temp=8.0,
        clip_norm=0.1,
        radius=1.0,
        ratio=0.0,
        excess=0.0,
        bound=31.6,
        ceiling=0.0,
        positions=(1.0, -0.03),
        counts=(7, 9),
        theta_clipped=0.0,
        theta_star=0.0,
        found_by="test",
    )
    u = np.array([witness.positions])
    k = np.array([witness.counts])
    ex, _, _ = tightness.score(u, k, np.array([8.0]), np.array([0.1]), 1.0)
    z, y, _ = tightness.witness_dataset(witness, dim=3, seed=0)
    # SLSQP on the 3-d surrogate and on L_T: an independent solver in the full space.
    th_c, _ = solvers.scipy_minimise(z, y, inverse_temp=8.0, clip_norm=0.1, radius=1.0)
    th_s, _ = solvers.scipy_minimise(z, y, inverse_temp=8.0, radius=1.0)
    f = [solvers.objective(th, z, y, inverse_temp=8.0) for th in (th_c, th_s)]
    # SLSQP has no certificate; 1e-6 is far below the excess itself (~1).
    assert f[0] - f[1] == pytest.approx(ex[0], abs=1e-6)
    assert ex[0] > 0.5
