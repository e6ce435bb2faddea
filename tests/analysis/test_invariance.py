"""analysis.invariance: each variant's excess against the closed form of a two-cluster problem."""

import dataclasses
import math

import numpy as np
import pytest

from analysis import invariance
from analysis.datasets import Dataset


def two_cluster():
    # 3 points (e1, +1), 1 point (e1, -1). Unclipped: 3 sigma(-T th) = sigma(T th), so
    # T theta* = ln 3. Clipped (only the lone point is, at these C/T): 3 T sigma(-T th) = C,
    # so T theta_c = ln(3 T / C - 1). Both depend on C / T only.
    z = np.zeros((4, 3))
    z[:, 0] = 1.0
    return Dataset(name="two-cluster", z=z, y=np.array([1.0, 1.0, 1.0, -1.0]))


def closed_form_excess(t, c):
    def risk(u):  # the mean loss as a function of u = T theta
        return 0.75 * math.log1p(math.exp(-u)) + 0.25 * math.log1p(math.exp(u))

    return risk(math.log(3 * t / c - 1)) - risk(math.log(3.0))


def test_every_variant_has_the_closed_form_excess():
    pairs = [(4.0, 1.0), (2.0, 0.25)]  # T theta_c = ln 11 and ln 23: inside the ball R = 2
    cases = invariance.run_invariance(two_cluster(), pairs=pairs, radius=2.0, tol=1e-12, seed=0)
    assert len(cases) == 4 * len(pairs)
    for case in cases:
        expected = closed_form_excess(case.inverse_temp, case.clip_norm)
        # Certificates 2R tol = 4e-12 per run; the optima have curvature >= 0.1 here.
        assert case.excess == pytest.approx(expected, abs=1e-10)
        assert case.variant_excess == pytest.approx(expected, abs=1e-10)
        assert case.agrees
    assert all(row.passed for row in invariance.check_invariance(cases, dataset="two-cluster"))


def test_invariance_row_fails_when_a_variant_disagrees():
    cases = invariance.run_invariance(
        two_cluster(), pairs=[(4.0, 1.0)], radius=2.0, tol=1e-12, seed=0
    )
    broken = [dataclasses.replace(cases[0], variant_excess=cases[0].excess + 1e-6), *cases[1:]]
    rows = invariance.check_invariance(broken, dataset="two-cluster")
    assert not rows[0].passed and rows[1].passed
