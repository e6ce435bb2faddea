"""The tempered logistic losses of the paper's "Approach" section, in JAX.

Binary (y in {-1, +1}, ||z|| <= 1):

    l(theta; z, y) = ln(1 + exp(-y T <z, theta>))

Multiclass with k classes, theta in R^{d x k}, integer label y:

    l(theta; z, y) = -ln softmax(T theta^T z)_y

(the paper writes the log-likelihood without the minus sign; the gradient norm
is the same). These are differentiated with `jax.grad`; the hand-derived
gradients of eqs. (4) and (5) live, in numpy, next to the checks that compare
the two.

The huberised surrogate of Song, Thakkar and Thakurta (2020, Lemma 3.1) is the
binary loss with its gradient clipped to norm C. In terms of the margin
m = y <z, theta> and rho = ||z||, the gradient norm is T rho sigmoid(-T m), a
decreasing function of m, so clipping is active exactly on m < m0 with
sigmoid(-T m0) = C / (T rho). The surrogate is l for m >= m0 and the tangent
line of l at m0 below it (slope -C / rho in m):

    l_hat(m) = l(m0) + (C / rho) (m0 - m)     for m < m0.

It is convex and C^1, its gradient is exactly the clipped gradient of l, and
l_hat <= l everywhere (a convex function lies above its tangents). When
C >= T rho clipping never activates and l_hat = l.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def binary_loss(theta: ArrayLike, z: ArrayLike, y: ArrayLike, *, inverse_temp: ArrayLike):
    """ln(1 + exp(-y T <z, theta>)) for one example (softplus, stable for any margin)."""
    return binary_loss_of_score(jnp.dot(z, theta), y, inverse_temp=inverse_temp)


def binary_loss_of_score(score: ArrayLike, y: ArrayLike, *, inverse_temp: ArrayLike):
    """`binary_loss` as a function of the score s = <z, theta>.

    The loss is a GLM: it depends on theta only through s, so by the chain rule its
    gradient is (dl/ds) z with norm |dl/ds| ||z||. `analysis.solvers` differentiates
    this scalar function instead of forming one d-vector per example.
    """
    margin = y * score
    return jax.nn.softplus(-inverse_temp * margin)


def multiclass_loss(theta: ArrayLike, z: ArrayLike, y: ArrayLike, *, inverse_temp: ArrayLike):
    """-ln softmax(T theta^T z)_y for one example; theta has shape (d, k), y is an int."""
    logits = inverse_temp * (jnp.asarray(z) @ theta)
    return -jax.nn.log_softmax(logits)[y]


def huberised_binary_loss(
    theta: ArrayLike,
    z: ArrayLike,
    y: ArrayLike,
    *,
    inverse_temp: ArrayLike,
    clip_norm: ArrayLike,
):
    """The Lemma 3.1 surrogate of `binary_loss` for clipping norm C (module docstring).

    Its gradient is `binary_loss`'s gradient scaled by min(1, C / ||grad||).
    C = inf gives `binary_loss` itself.
    """
    t = jnp.asarray(inverse_temp)
    margin = y * jnp.dot(z, theta)
    rho = jnp.linalg.norm(z)
    # Clipping can activate only if T rho > C; guard the divisions (double-where
    # keeps NaN out of both the value and its gradient).
    can_clip = t * rho > clip_norm
    ratio = jnp.where(can_clip, clip_norm / jnp.where(can_clip, t * rho, 1.0), 0.5)
    m0 = -jnp.log(ratio / (1.0 - ratio)) / t  # sigmoid(-T m0) = C / (T rho)
    slope = jnp.where(can_clip, clip_norm / jnp.where(can_clip, rho, 1.0), 0.0)
    linear = jax.nn.softplus(-t * m0) + slope * (m0 - margin)
    exact = jax.nn.softplus(-t * margin)
    return jnp.where(can_clip & (margin < m0), linear, exact)
