"""The DP-SGD step (Abadi et al. 2016) over a split Flax NNX model.

One logical step, for a sampled batch S and expected batch size B = q N:

    g_i   = grad_theta loss(theta; x_i, y_i)                 (per example; toolkit.bookkeeping
                                                              or jax.vmap of jax.grad)
    s     = sum_{i in S} clip(g_i)                           (toolkit.clipping)
    g_hat = (s + N(0, (sigma * Delta)^2 I)) / B              (Delta = C flat, 1 automatic)
    theta <- optimizer(theta, g_hat)                         (any optax transformation)

Noise goes on the clipped *sum*; only then is anything rescaled. The division
is by the expected batch size, not the realised one, which would leak the
batch size. Large logical batches are split into fixed-shape physical
micro-batches whose clipped sums are accumulated by a Python loop over the
jitted `accumulate` function (convolutions inside `lax.scan` bodies are ~20x
slower on XLA:CPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toolkit import bookkeeping
from toolkit import clipping as clip_lib
from toolkit.errors import ToolkitError

# How per-example gradients are clipped; all give the same clipped sum to float32 rounding.
#   bookkeeping: one batched backward pass, per-layer norms (toolkit.bookkeeping)
#   vmap:        jax.vmap(jax.grad(loss)), the reference; any NNX model
#   auto:        bookkeeping where the model allows it, otherwise vmap
IMPLEMENTATIONS = ("auto", "bookkeeping", "vmap")


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The privatisation of one step: clipping rule and noise.

    `clip_norm = inf` and `noise_multiplier = 0` give plain (non-private) SGD
    through the same code path.
    """

    clipping: str = "flat"
    clip_norm: float = 1.0
    gamma: float = 0.01  # automatic clipping's stabiliser, g / (||g|| + gamma)
    noise_multiplier: float = 0.0

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise on the clipped sum: sigma times the sensitivity."""
        if self.noise_multiplier == 0.0:
            return 0.0
        return self.noise_multiplier * clip_lib.sensitivity(
            clipping=self.clipping, clip_norm=self.clip_norm
        )


def per_example_loss_fn(graphdef: nnx.GraphDef) -> Callable:
    """loss(params, x, y) for ONE example (x without batch axis), softmax cross-entropy."""

    def loss(params, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params)(x[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

    return loss


def per_example_grads_fn(graphdef: nnx.GraphDef) -> Callable:
    """`(params, x, y) -> (losses, grads)` per example, by jax.vmap: the reference path."""
    return jax.vmap(jax.value_and_grad(per_example_loss_fn(graphdef)), in_axes=(None, 0, 0))


def make_accumulate(
    graphdef: nnx.GraphDef,
    mechanism: Mechanism,
    *,
    implementation: str = "auto",
    norm_rule: str = "mixed",
) -> Callable:
    """Jitted `accumulate(params, acc, images, labels, idx, mask) -> (acc, norms, losses)`.

    Gathers the micro-batch `images[idx]` on device, computes per-example
    gradients (or only their norms, see `IMPLEMENTATIONS`), clips them and adds
    their masked sum to `acc`. Also returns the pre-clip per-example norms and
    losses, for the metrics only (padded rows are junk: use `mask`; a non-finite
    norm means that example's gradient was dropped, see `toolkit.clipping`).
    `norm_rule` is `toolkit.bookkeeping`'s per-layer choice.

    Inputs sharded over the batch axis (`jax.sharding`) shard the per-example
    work; the sum comes back replicated.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; expected one of {IMPLEMENTATIONS}.")
    value_and_grad = per_example_grads_fn(graphdef)
    fast = bookkeeping.make_clipped_grad(graphdef, norm_rule=norm_rule)

    def by_vmap(params, x, y, weights_fn):
        losses, grads = value_and_grad(params, x, y)
        norms = clip_lib.per_example_norms(grads)
        return clip_lib.clipped_sum(grads, weights_fn(norms)), norms, losses

    @jax.jit
    def accumulate(params, acc, images, labels, idx, mask):
        def weights_fn(norms):
            factors = clip_lib.clip_factors(
                norms,
                clipping=mechanism.clipping,
                clip_norm=mechanism.clip_norm,
                gamma=mechanism.gamma,
            )
            return jnp.where(mask, factors, 0.0)

        x, y = images[idx], labels[idx]
        if implementation == "vmap":
            summed, norms, losses = by_vmap(params, x, y, weights_fn)
        else:
            try:  # decided once, while tracing
                summed, norms, losses = fast(params, x, y, weights_fn)
            except bookkeeping.Unsupported:
                if implementation == "bookkeeping":
                    raise
                summed, norms, losses = by_vmap(params, x, y, weights_fn)
        acc = jax.tree.map(jnp.add, acc, summed)
        return acc, norms, losses

    return accumulate


def resolve_implementation(
    graphdef: nnx.GraphDef, params, images: jax.Array, labels: jax.Array, implementation: str
) -> str:
    """Which path to run for this model: "bookkeeping" or "vmap", checked on real examples.

    Book-keeping assumes what it cannot check while tracing: examples do not interact
    inside the model, and each kernel is used only by its own layer. So besides its
    trace-time checks, it must give the reference (vmap) per-example norms on the
    first 3 examples of `images`. `auto` falls back to vmap when it does not;
    an explicit `bookkeeping` raises ToolkitError. Run once, before training.
    """
    if implementation == "vmap":
        return "vmap"
    x, y = images[:3], labels[:3]
    fast = bookkeeping.make_clipped_grad(graphdef)
    try:
        _, norms, _ = jax.jit(lambda p: fast(p, x, y, jnp.ones_like))(params)
    except bookkeeping.Unsupported as e:
        if implementation == "bookkeeping":
            raise ToolkitError(f"per_example='bookkeeping' cannot run this model: {e}") from None
        return "vmap"
    _, grads = jax.jit(per_example_grads_fn(graphdef))(params, x, y)
    ref = np.asarray(clip_lib.per_example_norms(grads))
    norms = np.asarray(norms)
    # Equal to rounding, plus the ghost norms' rounding slack (<= 2e-4 on the paper's CNNs).
    if np.allclose(norms, ref, rtol=1e-3, atol=0.0, equal_nan=True):
        return "bookkeeping"
    if implementation == "bookkeeping":
        raise ToolkitError(
            f"per_example='bookkeeping' gives per-example gradient norms {norms} where "
            f"vmap gives {ref} (examples interacting inside the model, or a shared kernel?); "
            "use per_example='auto' or 'vmap'."
        )
    return "vmap"


def add_gaussian_noise(tree, key: jax.Array, std: float):
    """tree + N(0, std^2) i.i.d. on every coordinate; one independent subkey per leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def make_update(
    optimizer: optax.GradientTransformation, mechanism: Mechanism, *, expected_batch_size: float
) -> Callable:
    """Jitted `update(params, opt_state, clipped_sum, key) -> (params, opt_state)`.

    Adds noise of std `mechanism.noise_std` to the clipped sum, divides by the
    expected batch size, and applies the optimizer.
    """
    std = mechanism.noise_std

    @jax.jit
    def update(params, opt_state, clipped_sum, key):
        noisy = add_gaussian_noise(clipped_sum, key, std) if std > 0 else clipped_sum
        grad = jax.tree.map(lambda g: g / expected_batch_size, noisy)
        updates, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return update


def zeros_like(params):
    return jax.tree.map(jnp.zeros_like, params)


def make_optimizer(name: str, *, lr: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """`sgd` (with optional heavy-ball momentum) or `adam`."""
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer={name!r}; expected 'sgd' or 'adam'.")
