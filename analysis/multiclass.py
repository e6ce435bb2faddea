"""Clipping bias of multiclass (softmax) regression, measured (issue 11, part 5).

Problem: minimise over Theta = {theta in R^{d x k}: ||theta||_F <= R}

    L_T(theta) = mean_i -ln softmax(T theta^T z_i)_{y_i},   ||z_i|| <= 1,

with full-batch projected GD on the clipped field
F(theta) = mean_i clip_C(grad l_i(theta)) (`analysis.conservative.multiclass_clipped_field`).

No Theorem 1 here: F is the gradient of no objective (check 6), so clipped GD
minimises nothing and its limit theta_c is only a fixed point of
theta -> P(theta - eta F(theta)). What is measured is the excess risk of that
fixed point, L_T(theta_c) - L*, with two certificates:

- unclipped run (convex, L-smooth with L = (T^2/2) lambda_max(Z^T Z/n), since
  the softmax Hessian block diag(p) - p p^T has norm <= 1/2): step 1/L and the
  projected-gradient mapping G at y bound the suboptimality of y+ = P(y - eta grad)
  by ||G|| (||y|| + R) (Beck 2017, Thm. 10.16; as `analysis.solvers`), so
  L* in [L_T(theta_u) - cert_u, L_T(theta_u)];
- clipped run: the fixed-point residual ||G(y)|| = ||y - P(y - eta F(y))|| / eta <= tol
  at the last point y, and theta_c = y+ = P(y - eta F(y)) (in Theta, within eta tol
  of y). This certifies theta_c as a fixed point of clipped GD up to tol; it cannot
  bound the distance to an exact fixed point (F is not monotone in general).

So the excess of the returned theta_c lies in [e, e + cert_u] with
e = L_T(theta_c) - L_T(theta_u), rigorous up to float64 rounding of the two
risk evaluations (relative ~n eps). In particular e > 0 proves a strictly
positive bias of the point clipped GD stopped at.

The clipping threshold. ||grad l|| = T ||z|| ||e_y - p|| < sqrt(2) T ||z||
(`analysis.bounds`, the tight form of eq. 5), so when C >= sqrt(2) T max_i ||z_i||
clipping never fires: the clipped and unclipped runs execute the same floating-point
operations and the bias is exactly 0. The constant is tight: `threshold_witness`
builds data on which C = (1 - delta) sqrt(2) T max||z|| gives a certified e > 0,
and C = T max||z|| (the binary threshold, where the binary bound is 0) gives a
larger one.

The binary bound as a heuristic: `theorem1.paper_bound(T, C, R)` = 4R max(T - C, 0)
(and the same with sqrt(2) T in place of T) compared cell by cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import log_softmax

from analysis import theorem1
from analysis.conservative import multiclass_clipped_field
from analysis.datasets import DATASET_KINDS, make_datasets
from analysis.losses import multiclass_loss
from analysis.precision import float64
from analysis.result import CheckResult

SQRT2 = math.sqrt(2.0)
MAX_ITERATIONS = 200_000
# Plain projected GD for this many steps, then momentum (`_solve_one`).
PLAIN_STEPS = 200


@dataclasses.dataclass(frozen=True, eq=False)
class MulticlassDataset:
    """Features z (n, d) with ||z_i|| <= 1, integer labels y (n,) in [0, k)."""

    name: str
    z: np.ndarray
    y: np.ndarray
    classes: int

    @property
    def max_norm(self) -> float:
        return float(np.max(np.linalg.norm(self.z, axis=1)))


def make_multiclass_datasets(
    *, n: int, dim: int, classes: int, seed: int
) -> tuple[MulticlassDataset, ...]:
    """The features of `analysis.datasets.make_datasets`, relabelled into k classes.

    Labels: y = argmax_m <u_m, z> for k random unit directions u_m; `noisy` then
    redraws 20% of them uniformly, `spread` 10%, and `outliers` gives its last
    10% of points (norm-1 points off the bulk) the class argmin_m <u_m, z>.
    """
    rng = np.random.default_rng([seed, 15])
    u = rng.normal(size=(dim, classes))
    u /= np.linalg.norm(u, axis=0, keepdims=True)
    out = []
    for d in make_datasets(n=n, dim=dim, seed=seed):
        scores = d.z @ u
        y = np.argmax(scores, axis=1)
        flip = {"noisy": 0.2, "spread": 0.1}.get(d.name, 0.0)
        redraw = rng.uniform(size=n) < flip
        y = np.where(redraw, rng.integers(0, classes, size=n), y)
        if d.name == "outliers":
            n_out = max(1, n // 10)
            y[n - n_out :] = np.argmin(scores[n - n_out :], axis=1)
        out.append(MulticlassDataset(name=d.name, z=d.z, y=y.astype(np.int32), classes=classes))
    assert tuple(d.name for d in out) == DATASET_KINDS
    return tuple(out)


def objective(theta: np.ndarray, z: np.ndarray, y: np.ndarray, *, inverse_temp: float) -> float:
    """L_T(theta) in numpy float64, theta of shape (d, k)."""
    logp = log_softmax(inverse_temp * (z @ theta), axis=1)
    return float(-np.mean(logp[np.arange(len(y)), y]))


def step_size(z: np.ndarray, inverse_temp: np.ndarray) -> np.ndarray:
    """1/L with L = (T^2/2) lambda_max(Z^T Z / n), batched (z: (B, n, d), T: (B,))."""
    n = z.shape[1]
    lam = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", z, z) / n)[:, -1]
    return 1.0 / np.maximum(inverse_temp**2 / 2.0 * lam, 1e-300)


def _project(theta, radius):
    norm = jnp.linalg.norm(theta)
    return theta * jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)


def _solve_one(z, y, inverse_temp, clip_norm, eta, radius, tol, *, classes, max_iter):
    """Projected GD on the clipped field until the fixed-point residual is <= tol.

    Plain steps first; from PLAIN_STEPS on, Nesterov extrapolation with gradient restart
    (as `analysis.solvers`): with C << T the clipped field is nearly constant and plain GD
    crawls. Momentum changes the path, not the fixed points, and the residual is measured
    at the point y the step is taken from, whichever path led there.
    """

    def field(theta):
        return multiclass_clipped_field(
            theta, z, y, inverse_temp=inverse_temp, clip_norm=clip_norm, k=classes
        )

    def body(state):
        theta, theta_prev, t, _, _, k = state
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)) / 2.0
        momentum = jnp.where(k >= PLAIN_STEPS, (t - 1.0) / t_next, 0.0)
        point = theta + momentum * (theta - theta_prev)
        nxt = _project(point - eta * field(point), radius)
        restart = jnp.dot(point - nxt, nxt - theta) > 0
        gmap = jnp.linalg.norm(point - nxt) / eta
        return nxt, theta, jnp.where(restart, 1.0, t_next), gmap, point, k + 1

    def cond(state):
        return (state[3] > tol) & (state[5] < max_iter)

    zero = jnp.zeros(z.shape[1] * classes, z.dtype)
    one = jnp.asarray(1.0, z.dtype)
    init = (zero, zero, one, jnp.asarray(jnp.inf, z.dtype), zero, 0)
    nxt, _, _, gmap, point, k = jax.lax.while_loop(cond, body, init)
    grads = jax.vmap(
        jax.grad(lambda th, zi, yi: _loss(th, zi, yi, inverse_temp, classes)), (None, 0, 0)
    )(nxt, z, y)
    max_norm = jnp.max(jnp.linalg.norm(grads, axis=1))
    return point, nxt, gmap, gmap * (jnp.linalg.norm(point) + radius), k, max_norm


def _loss(theta_flat, z, y, inverse_temp, classes):
    logits = inverse_temp * (z @ theta_flat.reshape(z.shape[0], classes))
    return -jax.nn.log_softmax(logits)[y]


@partial(jax.jit, static_argnames=("classes", "max_iter"))
def _solve_batch(z, y, inverse_temp, clip_norm, eta, radius, tol, *, classes, max_iter):
    solve = partial(_solve_one, classes=classes, max_iter=max_iter)
    return jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, None, None))(
        z, y, inverse_temp, clip_norm, eta, radius, tol
    )


@jax.jit
def _batch_risk(z, y, inverse_temp, theta):
    def one(zb, yb, tb, thb):
        losses = jax.vmap(lambda zi, yi: multiclass_loss(thb, zi, yi, inverse_temp=tb))(zb, yb)
        return jnp.mean(losses)

    return jax.vmap(one)(z, y, inverse_temp, theta)


@float64
def autodiff_risks(z, y, inverse_temp, theta) -> np.ndarray:
    """mean_i `losses.multiclass_loss` per problem in float64; theta of shape (B, d, k)."""
    return np.asarray(
        _batch_risk(
            jnp.asarray(z, jnp.float64),
            jnp.asarray(y, jnp.int32),
            jnp.asarray(inverse_temp, jnp.float64),
            jnp.asarray(theta, jnp.float64),
        )
    )


@dataclasses.dataclass(frozen=True, eq=False)
class FixedPoints:
    """Batched clipped-GD solutions (leading axis = problem), each theta of shape (d, k).

    Attributes:
      point: y, the point whose residual was measured (the clipped fixed point theta_c).
      next_point: y+ = P(y - eta F(y)) (the certified point of an unclipped, convex run).
      residual: ||G(y)||; gap: ||G(y)|| (||y|| + R) (a suboptimality bound for y+ when C = inf).
      iterations, certified (residual <= tol), max_grad_norm (max_i ||grad l_i(y+)||).
    """

    point: np.ndarray
    next_point: np.ndarray
    residual: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    certified: np.ndarray
    max_grad_norm: np.ndarray


@float64
def clipped_gd(
    z: np.ndarray,
    y: np.ndarray,
    *,
    classes: int,
    inverse_temp: np.ndarray,
    clip_norm: np.ndarray,
    radius: float,
    tol: float,
    max_iter: int = MAX_ITERATIONS,
) -> FixedPoints:
    """Projected GD with per-example clipping, step 1/L, batched: z (B, n, d), y (B, n)."""
    z = np.asarray(z, np.float64)
    b, _, d = z.shape
    inverse_temp = np.asarray(inverse_temp, np.float64)
    out = _solve_batch(
        jnp.asarray(z),
        jnp.asarray(y, jnp.int32),
        jnp.asarray(inverse_temp),
        jnp.asarray(clip_norm, jnp.float64),
        jnp.asarray(step_size(z, inverse_temp)),
        jnp.asarray(radius, jnp.float64),
        jnp.asarray(tol, jnp.float64),
        classes=classes,
        max_iter=max_iter,
    )
    point, nxt, gmap, gap, iters, gnorm = (np.asarray(a) for a in out)
    return FixedPoints(
        point=point.reshape(b, d, classes),
        next_point=nxt.reshape(b, d, classes),
        residual=gmap,
        gap=gap,
        iterations=iters,
        certified=gmap <= tol,
        max_grad_norm=gnorm,
    )


@dataclasses.dataclass(frozen=True)
class MulticlassCell:
    """One (dataset, T, C) cell: e = L_T(theta_c) - L_T(theta_u); true excess in [e, e + cert_u]."""

    dataset: str
    inverse_temp: float
    clip_norm: float
    radius: float
    max_norm: float
    excess: float
    risk: float  # L_T(theta_u), the scale of the rounding error of `excess`
    risk_error: float  # |L_T(theta_u), numpy - the same by `analysis.losses.multiclass_loss`|
    cert_unclipped: float
    residual: float  # the larger fixed-point residual of the two runs
    certified: bool
    iterations: int
    max_grad_norm: float  # max_i ||grad l_i(theta_c)||, theta_c = y+
    theta_norm: float  # ||theta_c||_F
    binary_bound: float  # theorem1.paper_bound(T, C, R)
    binary_bound_sqrt2: float  # theorem1.paper_bound(sqrt(2) T max||z||, C, R)

    @property
    def above_threshold(self) -> bool:
        """C >= sqrt(2) T max||z||: clipping can never fire."""
        return self.clip_norm >= SQRT2 * self.inverse_temp * self.max_norm


def solve_cells(
    problems: Sequence[tuple[str, np.ndarray, np.ndarray, float, float]],
    *,
    classes: int,
    radius: float,
    tol: float,
) -> list[MulticlassCell]:
    """problems: (name, z, y, T, C); each solved clipped and unclipped, in one batch."""
    batch = [(z, y, t, c) for _, z, y, t, c in problems] + [
        (z, y, t, math.inf) for _, z, y, t, _ in problems
    ]
    sol = clipped_gd(
        np.stack([b[0] for b in batch]),
        np.stack([b[1] for b in batch]),
        classes=classes,
        inverse_temp=np.array([b[2] for b in batch]),
        clip_norm=np.array([b[3] for b in batch]),
        radius=radius,
        tol=tol,
    )
    m = len(problems)
    # The unclipped risks again, by autodiff's loss (`analysis.losses`), for the grid row.
    jax_risk = autodiff_risks(
        np.stack([b[0] for b in batch[m:]]),
        np.stack([b[1] for b in batch[m:]]),
        np.array([b[2] for b in batch[m:]]),
        sol.next_point[m:],
    )
    cells = []
    for i, (name, z, y, t, c) in enumerate(problems):
        j = m + i
        f_c = objective(sol.next_point[i], z, y, inverse_temp=t)
        f_u = objective(sol.next_point[j], z, y, inverse_temp=t)
        max_norm = float(np.max(np.linalg.norm(z, axis=1)))
        cells.append(
            MulticlassCell(
                dataset=name,
                inverse_temp=float(t),
                clip_norm=float(c),
                radius=float(radius),
                max_norm=max_norm,
                excess=f_c - f_u,
                risk=f_u,
                risk_error=abs(f_u - float(jax_risk[i])),
                cert_unclipped=float(sol.gap[j]),
                residual=float(max(sol.residual[i], sol.residual[j])),
                certified=bool(sol.certified[i] and sol.certified[j]),
                iterations=int(sol.iterations[i]),
                max_grad_norm=float(sol.max_grad_norm[i]),
                theta_norm=float(np.linalg.norm(sol.next_point[i])),
                binary_bound=theorem1.paper_bound(t, c, radius),
                binary_bound_sqrt2=theorem1.paper_bound(SQRT2 * t * max_norm, c, radius),
            )
        )
    return cells


def run_grid(
    datasets: Sequence[MulticlassDataset],
    *,
    temperatures: Sequence[float],
    clip_norms: Sequence[float],
    radius: float,
    tol: float,
) -> list[MulticlassCell]:
    """Every (dataset, T, C) cell of the grid, as Theorem 1's grid (`theorem1.run_grid`)."""
    classes = datasets[0].classes
    problems = [
        (d.name, d.z, d.y, t, c) for d in datasets for t in temperatures for c in clip_norms
    ]
    return solve_cells(problems, classes=classes, radius=radius, tol=tol)


