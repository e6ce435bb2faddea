"""Invariances of the clipping bias of tempered logistic regression (beyond the paper).

The excess risk E(T, C, R; z, y) = L_T(theta_clipped) - min_Theta L_T of clipped
full-batch GD on Theta = {||theta|| <= R} is unchanged by:

1. Temperature vs clip norm and domain: E(T, C, R; z, y) = E(1, C/T, T R; z, y).
   With theta' = T theta, l(theta; z, y, T) = softplus(-y <z, T theta>) =
   l(theta'; z, y, 1); the ball {||theta|| <= R} is {||theta'|| <= T R}; the
   gradient in theta' is the gradient in theta divided by T, so clipping at C in
   theta is clipping at C/T in theta'. A GD step of size eta in theta is a step
   of size eta T^2 in theta' on the clipped-at-C/T field, with the same fixed
   points. With DP noise sigma C added to the clipped sum, the theta' noise is
   sigma (C/T) times T^2 eta: the same noise multiplier sigma, hence the same
   privacy. So (T, C, R, eta, sigma) and (1, C/T, T R, eta T^2, sigma) are one
   algorithm.
2. Data scale vs temperature: E(T, C, R; z, y) = E(T/s, C, R; s z, y) for
   0 < s <= 1/max||z||: the loss depends on T <z, theta> only, and the gradient
   T sigma(.) z has the same norm. So Theorem 1 holds with T max||z|| for T.
3. Rotation: E(T, C, R; Q z, y) = E(T, C, R; z, y) for orthogonal Q (theta -> Q
   theta maps the ball and every norm to themselves).
4. Label flip: E(T, C, R; z, -y) = E(T, C, R; z, y) (theta -> -theta; the ball
   is symmetric). Per example only y z matters, so (z, y) -> (-z, -y) is the
   identity on the problem.

Together: the bias depends on the data only through {y_i z_i} up to rotation and
scale, and on (T, C, R) only through (C / (T max||z||), T R max||z||).

What it means for "lower temperature, less bias". In this model lowering T at
fixed C and R is *exactly* raising the clip norm relative to the gradient scale
(C/T) and shrinking the parameter domain (T R), at the same noise multiplier: it
is not a separate mechanism. Any bias reduction a lower T buys here, T = 1 buys
with C' = C / T, R' = T R and step eta T^2, at the same privacy. The numbers are
in the bound-check rows "invariance: ..." (each variant re-solved by PGD from
scratch, compared within the certificates).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from analysis import solvers
from analysis.datasets import Dataset
from analysis.result import CheckResult

# Where the clipped surrogate is flat in some direction, the certificate bounds
# L_hat's value, not L_T's: theta_clipped is pinned only to ~tol / curvature, and
# L_T has slope O(T) there (as in `analysis.tightness.VERIFY_TOL`).
AGREE_TOL = 1e-8
# The data-scale variant shrinks the data by this factor and raises T by its inverse
# (not a power of 2, so the scaled problem is not bitwise the original).
DATA_SCALE = 0.7

TEMPERATURE = "temperature: (T,C,R) -> (1,C/T,TR)"
OTHERS = ("data scale: (T, z) -> (T/s, s z)", "rotation: z -> Q z", "label flip: y -> -y")


@dataclasses.dataclass(frozen=True)
class InvarianceCase:
    """One (T, C) and one variant: its excess beside the original problem's."""

    variant: str
    inverse_temp: float
    clip_norm: float
    excess: float  # the original problem's
    variant_excess: float
    slack: float  # the four certificates + AGREE_TOL; inf if a run was not certified

    @property
    def difference(self) -> float:
        return abs(self.variant_excess - self.excess)

    @property
    def agrees(self) -> bool:
        return self.difference <= self.slack


