"""Check 6: why Theorem 1 stops at binary (Song, Thakkar and Thakurta 2020, Lemma 3.1).

A vector field F is the gradient of some objective (is conservative) on a
simply connected set only if its Jacobian is symmetric wherever it is
differentiable. For the clipped full-batch field

    F(theta) = mean_i clip(grad l_i(theta), C)

- binary GLM: grad l_i = a(m_i) z_i points along z_i, and clipping rescales it
  along z_i, so each clipped term is h'(m_i) y_i z_i with h the huberised loss:
  F = grad L_hat exactly, and dF/dtheta = mean_i h''(m_i) z_i z_i^T is
  symmetric. Numerically the asymmetry is float64 round-off.
- multiclass softmax: in the clipped region the per-example Jacobian is
  (C / ||g||)(I - g g^T / ||g||^2) H_i, which is not symmetric unless g is an
  eigenvector of H_i. So F is the gradient of no objective, and there is no
  surrogate for a Theorem 1 to bound.

Two computations per claim: the Jacobian by `jax.jacfwd` and by central finite
differences of F (numpy), and for the binary case F against `jax.grad` of the
explicit surrogate `analysis.losses.huberised_binary_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

from analysis.losses import binary_loss, huberised_binary_loss, multiclass_loss
from analysis.precision import EPS, float64
from analysis.result import CheckResult
from toolkit.grads import clip_factors

# Binary: J against the hand-derived Hessian of L_hat, and its asymmetry, are
# round-off: each entry is a sum of n products, so the error is <= ~n eps ||J||;
# 1e-12 leaves a margin for n up to ~4000. (Symmetry alone cannot fail: any
# norm-dependent rescaling of y z gives a symmetric Jacobian; J = H can.)
BINARY_ASYMMETRY_TOL = 1e-12
# "Clearly not symmetric": at least 5% of the Jacobian's norm.
MULTICLASS_ASYMMETRY_MIN = 0.05
# Central differences with step h have error O(h^2 ||F'''||) + O(eps / h).
FD_STEP = 1e-5
FD_TOL = 1e-6


def _clip_rows(per_example: jax.Array, clip_norm) -> tuple[jax.Array, jax.Array]:
    flat = per_example.reshape(per_example.shape[0], -1)
    norms = jnp.linalg.norm(flat, axis=1)
    factors = clip_factors(norms, clipping="flat", clip_norm=clip_norm)
    return flat * factors[:, None], norms


def binary_clipped_field(theta, z, y, *, inverse_temp, clip_norm):
    """mean_i clip(grad l_i(theta), C) for the binary tempered logistic loss (autodiff)."""
    grads = jax.vmap(
        lambda zi, yi: jax.grad(binary_loss)(theta, zi, yi, inverse_temp=inverse_temp)
    )(z, y)
    clipped, _ = _clip_rows(grads, clip_norm)
    return jnp.mean(clipped, axis=0)


def binary_surrogate(theta, z, y, *, inverse_temp, clip_norm):
    """L_hat(theta) = mean_i huberised l_i(theta)."""
    return jnp.mean(
        jax.vmap(
            lambda zi, yi: huberised_binary_loss(
                theta, zi, yi, inverse_temp=inverse_temp, clip_norm=clip_norm
            )
        )(z, y)
    )


def multiclass_clipped_field(theta_flat, z, y, *, inverse_temp, clip_norm, k):
    """The clipped field of the softmax loss, theta flattened from (d, k)."""
    theta = theta_flat.reshape(z.shape[1], k)
    grads = jax.vmap(
        lambda zi, yi: jax.grad(multiclass_loss)(theta, zi, yi, inverse_temp=inverse_temp)
    )(z, y)
    clipped, _ = _clip_rows(grads, clip_norm)
    return jnp.mean(clipped, axis=0)


def binary_surrogate_hessian(theta, z, y, *, inverse_temp, clip_norm) -> np.ndarray:
    """d^2 L_hat / d theta^2 by hand (numpy): mean_i h_i''(m_i) z_i z_i^T.

    h_i'' = T^2 sigmoid(T m) sigmoid(-T m) where example i is not clipped (m > m0),
    and 0 where it is (the surrogate is linear there). The clipped field's Jacobian
    must equal this matrix: symmetric, and fixed by the clip rule and the slope.
    """
    t = inverse_temp
    margin = y * (z @ theta)
    rho = np.linalg.norm(z, axis=1)
    unclipped = t * rho * expit(-t * margin) <= clip_norm
    curvature = np.where(unclipped, t**2 * expit(t * margin) * expit(-t * margin), 0.0)
    return (z * curvature[:, None]).T @ z / len(y)


def asymmetry(jac: np.ndarray) -> float:
    """||J - J^T||_F / ||J||_F (0 for the zero matrix)."""
    norm = np.linalg.norm(jac)
    return float(np.linalg.norm(jac - jac.T) / norm) if norm > 0 else 0.0


def finite_difference_jacobian(field, theta: np.ndarray, step: float = FD_STEP) -> np.ndarray:
    """Central differences of `field` at theta, column by column (numpy float64)."""
    cols = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = step
        cols.append((np.asarray(field(theta + e)) - np.asarray(field(theta - e))) / (2 * step))
    return np.stack(cols, axis=1)


def _clipped_fraction(per_example_norms: np.ndarray, clip_norm: float) -> float:
    return float(np.mean(per_example_norms > clip_norm))


@float64
def check_conservative(
    *, n: int, dim: int, classes: int, inverse_temp: float, clip_norm: float, points: int, seed: int
) -> list[CheckResult]:
    """Binary: symmetric Jacobian, F = grad L_hat. Multiclass: a clearly asymmetric Jacobian."""
    rng = np.random.default_rng([seed, 6])
    t, c = inverse_temp, clip_norm
    z = rng.normal(size=(n, dim))
    z *= rng.uniform(0.2, 1.0, size=(n, 1)) / np.linalg.norm(z, axis=1, keepdims=True)
    y_bin = rng.choice([-1.0, 1.0], size=n)
    y_multi = rng.integers(0, classes, size=n)

    # One compiled evaluation per family: field, Jacobian, and the per-example norms.
    def bin_field(th):
        return binary_clipped_field(th, z, y_bin, inverse_temp=t, clip_norm=c)

    def bin_norms(th):
        grads = jax.vmap(lambda zi, yi: jax.grad(binary_loss)(th, zi, yi, inverse_temp=t))(z, y_bin)
        return jnp.linalg.norm(grads, axis=1)

    def bin_surrogate_grad(th):
        return jax.grad(binary_surrogate)(th, z, y_bin, inverse_temp=t, clip_norm=c)

    def multi_field(th, clip=c):
        return multiclass_clipped_field(th, z, y_multi, inverse_temp=t, clip_norm=clip, k=classes)

    def multi_norms(th):
        grads = jax.vmap(
            lambda zi, yi: jax.grad(multiclass_loss)(
                th.reshape(dim, classes), zi, yi, inverse_temp=t
            )
        )(z, y_multi)
        return jnp.linalg.norm(grads.reshape(n, -1), axis=1)

    bin_field_jit = jax.jit(bin_field)
    bin_eval = jax.jit(
        lambda th: (bin_field(th), jax.jacfwd(bin_field)(th), bin_surrogate_grad(th), bin_norms(th))
    )
    multi_field_jit = jax.jit(multi_field)
    # Without clipping (C = inf) the field is grad L_T, a gradient: the control.
    multi_eval = jax.jit(
        lambda th: (
            jax.jacfwd(multi_field)(th),
            jax.jacfwd(lambda v: multi_field(v, jnp.inf))(th),
            multi_norms(th),
        )
    )

    # Binary: at several random theta, with some examples clipped and some not.
    bin_asym, bin_grad_err, bin_fd_err, bin_fracs, bin_hess_err = 0.0, 0.0, 0.0, [], 0.0
    for _ in range(points):
        theta = rng.normal(size=dim) * 2.0
        f, jac, g, norms = (np.asarray(a) for a in bin_eval(theta))
        bin_asym = max(bin_asym, asymmetry(jac))
        hess = binary_surrogate_hessian(theta, z, y_bin, inverse_temp=t, clip_norm=c)
        bin_hess_err = max(bin_hess_err, float(np.linalg.norm(jac - hess) / np.linalg.norm(hess)))
        bin_grad_err = max(bin_grad_err, float(np.max(np.abs(f - g))) / max(t, 1.0))
        fd = finite_difference_jacobian(bin_field_jit, theta)
        bin_fd_err = max(bin_fd_err, float(np.linalg.norm(fd - jac) / np.linalg.norm(jac)))
        bin_fracs.append(_clipped_fraction(norms, c))

    # Multiclass: the most asymmetric of several random theta.
    best = None
    for _ in range(points):
        theta = rng.normal(size=dim * classes) * 2.0
        jac, jac_free, norms = (np.asarray(a) for a in multi_eval(theta))
        if best is None or asymmetry(jac) > best[0]:
            best = (asymmetry(jac), theta, jac, asymmetry(jac_free), norms)
    best_asym, best_theta, best_jac, free_asym, norms = best
    fd = finite_difference_jacobian(multi_field_jit, best_theta)
    multi_fd_err = float(np.linalg.norm(fd - best_jac) / np.linalg.norm(best_jac))
    fd_asym = asymmetry(fd)
    multi_frac = _clipped_fraction(norms, c)

    setting = f"n={n}, d={dim}, k={classes}, T={t:g}, C={c:g}"
    return [
        CheckResult(
            name="binary field: J vs Hessian of L_hat",
            measure="max ||J - H||/||H||",
            value=bin_hess_err,
            tolerance=f"<= {BINARY_ASYMMETRY_TOL:.0e}",
            passed=bin_hess_err <= BINARY_ASYMMETRY_TOL
            and bin_asym <= BINARY_ASYMMETRY_TOL
            and bin_fd_err <= FD_TOL,
            finding=(
                f"Binary ({setting}, {points} points, {min(bin_fracs):.0%}-{max(bin_fracs):.0%} "
                f"of examples clipped): the clipped field's Jacobian equals the hand-derived "
                f"Hessian of the huberised surrogate, mean over unclipped i of h''(m_i) z_i z_i^T, "
                f"to {bin_hess_err:.1e} (so it is symmetric: {bin_asym:.1e}), and the field "
                f"equals grad of the surrogate to {bin_grad_err:.1e}: clipped GD is GD on it."
            ),
            details={
                "||J - J^T||/||J||": bin_asym,
                "jacfwd vs finite differences (rel.)": bin_fd_err,
                "clipped fraction per point": bin_fracs,
            },
        ),
        CheckResult(
            name="binary field vs grad surrogate",
            measure="max |error|/max(T,1)",
            value=bin_grad_err,
            tolerance="<= 8 eps",
            passed=bin_grad_err <= 8 * EPS,
        ),
        CheckResult(
            name="softmax field: ||J - J^T||/||J||",
            measure="max ||J-J^T||/||J||",
            value=best_asym,
            tolerance=f">= {MULTICLASS_ASYMMETRY_MIN:g}",
            passed=best_asym >= MULTICLASS_ASYMMETRY_MIN and fd_asym >= MULTICLASS_ASYMMETRY_MIN,
            finding=(
                f"Multiclass softmax ({setting}, {multi_frac:.0%} of examples clipped): the "
                f"clipped field's Jacobian has asymmetry {best_asym:.2f} (finite differences: "
                f"{fd_asym:.2f}; "
                f"the same point without clipping: {free_asym:.1e}), so it is the gradient of no "
                "objective and Theorem 1's argument cannot extend beyond binary."
            ),
            details={
                "theta (flattened d x k)": best_theta,
                "asymmetry without clipping": free_asym,
                "clipped fraction": multi_frac,
            },
        ),
        CheckResult(
            name="softmax J: jacfwd vs finite diff.",
            measure="||J_fd - J||/||J||",
            value=multi_fd_err,
            tolerance=f"<= {FD_TOL:.0e}",
            passed=multi_fd_err <= FD_TOL,
        ),
    ]
