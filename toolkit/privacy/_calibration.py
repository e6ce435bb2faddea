"""Noise calibration: the smallest DP-SGD noise multiplier whose eps meets a target.

For each accountant of `toolkit.privacy.accounting`, eps is non-increasing in the noise multiplier
sigma, so the smallest sigma with ``eps(sigma) <= target`` is where ``eps(sigma) = target``.
`calibrate_noise_multiplier` finds that crossing with Brent's method
(`scipy.optimize.brentq`) on ``log eps - log target`` as a function of ``log sigma``, over
the half of `NOISE_MULTIPLIER_SEARCH_RANGE` below or above sigma = 1 that holds it: eps is
close to a power law in sigma, so that function is nearly linear and the search takes
about eight eps evaluations. Brent's root can land a hair on either side of the crossing,
so the root is then checked with the same accountant and, if its eps is above the target,
raised by small relative steps until it is not: the returned sigma never gives an eps
above the target.

Example (the TF Privacy tutorial's setting, whose published eps is 3.01 at sigma = 1.1):

>>> from toolkit.privacy.accounting import sampling_prob_for, steps_for
>>> sigma = calibrate_noise_multiplier(
...     accountant="rdp-classic",
...     target_epsilon=3.01,
...     sampling_prob=sampling_prob_for(num_examples=60000, batch_size=256),
...     steps=steps_for(num_examples=60000, batch_size=256, epochs=60),
...     delta=1e-5,
... )
>>> round(sigma, 2)
1.1
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

from scipy.optimize import brentq

from toolkit.base import ToolkitError
from toolkit.privacy.accounting import (
    _check_accountant,
    _check_delta,
    _check_int,
    _check_positive_finite,
    _check_sampling_prob,
    epsilon,
)

# Range searched by `calibrate_noise_multiplier`: outside it eps is either astronomically
# large (sigma < 0.01) or below what any of the accountants resolves (sigma > 1e4).
NOISE_MULTIPLIER_SEARCH_RANGE: tuple[float, float] = (1e-2, 1e4)
# Where the range is split in two before the search (typical DP-SGD sigmas lie near it).
_SPLIT = 1.0

# Brent's tolerance on log(sigma), as a fraction of log(1 + rtol): the root is located to
# within ~1e-5 relative at the default rtol = 1e-3, a few evaluations more than rtol needs.
_BRENT_FRACTION = 1e-2
# |log eps - log target| is capped here so that eps = 0 or inf stays a finite function value.
_LOG_CAP = 1e3


def calibrate_noise_multiplier(
    *,
    accountant: str,
    target_epsilon: float,
    sampling_prob: float,
    steps: int,
    delta: float,
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to within `rtol`) whose eps is at most `target_epsilon`.

    Picks the half of `NOISE_MULTIPLIER_SEARCH_RANGE` (below or above sigma = 1) that
    holds the crossing ``eps(sigma) = target`` and checks that its far end is past the
    target, locates the crossing with `scipy.optimize.brentq` in log-log coordinates, and
    nudges the root upward if its eps is above the target (see the module docstring and
    `_smallest_meeting`).

    Guarantee: ``epsilon(accountant, sigma) <= target_epsilon`` for the returned sigma
    (checked before returning), and ``sigma <= (1 + rtol) sigma_min``, where `sigma_min`
    is the smallest sigma meeting the target. With ``steps == 0`` every sigma meets it
    and 0.0 is returned.

    Args:
        accountant: One of `toolkit.privacy.accounting.ACCOUNTANTS`.
        target_epsilon: `eps > 0` to meet.
        sampling_prob: `q` in `(0, 1]`.
        steps: `T >= 0`.
        delta: `delta` in `(0, 1)`.
        rtol: Relative tolerance on sigma, in `(0, 1)`.

    Returns:
        The noise multiplier `sigma`.

    Raises:
        ToolkitError: If an argument is out of range, if even the largest sigma searched
            does not reach the target, or if the target is so large that the smallest
            sigma searched already meets it.
    """
    _check_accountant(accountant)
    target = _check_positive_finite("target_epsilon", target_epsilon)
    q = _check_sampling_prob(sampling_prob)
    t = _check_int("steps", steps, minimum=0)
    d = _check_delta(delta)
    if not (isinstance(rtol, numbers.Real) and 0 < rtol < 1):
        raise ToolkitError(f"Expected rtol in (0, 1), got {rtol!r}.")
    if t == 0:
        return 0.0

    @functools.cache  # brentq's ends and root are evaluated already: reuse those
    def eps_of(sigma: float) -> float:
        return epsilon(
            accountant=accountant, noise_multiplier=sigma, sampling_prob=q, steps=t, delta=d
        )

    setting = f"accountant={accountant}, sampling_prob={q:g}, steps={t}, delta={d:g}"
    smallest, largest = NOISE_MULTIPLIER_SEARCH_RANGE
    # Which side of sigma = 1 the crossing is on: a narrower bracket for brentq (for a
    # crossing above 1, it also never probes small sigmas, where dp_accounting's series
    # can fail to converge and log warnings), and only the end that can miss the target
    # is evaluated.
    if eps_of(_SPLIT) > target:
        lo, hi = _SPLIT, largest
        if not eps_of(largest) <= target:
            raise ToolkitError(
                f"target_epsilon={target:g} is unreachable: even noise_multiplier={largest:g} "
                f"gives eps={eps_of(largest):.4g} ({setting}); use a larger target_epsilon, "
                "delta or batch, or fewer steps."
            )
    else:
        lo, hi = smallest, _SPLIT
        if eps_of(smallest) <= target:
            raise ToolkitError(
                f"target_epsilon={target:g} is met even by noise_multiplier={smallest:g} "
                f"(eps={eps_of(smallest):.4g}; {setting}); calibration searches sigma in "
                f"[{smallest:g}, {largest:g}], so choose a smaller target_epsilon."
            )
    sigma, eps = _smallest_meeting(eps_of, target, lo, hi, rtol=rtol)
    if not eps <= target:  # the documented guarantee; an `assert` would vanish under -O
        raise AssertionError(f"calibration bug: eps({sigma}) = {eps} > {target} ({setting}).")
    return sigma