def threshold_witness(*, n_major: int = 12, scale: float = 0.5, dim: int = 2):
    """Data on which clipping just below sqrt(2) T max||z|| leaves a certified positive bias.

    k = 3 classes on the e1 axis: n_major points (scale e1, class 1), n_major points
    (-scale e1, class 2) and one outlier (e1, class 0), the only point of norm 1. The
    majority makes the model confident that class 1 holds at +e1, and the linear
    logits extrapolate that confidence to the outlier at twice the distance, so at the
    optimum its p_0 is tiny and one wrong class holds nearly all its mass: its gradient
    norm is within a small fraction of sqrt(2) T ||z||.
    """
    z = np.zeros((2 * n_major + 1, dim))
    z[:n_major, 0] = scale
    z[n_major : 2 * n_major, 0] = -scale
    z[-1, 0] = 1.0
    y = np.array([1] * n_major + [2] * n_major + [0], np.int32)
    return MulticlassDataset(name="threshold witness", z=z, y=y, classes=3)


# ----------------------------------------------------------------------------
# Rows for `bound-check`.

# The witness of `threshold_witness` and where it is solved: C = (1 - BELOW) sqrt(2) T max||z||.
WITNESS_T = 4.0
WITNESS_R = 4.0
WITNESS_N_MAJOR = 50
WITNESS_SCALE = 0.25
BELOW = 1e-3
# Rounding of e = L(theta_c) - L(theta_u): two means of n terms, each ~n eps relative.
ROUNDING_ULPS = 64


