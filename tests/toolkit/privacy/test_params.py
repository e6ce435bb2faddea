"""`PrivacyParams`: the (q, T, sigma, delta, accountant) that every reported eps is for.

Each eps it reports is compared with `toolkit.privacy.accounting` called directly on the same
(sigma, q = B / N, T, delta). Tolerances: the same computation gives the same float (rdp,
rdp-classic: 1e-9 relative for round-off); the per-epoch PLD curve composes
incrementally, equal to a fresh computation to ~1e-8 (`epsilon_curve`), so 1e-7 there.
The settings (N = 250, B = 40: 6 steps per epoch) keep every accountant fast.
"""

from __future__ import annotations

import pytest

from toolkit.privacy import PrivacyParams, accounting

N, B = 250, 40
RTOL = {"rdp": 1e-9, "rdp-classic": 1e-9, "pld": 1e-7}


def _direct(name: str, sigma: float, steps: int, delta: float) -> float:
    return accounting.epsilon(
        accountant=name, noise_multiplier=sigma, sampling_prob=B / N, steps=steps, delta=delta
    )


@pytest.mark.parametrize("delta", [1e-3, 1e-7])
def test_every_eps_is_at_the_runs_delta_and_steps(delta):
    """Final and per-epoch eps are for the run's own delta (not a default 1e-5), for
    T = epochs * (N // B) steps and, at the end of epoch e, e * (N // B)."""
    p = PrivacyParams(N, B, 3, 1.2, delta=delta)
    assert p.sampling_prob == B / N and p.steps == 18
    by_epoch = p.epsilon_by_epoch(3)
    for name in accounting.ACCOUNTANTS:
        want = _direct(name, 1.2, 18, delta)
        assert p.epsilon(name) == pytest.approx(want, rel=RTOL[name])
        assert p.epsilons()[name] == pytest.approx(want, rel=RTOL[name])
        for e in range(3):
            want_e = _direct(name, 1.2, 6 * (e + 1), delta)
            assert by_epoch[e][name] == pytest.approx(want_e, rel=RTOL[name]), (name, e)
        # delta matters at these settings: the default's eps differs by far more than RTOL.
        assert abs(want / _direct(name, 1.2, 18, 1e-5) - 1) > 0.05


@pytest.mark.parametrize("accountant", accounting.ACCOUNTANTS)
def test_calibrated_sigma_meets_the_target_under_its_own_accountant(accountant):
    """`calibrated` returns the smallest sigma (to rtol 1e-3) whose eps under the run's
    headline accountant is at most the target, at the run's delta."""
    target, delta = 2.0, 1e-4
    p = PrivacyParams.calibrated(
        target_epsilon=target, num_examples=N, batch_size=B, epochs=3, delta=delta,
        accountant=accountant,
    )  # fmt: skip
    sigma = p.noise_multiplier
    assert p.accountant == accountant and p.epsilon() <= target
    assert _direct(accountant, sigma, 18, delta) <= target
    assert _direct(accountant, sigma / (1 + 1e-3), 18, delta) > target
