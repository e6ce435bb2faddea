"""Quantile-adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021): the clip norm
follows a target quantile of the per-example gradient norms, through a noisy count.

Step t clips at C_t (flat rule, `toolkit.grads.clipping`) and releases two sums over the
sampled batch S, with B the expected batch size:

    s_t   = sum_{i in S} clip_{C_t}(g_i) + N(0, (sigma_g C_t)^2 I)     the gradient
    b_t   = sum_{i in S} (1[||g_i|| <= C_t] - 1/2) + N(0, sigma_b^2)   the centred count
    theta <- optimizer(theta, s_t / B)
    C_t+1 = C_t exp(-eta ([b_t / B + 1/2]_0^1 - gamma))                geometric update

gamma is the target quantile (the share of examples left unclipped), eta the adaptation
rate, and the noisy share is clamped to [0, 1] (as TF Privacy's `QuantileEstimatorQuery`
does), so one step moves C by at most a factor exp(eta). Adding or removing one example
moves s_t by at most C_t and b_t by at most 1/2 (the count is centred, as in TF
Privacy's `QuantileAdaptiveClipSumQuery`).
Scaled by their noise, the pair moves by at most sqrt(1 / sigma_g^2 + 1 / (2 sigma_b)^2):
the step is one Gaussian mechanism, Poisson-subsampled, with noise multiplier

    sigma = (sigma_g^-2 + (2 sigma_b)^-2)^(-1/2)                      (Andrew et al., Thm. 1)

which is what the accountants compose (`toolkit.privacy.PrivacyParams`): the run's
`noise_multiplier` is this sigma, and the gradient gets the slightly larger

    sigma_g = (sigma^-2 - (2 sigma_b)^-2)^(-1/2)                      (`gradient_noise`)

C_t+1 depends only on released (noisy) values, so the composition is adaptive but each
step keeps this bound; the clip norms of the run are post-processing (recorded in
`epochs.jsonl`). Andrew et al. take sigma_b = B / 20 (`default_count_noise`), which
costs little: at B = 2048 and sigma = 2.35, sigma_g is 0.007% above sigma.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from toolkit.base import ToolkitError
from toolkit.privacy._privatizer import add_gaussian_noise


class ClippedStep(NamedTuple):
    """What the quantile privatizer takes: the clipped sum and the centred count."""

    clipped_sum: Any  # params-shaped: sum_i clip_{C_t}(g_i) over the sampled batch
    unclipped: jax.Array  # scalar: sum_i (1[||g_i|| <= C_t] - 1/2) over the sampled batch


class QuantileState(NamedTuple):
    key: jax.Array  # the run's noise key; step t draws from fold_in(key, t)
    count: jax.Array  # int32 scalar: steps privatized so far
    clip_norm: jax.Array  # float32 scalar: C_t, the clip norm of the next step


def default_count_noise(expected_batch_size: float) -> float:
    """Andrew et al.'s sigma_b = B / 20."""
    return expected_batch_size / 20.0


def gradient_noise(noise_multiplier: float, count_noise: float) -> float:
    """sigma_g with (sigma_g^-2 + (2 sigma_b)^-2)^(-1/2) = sigma; needs 2 sigma_b > sigma."""
    if not (noise_multiplier > 0 and 2 * count_noise > noise_multiplier):
        raise ToolkitError(
            f"count_noise={count_noise:g} must be > noise_multiplier / 2 = "
            f"{noise_multiplier / 2:g} (the count's share of the noise; default B / 20)."
        )
    return (noise_multiplier**-2 - (2 * count_noise) ** -2) ** -0.5


def centred_count(norms: jax.Array, mask: jax.Array, clip_norm: jax.Array) -> jax.Array:
    """sum over real rows of 1[||g_i|| <= C] - 1/2 (a non-finite norm counts as clipped)."""
    below = jnp.where(norms <= clip_norm, 0.5, -0.5)
    return jnp.sum(jnp.where(mask, below, 0.0))


def quantile_privatizer(
    *,
    noise_multiplier: float,
    count_noise: float,
    target_quantile: float,
    learning_rate: float,
    initial_clip_norm: float,
    expected_batch_size: float,
    key: jax.Array,
) -> optax.GradientTransformation:
    """The Gaussian privatizer with the quantile rule's clip norm in its state.

    Its input is a `ClippedStep` (clipped at the state's `clip_norm`), its output the noisy
    mean gradient, params-shaped; chain any optax optimizer after it.

    Args:
        noise_multiplier: sigma > 0 of the whole step, the accounted one.
        count_noise: sigma_b > sigma / 2, the count's noise std.
        target_quantile: gamma in (0, 1), the share of examples to leave unclipped.
        learning_rate: eta > 0 of the geometric update.
        initial_clip_norm: C_0 > 0.
        expected_batch_size: B = q N, the divisor of both sums.
        key: The run's noise key.
    """
    sigma_g = gradient_noise(noise_multiplier, count_noise)
    if not 0 < target_quantile < 1:
        raise ToolkitError(f"target_quantile={target_quantile} must be in (0, 1).")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ToolkitError(f"quantile_lr={learning_rate} must be finite and > 0.")
    if not (math.isfinite(initial_clip_norm) and initial_clip_norm > 0):
        raise ToolkitError(f"clip_norm={initial_clip_norm} must be finite and > 0.")
    if not expected_batch_size > 0:
        raise ToolkitError(f"expected_batch_size={expected_batch_size} must be > 0.")

    def init(params) -> QuantileState:
        del params
        return QuantileState(
            key, jnp.zeros((), jnp.int32), jnp.asarray(initial_clip_norm, jnp.float32)
        )

    def update(step: ClippedStep, state: QuantileState, params=None):
        del params
        grad_key, count_key = jax.random.split(jax.random.fold_in(state.key, state.count))
        c = state.clip_norm
        noisy = add_gaussian_noise(step.clipped_sum, grad_key, sigma_g * c)
        count = step.unclipped + count_noise * jax.random.normal(count_key, (), jnp.float32)
        unclipped_share = jnp.clip(count / expected_batch_size + 0.5, 0.0, 1.0)
        new_c = c * jnp.exp(-learning_rate * (unclipped_share - target_quantile))
        grads = jax.tree.map(lambda g: g / expected_batch_size, noisy)
        return grads, QuantileState(state.key, state.count + 1, new_c.astype(jnp.float32))

    return optax.GradientTransformation(init, update)


def clip_norm_of(opt_state) -> jax.Array | None:
    """C_t held in `opt_state` (anywhere inside it); None without a quantile privatizer."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, QuantileState))
        if isinstance(s, QuantileState)
    ]
    return found[0].clip_norm if found else None
