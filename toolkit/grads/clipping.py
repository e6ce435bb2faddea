"""Per-example gradient clipping and the clipped sum (eq. 2 of the paper).

The rules, g_i being example i's whole gradient (all parameters) and g_il its part in
layer l (the parameters with one parent path in the model, `layer_names`: a Linear's
kernel and bias, a LayerNorm's scale and bias; a top-level parameter alone):

- `flat`:      g_i <- g_i * min(1, C / ||g_i||)              sensitivity C
- `automatic`: g_i <- g_i / (||g_i|| + gamma)  (Bu et al.)    sensitivity 1
- `quantile`:  flat at C_t, the clip norm of step t, which follows a quantile of the
               norms through a noisy count (Andrew et al. 2021,
               `toolkit.privacy._quantile`)                    sensitivity C_t
- `per-layer`: g_il <- g_il * min(1, C_l / ||g_il||) for every layer l, with
               sum_l C_l^2 = C^2 (McMahan et al. 2018)         sensitivity C

Per-layer: the clipped gradient has norm sqrt(sum_l ||clip(g_il)||^2) <= sqrt(sum_l C_l^2)
= C, so the noise of the flat rule covers it. The C_l are fixed before training from the
model's shapes alone (`layer_clip_norms`), never from data: `equal` gives every layer
C / sqrt(L); `size` gives layer l C sqrt(d_l / d), d_l its parameter count, so a layer
with as large a share of coordinates gets as large a share of the budget.

Guarantee: every weighted per-example gradient that enters the sum has norm
<= C (flat, per-layer; C_t quantile) or < 1 (automatic), so adding or removing one
example changes the clipped sum by at most that much.

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

import math

import jax
import jax.numpy as jnp
import numpy as np

from toolkit.base.choices import CLIPPING_RULES, LAYER_SPLITS


def layer_of(keypath) -> str:
    """The layer of a parameter from its key path: ("conv1", "kernel", .value) -> "conv1"."""
    keys = [
        str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
        for k in keypath
        if not isinstance(k, jax.tree_util.GetAttrKey)
    ]
    return "/".join(keys[:-1]) or (keys[-1] if keys else "")


def layer_names(tree) -> list[str]:
    """The layer of each leaf of a params-shaped tree, in leaf order."""
    return [layer_of(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(tree)]


def layer_clip_norms(params, *, clip_norm: float, split: str = "equal") -> dict[str, float]:
    """C_l for each layer of `params` (shapes only), with sum_l C_l^2 = clip_norm^2.

    `equal`: C / sqrt(L). `size`: C sqrt(d_l / d), d_l the layer's parameter count.
    """
    sizes: dict[str, int] = {}
    for name, leaf in zip(layer_names(params), jax.tree.leaves(params), strict=True):
        sizes[name] = sizes.get(name, 0) + int(np.prod(np.shape(leaf)))
    if split == "equal":
        return {name: clip_norm / math.sqrt(len(sizes)) for name in sizes}
    if split == "size":
        total = sum(sizes.values())
        return {name: clip_norm * math.sqrt(d / total) for name, d in sizes.items()}
    raise ValueError(f"layer_split={split!r}; expected one of {LAYER_SPLITS}.")


def per_example_norms(grads) -> jax.Array:
    """L2 norm over all parameters of each example's gradient; leaves have a leading batch axis."""
    leaves = jax.tree.leaves(grads)
    sq = sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in leaves)
    return jnp.sqrt(sq)


def clip_factors(
    norms: jax.Array, *, clipping: str, clip_norm: float, gamma: float = 0.01
) -> jax.Array:
    """Per-example multipliers for `norms` under the chosen rule; 0 for non-finite norms.

    `quantile` and `per-layer` clip like `flat` at `clip_norm` (per-layer: a layer's norms
    at its C_l, see `layer_weights`); `clip_norm` may be a traced scalar.
    """
    if clipping in ("flat", "quantile", "per-layer"):
        # where(), not min(1, C/norm): C/0 and inf/inf must not leak NaN.
        factors = jnp.where(norms > clip_norm, clip_norm / norms, 1.0)
    elif clipping == "automatic":
        factors = 1.0 / (norms + gamma)
    else:
        raise ValueError(f"clipping={clipping!r}; expected one of {CLIPPING_RULES}.")
    return jnp.where(jnp.isfinite(norms), factors, 0.0)


def sensitivity(*, clipping: str, clip_norm: float) -> float:
    """L2 sensitivity of the clipped sum under add/remove-one neighbours (quantile: at the
    step's clip norm)."""
    return 1.0 if clipping == "automatic" else clip_norm


def per_layer_norms(grads) -> dict[str, jax.Array]:
    """{layer: (B,) norm of each example's gradient in that layer}; leaves have a batch axis."""
    sq: dict[str, jax.Array] = {}
    for name, g in zip(layer_names(grads), jax.tree.leaves(grads), strict=True):
        sq[name] = sq.get(name, 0.0) + jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
    return {name: jnp.sqrt(v) for name, v in sq.items()}


def layer_weights(norms: dict[str, jax.Array], clip_norms: dict[str, float]) -> dict:
    """{layer: (B,) multipliers}: flat clipping of each layer's part at its own C_l.

    An example with a non-finite norm in any layer contributes zeros in every layer.
    """
    finite = jnp.all(jnp.stack([jnp.isfinite(n) for n in norms.values()]), axis=0)
    return {
        name: jnp.where(finite, clip_factors(n, clipping="flat", clip_norm=clip_norms[name]), 0.0)
        for name, n in norms.items()
    }


def leaf_weights(tree, weights: dict[str, jax.Array]) -> list[jax.Array]:
    """The (B,) weights of each leaf of `tree` from its layer's entry in `weights`."""
    return [weights[name] for name in layer_names(tree)]


def clipped_sum(grads, weights: jax.Array | dict[str, jax.Array]):
    """sum_i weights_i * g_i, leaf by leaf; rows with weight 0 contribute exact zeros.

    `weights` are clip factors times the padding mask: one (B,) array for the whole
    gradient, or {layer: (B,)} (per-layer clipping). Rows with weight 0 are zeroed before
    the sum so that a NaN or inf there cannot reach the result (0 * inf = NaN).
    """

    def leaf_sum(g: jax.Array, w: jax.Array) -> jax.Array:
        keep = (w != 0).reshape((-1,) + (1,) * (g.ndim - 1))
        g = jnp.where(keep, g, 0.0)
        return jnp.tensordot(w.astype(g.dtype), g, axes=1)

    leaves, treedef = jax.tree.flatten(grads)
    per_leaf = (
        leaf_weights(grads, weights) if isinstance(weights, dict) else [weights] * len(leaves)
    )
    return jax.tree.unflatten(
        treedef, [leaf_sum(g, w) for g, w in zip(leaves, per_leaf, strict=True)]
    )