def _trend(cells: Sequence[MulticlassCell]) -> tuple[int, int, str]:
    """How many (dataset, C) series have an excess non-decreasing in T (up to the certificate)."""
    series: dict[tuple[str, float], list[MulticlassCell]] = {}
    for c in cells:
        series.setdefault((c.dataset, c.clip_norm), []).append(c)
    monotone = 0
    for s in series.values():
        ex = [c.excess for c in sorted(s, key=lambda c: c.inverse_temp)]
        tol = max(c.cert_unclipped for c in s)
        monotone += all(b >= a - tol for a, b in zip(ex, ex[1:]))
    key = max(series, key=lambda k: max(c.excess for c in series[k]))
    shown = sorted(series[key], key=lambda c: c.inverse_temp)
    example = (
        f"{key[0]}, C={key[1]:g}: excess "
        + ", ".join(f"{c.excess:.2g}" for c in shown)
        + " at T = "
        + ", ".join(f"{c.inverse_temp:g}" for c in shown)
    )
    return monotone, len(series), example


def check_grid(cells: Sequence[MulticlassCell], *, tol: float) -> list[CheckResult]:
    """Certificates and e >= -cert_u on the grid; exact zero above sqrt(2) T max||z||."""
    worst_res = max(c.residual for c in cells)
    certified = all(c.certified for c in cells)
    # Every returned point is a projection: inside the Frobenius ball.
    in_ball = all(c.theta_norm <= c.radius * (1.0 + 1e-12) for c in cells)
    # L(theta_c) >= L* >= L(theta_u) - cert_u: a proved lower limit of e (up to rounding).
    low = min(c.excess + c.cert_unclipped for c in cells)
    rounding = ROUNDING_ULPS * np.finfo(np.float64).eps * max(c.risk for c in cells)
    risk_error = max(c.risk_error for c in cells)
    monotone, n_series, example = _trend(cells)
    positive = [c for c in cells if c.binary_bound > 0]
    ratio = max((c.excess / c.binary_bound for c in positive), default=0.0)
    ratio2 = max(
        (c.excess / c.binary_bound_sqrt2 for c in cells if c.binary_bound_sqrt2 > 0), default=0.0
    )
    gap_cells = [c for c in cells if c.binary_bound == 0 and not c.above_threshold]
    violated = [c for c in gap_cells if c.excess > c.cert_unclipped]
    worst_gap = max(violated, key=lambda c: c.excess, default=None)
    finding = (
        f"Certified clipped-GD excess on {len(cells)} cells: non-decreasing in T in {monotone} of "
        f"{n_series} (dataset, C) series (e.g. {example}). Binary Theorem 1 as a heuristic: "
        f"excess / 4R(T-C) <= {ratio:.2g} where T > C, and excess / 4R(sqrt2 T max||z|| - C) <= "
        f"{ratio2:.2g}; but in {len(violated)} of {len(gap_cells)} cells with "
        "T <= C < sqrt2 T max||z|| the binary bound is 0 while the excess is certified > 0"
        + (
            f" (largest {worst_gap.excess:.2g}: {worst_gap.dataset}, T={worst_gap.inverse_temp:g}, "
            f"C={worst_gap.clip_norm:g})."
            if worst_gap
            else "."
        )
    )
    above = [c for c in cells if c.above_threshold]
    zero = max((abs(c.excess) for c in above), default=0.0)
    return [
        CheckResult(
            name="softmax: fixed point ||G||",
            measure="max fixed-point residual ||G||",
            value=worst_res,
            tolerance=f"<= {tol:.0e}; e >= -cert",
            passed=certified and in_ball and low >= -rounding and risk_error <= rounding,
            finding=finding,
            details={
                "min e + cert_u (>= 0 proved)": low,
                "all theta_c in the ball": in_ball,
                "max |risk numpy - risk jax|": risk_error,
                "max excess / binary bound (T > C)": ratio,
                "max excess / binary bound with sqrt(2) T max||z||": ratio2,
                "cells T <= C < sqrt2 T max||z|| with excess > cert": [
                    (c.dataset, c.inverse_temp, c.clip_norm, c.excess) for c in violated
                ],
                "max PGD iterations (clipped)": max(c.iterations for c in cells),
            },
        ),
        CheckResult(
            name="softmax: |excess| if C>=sqrt2T|z|",
            measure="max |excess| (bitwise)",
            value=zero,
            tolerance="== 0",
            passed=zero == 0.0,
            finding=(
                f"In all {len(above)} grid cells with C >= sqrt2 T max||z|| clipping never fires "
                "and the excess is exactly 0."
            ),
            details={"cells": len(above)},
        ),
    ]