def _smallest_meeting(
    eps_of: Callable[[float], float], target: float, lo: float, hi: float, *, rtol: float
) -> tuple[float, float]:
    """`(sigma, eps_of(sigma))` with ``eps_of(sigma) <= target``, sigma within `rtol` of minimal.

    Requires ``eps_of(lo) > target >= eps_of(hi)``. Brent's method on
    ``f(x) = log eps_of(e^x) - log target`` over ``[log lo, log hi]`` returns a root within
    about ``xtol = log(1 + rtol) / 100`` of the crossing (for a non-increasing `eps_of`), on
    either side of it. If the root's eps is above the target, sigma is multiplied by
    ``e^(2 xtol)`` (which, for a non-increasing `eps_of`, steps past the crossing at once)
    until it meets the target; at most as many steps as keep sigma within
    ``(1 + rtol) sigma_min`` are taken, and the last sigma tried is returned either way, so
    the caller must check its eps.
    """
    log_target, a, b = math.log(target), math.log(lo), math.log(hi)

    def sigma_at(x: float) -> float:  # the ends exactly, so that a cached eps_of hits
        return lo if x == a else hi if x == b else math.exp(x)

    def excess(x: float) -> float:
        eps = eps_of(sigma_at(x))
        gap = math.log(eps) - log_target if eps > 0 else -math.inf
        return min(max(gap, -_LOG_CAP), _LOG_CAP)

    xtol = _BRENT_FRACTION * math.log1p(rtol)
    x = brentq(excess, a, b, xtol=xtol, maxiter=200)
    sigma = sigma_at(x)
    eps = eps_of(sigma)
    step = 2 * xtol
    for _ in range(int((math.log1p(rtol) - xtol) / step)):
        if eps <= target:
            break
        sigma = min(sigma * math.exp(step), hi)
        eps = eps_of(sigma)
    return sigma, eps
