"""Per-example gradient clipping and the clipped sum (eq. 2 of the paper).

Two rules, applied to each example's whole gradient (all parameters at once):

- `flat`:      g_i <- g_i * min(1, C / ||g_i||)            sensitivity C
- `automatic`: g_i <- g_i / (||g_i|| + gamma)  (Bu et al.)  sensitivity 1

Guarantee: every weighted per-example gradient that enters the sum has norm
<= C (flat) or < 1 (automatic), so adding or removing one example changes
the clipped sum by at most that much.

Edge cases (the rule that keeps the bound):

| input                              | factor                       |
|------------------------------------|------------------------------|
| ||g|| <= C (flat)                   | 1 (no change)                |
| C = inf (flat)                     | 1 (no clipping; no DP bound) |
| ||g|| = 0                          | 1 flat, 1/gamma automatic    |
| non-finite entry (NaN/inf) in g_i  | example contributes zeros    |
| masked (padding) example           | example contributes zeros    |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from toolkit.base.choices import CLIPPING_RULES


def per_example_norms(grads) -> jax.Array:
    """L2 norm over all parameters of each example's gradient; leaves have a leading batch axis."""
    leaves = jax.tree.leaves(grads)
    sq = sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in leaves)
    return jnp.sqrt(sq)


def clip_factors(
    norms: jax.Array, *, clipping: str, clip_norm: float, gamma: float = 0.01
) -> jax.Array:
    """Per-example multipliers for `norms` under the chosen rule; 0 for non-finite norms."""
    if clipping == "flat":
        # where(), not min(1, C/norm): C/0 and inf/inf must not leak NaN.
        factors = jnp.where(norms > clip_norm, clip_norm / norms, 1.0)
    elif clipping == "automatic":
        factors = 1.0 / (norms + gamma)
    else:
        raise ValueError(f"clipping={clipping!r}; expected one of {CLIPPING_RULES}.")
    return jnp.where(jnp.isfinite(norms), factors, 0.0)


def sensitivity(*, clipping: str, clip_norm: float) -> float:
    """L2 sensitivity of the clipped sum under add/remove-one neighbours."""
    return clip_norm if clipping == "flat" else 1.0


def clipped_sum(grads, weights: jax.Array):
    """sum_i weights_i * g_i, leaf by leaf; rows with weight 0 contribute exact zeros.

    `weights` are clip factors times the padding mask. Rows with weight 0 are
    zeroed before the sum so that a NaN or inf there cannot reach the result
    (0 * inf = NaN).
    """

    def leaf_sum(g: jax.Array) -> jax.Array:
        keep = (weights != 0).reshape((-1,) + (1,) * (g.ndim - 1))
        g = jnp.where(keep, g, 0.0)
        return jnp.tensordot(weights.astype(g.dtype), g, axes=1)

    return jax.tree.map(leaf_sum, grads)