@float64
def check_threshold(*, tol: float) -> CheckResult:
    """The witness: e > 0 just below sqrt(2) T max||z||, e = 0 at it, e > 0 at C = T max||z||."""
    w = threshold_witness(n_major=WITNESS_N_MAJOR, scale=WITNESS_SCALE)
    t = WITNESS_T
    thr = SQRT2 * t * w.max_norm
    cs = (thr * (1.0 - BELOW), thr, t * w.max_norm)
    below, at, binary = solve_cells(
        [(w.name, w.z, w.y, t, c) for c in cs], classes=w.classes, radius=WITNESS_R, tol=tol
    )
    # The risks are at most L(0) = ln 3; rounding of e is a few ulps of that per term.
    rounding = ROUNDING_ULPS * np.finfo(np.float64).eps * math.log(w.classes)
    ok = (
        below.certified
        and at.certified
        and binary.certified
        and below.excess > rounding
        and at.excess == 0.0
        and binary.excess > below.excess
    )
    return CheckResult(
        name="softmax: witness, C<sqrt2 T|z|",
        measure="L(theta_c) - L(theta_u) on the witness",
        value=below.excess,
        tolerance=f"> {rounding:.0e} (certified)",
        passed=bool(ok),
        finding=(
            f"The sqrt(2) constant is tight: on {len(w.y)} points (k=3, T={t:g}, R={WITNESS_R:g}) "
            f"the outlier's gradient at the clipped fixed point is {below.max_grad_norm / thr:.6f} "
            f"of sqrt2 T||z||, so C = (1 - {BELOW:g}) sqrt2 T max||z|| leaves a certified excess "
            f">= {below.excess:.2e} (0 exactly at C = sqrt2 T max||z||), and C = T max||z||, "
            f"where the binary bound is 0, leaves {binary.excess:.2e}."
        ),
        details={
            "excess at sqrt2 T max||z||": at.excess,
            "excess at T max||z||": binary.excess,
            "fixed-point residuals": [below.residual, at.residual, binary.residual],
        },
    )


def suite_rows(
    *,
    temperatures: Sequence[float],
    clip_norms: Sequence[float],
    radius: float,
    n: int,
    dim: int,
    seed: int,
    tol: float,
    quick: bool,
) -> list[CheckResult]:
    """The rows `bound-check` runs: the grid (k = 3; two datasets when quick) and the witness."""
    datasets = make_multiclass_datasets(n=n, dim=dim, classes=3, seed=seed)
    if quick:
        datasets = datasets[1:3]  # noisy, outliers
    cells = run_grid(
        datasets, temperatures=temperatures, clip_norms=clip_norms, radius=radius, tol=tol
    )
    return [*check_grid(cells, tol=tol), check_threshold(tol=1e-12)]
