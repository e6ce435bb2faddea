"""Tests for toolkit.privacy._calibration: the returned sigma meets the target and is minimal within
rtol, errors for targets outside the search range, the upward nudge after Brent's root, and
the re-export from toolkit.privacy.accounting."""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.base import ToolkitError
from toolkit.privacy import _calibration as calibration
from toolkit.privacy import calibrate_noise_multiplier
from toolkit.privacy.accounting import ACCOUNTANTS, epsilon

DELTA = 1e-5
# Small settings that keep every accountant fast (PLD cost grows as sigma shrinks).
SMALL = {"sampling_prob": 0.02, "steps": 200, "delta": DELTA}
CALIBRATION = {"sampling_prob": 0.05, "steps": 1000, "delta": DELTA}  # sigma ~ 0.7 to 6


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
@pytest.mark.parametrize("target", [1.0, 3.0, 30.0])  # 30: a crossing below sigma = 1
def test_calibration_meets_target_and_is_minimal_within_rtol(accountant, target):
    rtol = 1e-3
    sigma = calibrate_noise_multiplier(
        accountant=accountant, target_epsilon=target, rtol=rtol, **CALIBRATION
    )
    assert epsilon(accountant=accountant, noise_multiplier=sigma, **CALIBRATION) <= target
    # eps(lo) > target with lo >= sigma / (1 + rtol), and eps is non-increasing:
    assert (
        epsilon(accountant=accountant, noise_multiplier=sigma / (1 + rtol), **CALIBRATION) > target
    )


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_calibration_unreachable_target_raises(accountant):
    with pytest.raises(ToolkitError, match="unreachable"):
        calibrate_noise_multiplier(accountant=accountant, target_epsilon=1e-6, **CALIBRATION)


def test_calibration_target_met_by_smallest_sigma_raises():
    with pytest.raises(ToolkitError, match="met even by noise_multiplier"):
        calibrate_noise_multiplier(accountant="rdp", target_epsilon=1e9, **CALIBRATION)


def test_calibration_with_zero_steps_returns_zero_noise():
    zero_steps = {**SMALL, "steps": 0}
    assert calibrate_noise_multiplier(accountant="pld", target_epsilon=1.0, **zero_steps) == 0.0


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon > 0"),
        ({"target_epsilon": -1.0}, "target_epsilon > 0"),
        ({"target_epsilon": math.inf}, "target_epsilon > 0 and finite"),
        ({"rtol": 0.0}, "rtol in (0, 1)"),
        ({"sampling_prob": 2.0}, "sampling_prob in (0, 1]"),
        ({"accountant": "moments"}, "expected one of rdp, rdp-classic, pld"),
    ],
)
def test_calibration_rejects_bad_input(override, fragment):
    kwargs = {"accountant": "rdp", "target_epsilon": 1.0, **SMALL, **override}
    with pytest.raises(ToolkitError) as info:
        calibrate_noise_multiplier(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("offset", [-3.0, 3.0])  # in units of brentq's xtol, either side
def test_a_root_on_the_wrong_side_is_nudged_up_to_meet_the_target(monkeypatch, offset):
    kw = {"accountant": "rdp-classic", **CALIBRATION}
    rtol = 1e-3
    exact = calibrate_noise_multiplier(target_epsilon=3.0, rtol=1e-9, **kw)
    xtol = calibration._BRENT_FRACTION * math.log1p(rtol)
    # A Brent root `offset` tolerances off the crossing: below it, eps is above the target.
    monkeypatch.setattr(calibration, "brentq", lambda *a, **k: math.log(exact) + offset * xtol)
    sigma = calibrate_noise_multiplier(target_epsilon=3.0, rtol=rtol, **kw)
    assert epsilon(noise_multiplier=sigma, **kw) <= 3.0
    assert exact <= sigma <= exact * (1 + rtol)
    if offset < 0:
        assert epsilon(noise_multiplier=exact * math.exp(offset * xtol), **kw) > 3.0


def test_a_target_missed_after_the_nudges_is_a_calibration_bug(monkeypatch):
    # A (non-monotone) "accountant" whose eps meets the target only at the end of the range,
    # and a Brent root far from it: the nudges cannot reach the target, which is an error.
    largest = calibration.NOISE_MULTIPLIER_SEARCH_RANGE[1]

    def eps(noise_multiplier: float, **_: object) -> float:
        return 0.0 if noise_multiplier == largest else 2.0

    monkeypatch.setattr(calibration, "epsilon", eps)
    monkeypatch.setattr(calibration, "brentq", lambda f, a, b, **_: 0.5 * (a + b))
    with pytest.raises(AssertionError, match="calibration bug"):
        calibrate_noise_multiplier(accountant="rdp", target_epsilon=1.0, **SMALL)


@settings(max_examples=60, deadline=None)
@given(
    root=st.floats(0.02, 5e3),
    power=st.floats(0.2, 8.0),
    jump=st.floats(1.0, 100.0),
    rtol=st.sampled_from([1e-2, 1e-3, 1e-5]),
)
def test_search_meets_target_and_is_minimal_on_monotone_functions(root, power, jump, rtol):
    # eps(sigma) = (root / sigma)^power, with an extra jump of size `jump` below the root
    # (a discontinuity no interpolation can model), crossing target = 1 at sigma = root.
    calls = []

    def eps_of(sigma: float) -> float:
        calls.append(sigma)
        return (root / sigma) ** power * (jump if sigma < root else 1.0)

    lo, hi = root / 7, root * 3
    sigma, eps = calibration._smallest_meeting(eps_of, 1.0, lo, hi, rtol=rtol)
    assert eps == eps_of(sigma) <= 1.0
    assert eps_of(sigma / (1 + rtol)) > 1.0
    assert len(calls) < 200


def test_privacy_package_exports_the_calibration_names():
    import toolkit.privacy

    assert toolkit.privacy.calibrate_noise_multiplier is calibrate_noise_multiplier
    assert (
        toolkit.privacy.NOISE_MULTIPLIER_SEARCH_RANGE == calibration.NOISE_MULTIPLIER_SEARCH_RANGE
    )


def test_docstring_example_runs():
    result = doctest.testmod(calibration, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("accountant", ["rdp", "rdp-classic"])
@pytest.mark.parametrize("delta", [1e-3, 1e-8])
def test_calibration_meets_the_target_at_the_given_delta(accountant, delta):
    """The returned sigma meets the target at the delta asked for, and is minimal there
    (within rtol): a sigma calibrated at another delta (eps differs by > 10% between 1e-5
    and either delta here) fails one of the two. Exact comparisons: eps is deterministic."""
    kw = {**CALIBRATION, "delta": delta, "accountant": accountant}
    sigma = calibrate_noise_multiplier(target_epsilon=2.0, rtol=1e-3, **kw)
    assert epsilon(noise_multiplier=sigma, **kw) <= 2.0
    assert epsilon(noise_multiplier=sigma / (1 + 1e-3), **kw) > 2.0


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_a_single_step_is_calibrated(accountant):
    """One full-batch step (q = 1, T = 1), the plain Gaussian mechanism: it needs noise
    (sigma > 0) like any other run; only T = 0 gets sigma = 0."""
    kw = {"accountant": accountant, "sampling_prob": 1.0, "steps": 1, "delta": DELTA}
    sigma = calibrate_noise_multiplier(target_epsilon=1.0, rtol=1e-3, **kw)
    assert sigma > 0 and epsilon(noise_multiplier=sigma, **kw) <= 1.0
    assert epsilon(noise_multiplier=sigma / (1 + 1e-3), **kw) > 1.0
