"""Statistics of the one-run privacy audit (Steinke, Nasr & Jagielski 2023).

From the membership guesses on `m` canaries, each included with probability 1/2: the
p-value of `v` correct guesses out of `r` under (eps, delta)-DP (Thm. 3.3; Thm. 3.1 for
delta = 0), the largest eps that rejects (`epsilon_lower_bound`), and the best bound over
a grid of guess counts fixed in advance, Bonferroni-corrected (`audit_scores`).
`toolkit.studies._audit` trains the canaries; this module only counts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special, stats

from toolkit.base import ToolkitError

_EPS_SEARCH_MAX = 64.0  # expit(64) = 1 - 1.6e-28: beyond it no finite data rejects anything
_BISECTION_STEPS = 50


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of `v` or more correct guesses out of `r` under (eps, delta)-DP (SNJ 2023, Thm. 3.3).

    Args:
        m: Number of canaries, each included with probability 1/2.
        r: Number of guesses made (abstentions excluded), `0 <= r <= m`.
        v: Number of correct guesses, `0 <= v <= r`.
        epsilon: eps of the null hypothesis, `>= 0`.
        delta: delta of the null hypothesis, with `2 m delta <= 1`.

    Returns:
        ``min(1, f(v) + 2 m delta max_{i=1..v} (f(v-i) - f(v)) / i)``, where
        ``f(u) = P[Binomial(r, e^eps/(1+e^eps)) >= u]``, in float64. The maximum runs to
        `v` only: for `i > v`, ``f(v-i) = f(0) = 1`` and the ratio only shrinks.
    """
    _check_counts(m, r, v)
    if not (epsilon >= 0 and delta >= 0 and 2 * m * delta <= 1):
        raise ToolkitError(
            f"Expected epsilon >= 0 and 0 <= 2*m*delta <= 1, got {epsilon}, {m}, {delta}."
        )
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))  # e^eps / (1 + e^eps): eps-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Bin >= v]
    if delta == 0:
        return min(tail, 1.0)
    # (f(v-i) - f(v)) = P[v-i <= Bin <= v-1] = cumulative pmf from v-1 downwards.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """Largest eps rejected at `confidence`: ``p_value(eps) < 1 - confidence``; 0.0 if none.

    `p_value` is non-decreasing in eps when ``2 m delta <= 1`` (it is then a maximum of
    non-negative combinations of binomial upper tails, each non-decreasing in the success
    probability), so bisection on ``[0, 64]`` finds the crossing; the value returned
    always satisfies the rejection inequality itself (it is the lower end of the bracket).
    """
    check_confidence(confidence)
    level = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < level

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2 * hi
        if hi > _EPS_SEARCH_MAX:
            return lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def guess_grid(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) guess counts tried; fixed before the scores are seen (it depends on m only).

    Positive-only guesses on the top 1, 2, 5, 10, 20 and 50% of scores, and balanced
    guesses (half top, half bottom) on 10, 20, 50 and 100% of the canaries.
    """
    grid = [(max(1, round(f * m)), 0) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)]
    grid += [(max(1, round(f * m / 2)), max(1, round(f * m / 2))) for f in (0.1, 0.2, 0.5, 1.0)]
    grid = [(kp, min(kn, m - kp)) for kp, kn in grid if kp <= m]
    return sorted(set(grid))


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """The audited bound and the guess count that achieved it."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    canaries: int
    guesses: int  # r
    correct: int  # v
    k_pos: int
    k_neg: int
    tests: int  # K, Bonferroni: each test ran at level (1 - confidence) / K


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    grid: list[tuple[int, int]] | None = None,
) -> AuditResult:
    """eps lower bound from membership scores (higher = more likely a member).

    For each ``(k+, k-)`` in `grid` (default `guess_grid(m)`), guess the `k+` highest
    scores in and the `k-` lowest out, count the correct guesses and compute
    `epsilon_lower_bound` at confidence ``1 - (1 - confidence) / K``; return the largest.
    Ties and NaN scores are broken by canary index (NaN counts as the lowest score), so
    the guesses depend on the scores alone, never on `included`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.ndim != 1 or scores.shape != included.shape or scores.size < 1:
        raise ToolkitError(
            "Expected scores and included of one equal length >= 1, "
            f"got {scores.shape} and {included.shape}."
        )
    m = scores.size
    grid = guess_grid(m) if grid is None else grid
    check_confidence(confidence)
    per_test = 1.0 - (1.0 - confidence) / len(grid)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")  # best first
    best = None
    for k_pos, k_neg in grid:
        if not (k_pos >= 0 and k_neg >= 0 and 1 <= k_pos + k_neg <= m):
            raise ToolkitError(
                f"guess counts (k+={k_pos}, k-={k_neg}) must satisfy 1 <= k+ + k- <= m={m}."
            )
        top, bottom = order[:k_pos], order[m - k_neg :]
        v = int(included[top].sum() + (~included[bottom]).sum())
        r = k_pos + k_neg
        eps = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=per_test)
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditResult(eps, confidence, delta, m, r, v, k_pos, k_neg, len(grid))
    return best


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m):
        raise ToolkitError(f"Expected 0 <= correct={v} <= guesses={r} <= canaries={m}.")


def check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ToolkitError(f"confidence={confidence!r} must be in (0, 1).")