def _variants(d: Dataset, t: float, c: float, r: float, rng: np.random.Generator):
    """(name, z, y, T, C, R) of the original and each variant problem."""
    q, _ = np.linalg.qr(rng.normal(size=(d.z.shape[1], d.z.shape[1])))
    return [
        ("original", d.z, d.y, t, c, r),
        (TEMPERATURE, d.z, d.y, 1.0, c / t, t * r),
        (OTHERS[0], DATA_SCALE * d.z, d.y, t / DATA_SCALE, c, r),
        (OTHERS[1], d.z @ q.T, d.y, t, c, r),
        (OTHERS[2], d.z, -d.y, t, c, r),
    ]


def run_invariance(
    dataset: Dataset, *, pairs: Sequence[tuple[float, float]], radius: float, tol: float, seed: int
) -> list[InvarianceCase]:
    """Solve every variant of every (T, C) and its unclipped twin by PGD.

    One PGD batch per variant (its clipped and unclipped problem share the data, the GLM
    path of `solvers.projected_gd`), so a large user data set costs matrix products only.
    """
    rng = np.random.default_rng([seed, 9])
    excess, slack = {}, {}
    for t, c in pairs:
        for name, z, y, tv, cv, rv in _variants(dataset, t, c, radius, rng):
            sol = solvers.projected_gd(
                z,
                y,
                inverse_temp=np.array([tv, tv]),
                clip_norm=np.array([cv, math.inf]),
                radius=rv,
                tol=tol,
            )
            f_c = solvers.objective(sol.theta[0], z, y, inverse_temp=tv)
            f_s = solvers.objective(sol.theta[1], z, y, inverse_temp=tv)
            excess[(name, t, c)] = f_c - f_s
            ok = sol.certified[0] and sol.certified[1]
            slack[(name, t, c)] = float(sol.gap[0] + sol.gap[1]) if ok else math.inf
    cases = []
    for t, c in pairs:
        for name in (TEMPERATURE, *OTHERS):
            cases.append(
                InvarianceCase(
                    variant=name,
                    inverse_temp=float(t),
                    clip_norm=float(c),
                    excess=excess[("original", t, c)],
                    variant_excess=excess[(name, t, c)],
                    slack=slack[("original", t, c)] + slack[(name, t, c)] + AGREE_TOL,
                )
            )
    return cases


def check_invariance(cases: Sequence[InvarianceCase], *, dataset: str) -> list[CheckResult]:
    """Two rows: the temperature invariance, and the data-scale / rotation / label-flip ones."""
    rows = []
    for names, label in (((TEMPERATURE,), "invariance: (T,C,R)=(1,C/T,TR)"), (OTHERS, None)):
        sel = [c for c in cases if c.variant in names]
        worst = max(sel, key=lambda c: c.difference / c.slack)
        rows.append(
            CheckResult(
                name=label or "invariance: scale, rotation, flip",
                measure="max |excess diff|",
                value=max(c.difference for c in sel),
                tolerance=f"<= certs + {AGREE_TOL:.0e}",
                passed=all(c.agrees for c in sel),
                details={
                    "dataset": dataset,
                    "cases": [dataclasses.asdict(c) for c in sel],
                    "worst difference / slack": worst.difference / worst.slack,
                },
            )
        )
    big = max((c for c in cases if c.variant == TEMPERATURE), key=lambda c: c.excess)
    rows[0] = dataclasses.replace(
        rows[0],
        finding=(
            f"Invariance (beyond the paper): the excess of (T, C, R) equals that of "
            f"(1, C/T, T R), e.g. {big.excess:.6g} vs {big.variant_excess:.6g} at "
            f"T={big.inverse_temp:g}, C={big.clip_norm:g} ({dataset}); also under data scaling "
            "(T/s, s z), rotation and label flip. So in tempered logistic regression a lower T "
            "is exactly a larger C/T and a smaller domain T R at the same noise multiplier: "
            "'lower temperature, less bias' is 'larger relative clip norm, smaller domain', "
            "and T = 1 with C/T, T R and step eta T^2 gets the same bias and privacy "
            "(analysis.invariance)."
        ),
    )
    return rows
