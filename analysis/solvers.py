"""Two independent solvers for (clipped) tempered logistic regression on a ball.

Problem: minimise over Theta = {||theta|| <= R}

    L_T(theta) = mean_i ln(1 + exp(-T y_i <z_i, theta>))

with the per-example gradients clipped at norm C (C = inf: no clipping). By
Song, Thakkar and Thakurta (2020, Lemma 3.1) the clipped gradient field is the
gradient of the huberised surrogate `analysis.losses.huberised_binary_loss`, so
the fixed point of clipped projected GD is that surrogate's minimiser.

1. `projected_gd` (JAX, autodiff): full-batch projected GD with per-example
   clipping through `toolkit.grads.clipping.clip_factors` (the rule DP-SGD uses),
   step 1/L with L = (T^2/4) lambda_max(Z^T Z / n), which bounds the Hessian of
   both L_T and its surrogate. It stops on a certificate, not an iteration
   count: the projected-gradient mapping G(y) = (y - y+) / eta, y+ = P(y - eta F(y)),
   has norm <= tol. For an L-smooth convex f, step 1/L and any theta* in Theta,
   f(y+) - f(theta*) <= <G, y - theta*> <= ||G|| (||y|| + R) (Beck 2017,
   "First-Order Methods in Optimization", Thm. 10.16, the fundamental
   prox-grad inequality), so the returned y+ is within ||G|| (||y|| + R)
   (<= 2R tol when y is in the ball) of the optimal value: the certificate.
   The first `PLAIN_STEPS` steps are plain projected GD (y = theta), which
   certify the default grid's cells (~2900 steps at most). Problems still
   uncertified then continue with
   Nesterov momentum (FISTA with gradient restart, O'Donoghue and Candes 2015):
   clipping with C << T leaves the surrogate almost flat and plain GD crawling.
   Momentum changes the path, not the fixed points (the surrogate's
   minimisers), and the certificate above holds at every step either way.
   Two forms of the same field: a batch of problems each with its own data
   (z of shape (B, n, d)) takes every per-example gradient by autodiff; a batch
   sharing one data set (z of shape (n, d), e.g. one data set at several (T, C))
   uses that the loss is a GLM, grad l_i = (dl/ds)(s_i) z_i with s_i = <z_i, theta>,
   so the clipped mean is Z^T (dl/ds * factors) / n: two matrix products per step
   for the whole batch, fast enough for n in the thousands and d near 1000.
2. `scipy_minimise` (numpy, hand-derived gradient): SLSQP on the same surrogate
   with the inequality constraint R^2 - ||theta||^2 >= 0. It shares no code
   with (1).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from scipy.special import expit

from analysis.losses import binary_loss, binary_loss_of_score
from analysis.precision import EPS, float64
from toolkit.grads import clip_factors

# A run that has not met its certificate after this many steps is reported as
# uncertified (and fails its check) rather than silently accepted.
MAX_ITERATIONS = 1_000_000
# Plain projected GD for this many steps, then momentum (module docstring).
PLAIN_STEPS = 3_000


@dataclasses.dataclass(frozen=True, eq=False)
class PGDSolution:
    """A batch of projected-GD solutions (leading axis = problem).

    Attributes:
      theta: (B, d) the returned iterate theta+.
      gradient_mapping: (B,) ||G|| at the last step (the certificate's input).
      gap: (B,) certified bound ||G|| (||y|| + R) <= 2R ||G|| on f(theta) - min f
        for the objective being solved (the surrogate when clipping).
      iterations: (B,) steps taken (momentum from step PLAIN_STEPS on).
      certified: (B,) whether ||G|| <= tol was reached.
      ever_clipped: (B,) whether any per-example gradient was clipped at any step.
      anchor: (B, d) the point y the last step started from (the extrapolated point
        under momentum), where G and the certificate are evaluated; theta = P(y - eta F(y)).
      step: (B,) the step size eta = 1/L used.
      radius: (B,) the radius R of each problem's ball.
    """

    theta: np.ndarray
    gradient_mapping: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    certified: np.ndarray
    ever_clipped: np.ndarray
    anchor: np.ndarray
    step: np.ndarray
    radius: np.ndarray


def _clipped_field(theta, z, y, inverse_temp, clip_norm):
    """mean_i clip(grad l_i(theta), C) and whether any example was clipped."""
    per_example = jax.vmap(
        lambda zi, yi: jax.grad(binary_loss)(theta, zi, yi, inverse_temp=inverse_temp)
    )(z, y)
    norms = jnp.linalg.norm(per_example, axis=1)
    factors = clip_factors(norms, clipping="flat", clip_norm=clip_norm)
    return jnp.mean(per_example * factors[:, None], axis=0), jnp.any(norms > clip_norm)


def _glm_clipped_field(theta, z, y, z_norms, inverse_temp, clip_norm):
    """`_clipped_field` from the GLM structure: grad l_i = (dl/ds)(s_i) z_i, s_i = <z_i, theta>.

    dl/ds is the autodiff derivative of `binary_loss_of_score`, so ||grad l_i|| =
    |dl/ds| ||z_i|| and the clipped mean is Z^T (dl/ds * factors) / n: no (n, d)
    array of per-example gradients is formed.
    """
    score = z @ theta
    dl_ds = jax.vmap(
        lambda s, yi: jax.grad(binary_loss_of_score)(s, yi, inverse_temp=inverse_temp)
    )(score, y)
    norms = jnp.abs(dl_ds) * z_norms
    factors = clip_factors(norms, clipping="flat", clip_norm=clip_norm)
    return (dl_ds * factors) @ z / z.shape[0], jnp.any(norms > clip_norm)


def _per_example_field(theta, data, inverse_temp, clip_norm):
    z, y = data
    return _clipped_field(theta, z, y, inverse_temp, clip_norm)


def _glm_field(theta, data, inverse_temp, clip_norm):
    z, y, z_norms = data
    return _glm_clipped_field(theta, z, y, z_norms, inverse_temp, clip_norm)


def _project(theta, radius):
    norm = jnp.linalg.norm(theta)
    return theta * jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)


def _solve_one(field, data, inverse_temp, clip_norm, eta, radius, tol, max_iter):
    """One problem: `field(theta, data, T, C)` is (clipped mean gradient, any clipped)."""

    def body(state):
        theta, theta_prev, t, _, _, k, clipped, _ = state
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)) / 2.0
        momentum = jnp.where(k >= PLAIN_STEPS, (t - 1.0) / t_next, 0.0)
        point = theta + momentum * (theta - theta_prev)
        mean_grad, clipped_now = field(point, data, inverse_temp, clip_norm)
        theta_next = _project(point - eta * mean_grad, radius)
        gmap = jnp.linalg.norm(point - theta_next) / eta
        # Gradient restart: drop the momentum when the step opposes the last move.
        restart = jnp.dot(point - theta_next, theta_next - theta) > 0
        t_new = jnp.where(restart, 1.0, t_next)
        reach = jnp.linalg.norm(point) + radius  # bounds ||point - theta*||
        return theta_next, theta, t_new, gmap, reach, k + 1, clipped | clipped_now, point

    def cond(state):
        return (state[3] > tol) & (state[5] < max_iter)

    z = data[0]
    zero = jnp.zeros(z.shape[-1], z.dtype)
    one = jnp.asarray(1.0, z.dtype)
    inf = jnp.asarray(jnp.inf, z.dtype)
    init = (zero, zero, one, inf, inf, 0, jnp.asarray(False), zero)
    theta, _, _, gmap, reach, k, clipped, anchor = jax.lax.while_loop(cond, body, init)
    return theta, gmap, gmap * reach, k, clipped, anchor


@jax.jit
def _solve_batch(z, y, inverse_temp, clip_norm, eta, radius, tol, max_iter):
    # max_iter is traced (not static): a run stopped early reuses the compiled loop.
    solve = functools.partial(_solve_one, _per_example_field)
    return jax.vmap(solve, in_axes=(0, 0, 0, 0, 0, None, None))(
        (z, y), inverse_temp, clip_norm, eta, radius, tol, max_iter
    )


@jax.jit
def _solve_shared(z, y, z_norms, inverse_temp, clip_norm, eta, radius, tol, max_iter):
    # One data set for the whole batch: vmap turns z @ theta into one matrix product.
    solve = functools.partial(_solve_one, _glm_field)
    return jax.vmap(solve, in_axes=(None, 0, 0, 0, 0, None, None))(
        (z, y, z_norms), inverse_temp, clip_norm, eta, radius, tol, max_iter
    )


def _lambda_max(z: np.ndarray) -> np.ndarray:
    """lambda_max(Z^T Z / n): (B,) for z of shape (B, n, d), a scalar for one (n, d) data set."""
    n = z.shape[-2]
    if z.ndim == 3:
        return np.linalg.eigvalsh(np.einsum("bni,bnj->bij", z, z) / n)[:, -1]
    # Z^T Z and Z Z^T have the same non-zero eigenvalues: use the smaller one.
    gram = z.T @ z if z.shape[1] <= n else z @ z.T
    return np.linalg.eigvalsh(gram / n)[-1]


def step_size(z: np.ndarray, inverse_temp: np.ndarray) -> np.ndarray:
    """1/L with L = (T^2/4) lambda_max(Z^T Z / n); a Hessian bound for L_T and L_hat.

    z is (B, n, d), one data set per problem, or (n, d), shared by every problem.
    """
    lam = _lambda_max(z)
    return 1.0 / np.maximum(inverse_temp**2 / 4.0 * lam, 1e-300)


@float64
def projected_gd(
    z: np.ndarray,
    y: np.ndarray,
    *,
    inverse_temp: np.ndarray,
    clip_norm: np.ndarray,
    radius: float | np.ndarray,
    tol: float,
    max_iter: int = MAX_ITERATIONS,
) -> PGDSolution:
    """Clipped projected GD (momentum after PLAIN_STEPS) to a certified optimum, batched.

    Args:
      z: (B, n, d) features, y: (B, n) labels in {-1, +1}: one data set per problem,
        per-example gradients by autodiff. Or z: (n, d), y: (n,): one data set shared
        by the B problems, the GLM form of the field (module docstring).
      inverse_temp: (B,) T > 0; clip_norm: (B,) C > 0 or inf.
      radius: R, the radius of the ball Theta: one for all problems, or (B,).
      tol: stop when the projected-gradient mapping has norm <= tol.
      max_iter: safety cap; problems that hit it come back with certified=False.

    Returns:
      A `PGDSolution`; `gap` is the certified suboptimality.
    """
    z = np.asarray(z, np.float64)
    inverse_temp = np.asarray(inverse_temp, np.float64)
    radius = np.broadcast_to(np.asarray(radius, np.float64), inverse_temp.shape)
    eta = step_size(z, inverse_temp)
    data = (jnp.asarray(z), jnp.asarray(y, jnp.float64))
    if z.ndim == 2:
        solve = _solve_shared
        data += (jnp.asarray(np.linalg.norm(z, axis=1)),)
    else:
        solve = _solve_batch
    theta, gmap, gap, iters, clipped, anchor = solve(
        *data,
        jnp.asarray(inverse_temp),
        jnp.asarray(clip_norm, jnp.float64),
        jnp.asarray(eta),
        jnp.asarray(radius),
        jnp.asarray(tol, jnp.float64),
        jnp.asarray(max_iter),
    )
    gmap = np.asarray(gmap)
    return PGDSolution(
        theta=np.asarray(theta),
        gradient_mapping=gmap,
        gap=np.asarray(gap),
        iterations=np.asarray(iters),
        certified=gmap <= tol,
        ever_clipped=np.asarray(clipped),
        anchor=np.asarray(anchor),
        step=eta,
        radius=radius.copy(),
    )


# Tolerances of `recheck_certificate`, in its column order (step, theta, G, eps):
# eta L = 1 to round-off (eigvalsh vs SVD: up to 14 eps seen); theta to round-off
# of R; ||y - y+|| is ~1e-10 eta while y is O(R), so G and eps agree to ~1e-6
# relative at worst, plus an absolute floor of 64 eps (||y|| + eta ||F|| + R) / eta
# for G (times ||y|| + R for eps).
CERT_TOLS = (64 * EPS, 1e-12, 1e-4, 1e-4)


def recheck_certificate(
    sol: PGDSolution,
    z: np.ndarray,
    y: np.ndarray,
    *,
    inverse_temp: np.ndarray,
    clip_norm: np.ndarray,
) -> np.ndarray:
    """Recompute, in numpy and without the solver's code, each returned certificate.

    From the returned anchor y (the point the last step started from): eta = 1/L with
    L = (T^2/4) ||Z||_2^2 / n by SVD, F(y) by the hand-derived surrogate gradient,
    y+ = P(y - eta F(y)) with a numpy projection, G = ||y - y+|| / eta and
    eps = G (||y|| + R) (Beck 2017, Thm. 10.16). They must reproduce the returned
    step, theta, ||G|| and gap.

    z and y are (B, n, d) and (B, n), or one (n, d) and (n,) data set for every problem,
    as given to `projected_gd`.

    Returns:
      (B, 4) errors in units of their tolerance (<= 1 passes): |eta L - 1| / tol,
      ||theta - y+|| / (R tol), and |G - G_numpy| / (tol G_numpy + floor), the same for eps.
    """
    tol_step, tol_theta, tol_g, tol_eps = CERT_TOLS
    out = np.zeros((len(sol.theta), 4))
    shared = np.ndim(z) == 2
    if shared:  # one SVD for every problem
        sq_norm = np.linalg.norm(z, 2) ** 2 / len(y)
    for i in range(len(sol.theta)):
        zi, yi = (z, y) if shared else (z[i], y[i])
        t, c, r = float(inverse_temp[i]), float(clip_norm[i]), float(sol.radius[i])
        lip = t**2 / 4.0 * (sq_norm if shared else np.linalg.norm(zi, 2) ** 2 / len(yi))
        anchor, eta = sol.anchor[i], float(sol.step[i])
        _, field = surrogate_value_and_grad(anchor, zi, yi, inverse_temp=t, clip_norm=c)
        moved = anchor - eta * field
        norm = np.linalg.norm(moved)
        nxt = moved * (r / norm) if norm > r else moved
        floor = 64 * EPS * (np.linalg.norm(anchor) + eta * np.linalg.norm(field) + r) / eta
        gmap = float(np.linalg.norm(anchor - nxt)) / eta
        reach = float(np.linalg.norm(anchor)) + r
        out[i] = [
            abs(eta * lip - 1.0) / tol_step,
            float(np.linalg.norm(nxt - sol.theta[i])) / (r * tol_theta),
            abs(gmap - sol.gradient_mapping[i]) / (tol_g * gmap + floor),
            abs(gmap * reach - sol.gap[i]) / ((tol_eps * gmap + floor) * reach),
        ]
    return out


# ----------------------------------------------------------------------------
# The scipy path: numpy only, gradients derived by hand.


def surrogate_value_and_grad(
    theta: np.ndarray, z: np.ndarray, y: np.ndarray, *, inverse_temp: float, clip_norm: float
) -> tuple[float, np.ndarray]:
    """Mean huberised loss and its gradient, by hand (numpy); C = inf gives L_T.

    Per example, with m = y <z, theta> and rho = ||z||: the gradient of l is
    -T y sigmoid(-T m) z (eq. 4); where its norm T rho sigmoid(-T m) exceeds C it
    is rescaled to norm C, and the value follows the tangent line from m0
    (see `analysis.losses`).
    """
    t, c = inverse_temp, clip_norm
    margin = y * (z @ theta)
    rho = np.linalg.norm(z, axis=1)
    value = np.logaddexp(0.0, -t * margin)
    coef = -t * expit(-t * margin)  # d l / d m
    can_clip = t * rho > c
    safe_rho = np.where(can_clip, rho, 1.0)
    ratio = np.where(can_clip, c / (t * safe_rho), 0.5)
    m0 = -np.log(ratio / (1.0 - ratio)) / t
    active = can_clip & (margin < m0)
    slope = np.where(can_clip, c / safe_rho, 0.0)
    value = np.where(active, np.logaddexp(0.0, -t * m0) + slope * (m0 - margin), value)
    coef = np.where(active, -slope, coef)
    grad = (coef * y) @ z / len(y)
    return float(np.mean(value)), grad


def objective(theta: np.ndarray, z: np.ndarray, y: np.ndarray, *, inverse_temp: float) -> float:
    """L_T(theta) in numpy float64 (the number every excess risk is computed from)."""
    return float(np.mean(np.logaddexp(0.0, -inverse_temp * y * (z @ theta))))


def frank_wolfe_gap(
    theta: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    *,
    inverse_temp: float,
    clip_norm: float,
    radius: float,
) -> float:
    """max_{||u|| <= R} <g, theta - u> = <g, theta> + R ||g||, g the surrogate's gradient at theta.

    A certificate that needs no solver: for convex f, f(u) >= f(theta) + <g, u - theta>, so
    f(theta) - min_Theta f <= this gap (Frank-Wolfe duality gap; f the huberised surrogate,
    L_T when C = inf; g by the hand-derived numpy gradient).

    At a PGD output theta = P(y - eta F(y)) with eta = 1/L it is at most 4 R ||G(y)||: the
    projection gives <F(y), theta - u> <= <G, theta - u> <= 2R ||G||, and
    ||grad f(theta) - F(y)|| <= L ||theta - y|| = ||G||, which adds another 2R ||G||.
    """
    _, grad = surrogate_value_and_grad(theta, z, y, inverse_temp=inverse_temp, clip_norm=clip_norm)
    return float(grad @ theta + radius * np.linalg.norm(grad))


def scipy_minimise(
    z: np.ndarray,
    y: np.ndarray,
    *,
    inverse_temp: float,
    clip_norm: float = math.inf,
    radius: float,
) -> tuple[np.ndarray, float]:
    """Minimise the surrogate (L_T when C = inf) over the ball with SLSQP; (theta, value)."""

    def fun(theta):
        return surrogate_value_and_grad(theta, z, y, inverse_temp=inverse_temp, clip_norm=clip_norm)

    constraint = {
        "type": "ineq",
        "fun": lambda th: radius**2 - th @ th,
        "jac": lambda th: -2.0 * th,
    }
    res = scipy.optimize.minimize(
        fun,
        np.zeros(z.shape[1]),
        jac=True,
        method="SLSQP",
        constraints=[constraint],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    theta = res.x
    norm = np.linalg.norm(theta)
    if norm > radius:  # SLSQP may sit a hair outside; evaluate on the feasible set
        theta = theta * (radius / norm)
    value, _ = fun(theta)
    return theta, value
