"""One tapped layer's share of book-keeping clipping: per-example norms and the weighted sum.

A layer is one contraction `out = contract(a, W)` with W = transform(kernel) (identity
unless the layer reparameterises its kernel), optionally followed by `+ bias`. From the
layer's input rows `a` and the gradient `d` of the loss w.r.t. `out`, for examples
i = 1..B that each own G consecutive rows (G = 1, or the K views of augmult: example i's
gradient is the sum over its views, each view's loss already weighted 1/K by the mean),
with T positions per row (G T per example):

    kind     per-example kernel gradient            squared norm (ghost form)
    linear   G_i = A_i^T D_i                         <A_i A_i^T, D_i D_i^T>
    conv     G_i = P_i^T D_i (P_i: input patches)    <P_i P_i^T, D_i D_i^T>
    embed    G_i = onehot(ids_i)^T D_i               <[id_t == id_s], D_i D_i^T>
    bias     b_i = sum_t D_i[t]                      ||b_i||^2

A, P and D stack the example's G T positions as rows. Each layer either materialises
G_i (about G T K O multiply-adds and K O floats per example) or takes the ghost norm
((G T)^2 (K + O) multiply-adds, (G T)^2 floats), by Bu et al.'s (2022) rule: ghost iff
2 (G T)^2 < K O. For augmult with T = 1 (a Linear layer after pooling) the ghost form is
the K x K Gram of the views. A reparameterised kernel (weight standardisation) has
per-example gradient J^T G_i, J the Jacobian of `transform` at this step's kernel: a
fixed linear map, applied to each materialised G_i by `jax.vmap` of its vjp; such layers
always materialise. The clipped sum is, per layer, `sum_i w_i G_i`: a tensordot of
materialised gradients, or the layer's ordinary batched weight gradient with output
gradient w_i d_i (an index-add for embeddings), then J^T.

Ghost norms are upper bounds: see `ghost_sq_norms`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from toolkit.grads import _conv_grads as conv_grads

NORM_RULES = ("mixed", "ghost", "materialise")
KINDS = ("linear", "conv", "embed")


@dataclasses.dataclass
class Layer:
    """One recorded contraction (static description; arrays travel separately)."""

    path: tuple  # the layer's path in the model
    kind: str  # one of KINDS
    param: str  # the kernel's attribute: "kernel", or "embedding" for nnx.Embed
    contract: Callable[[jax.Array, jax.Array], jax.Array] | None  # (inputs, W) -> out
    conv_args: dict[str, Any] | None
    bias: bool  # a `bias` parameter added to `out`
    transform: Callable[[jax.Array], jax.Array] | None  # kernel -> W, None: identity
    out: jax.ShapeDtypeStruct  # the contraction's output, where the zero perturbation goes
    k: int  # fan-in of W's matrix view (1 for an embedding)
    o: int  # fan-out of W's matrix view

    @property
    def name(self) -> str:
        """The layer's name, as `toolkit.grads.clipping.layer_of` gives its parameters'."""
        return "/".join(map(str, self.path))


def positions(layer: Layer, d: jax.Array, b: int) -> int:
    """Rows of the layer's per-example matrices: views x positions per view."""
    return d.size // (b * layer.o)


def use_ghost(rule: str, t: int, k: int, o: int) -> bool:
    if rule == "mixed":  # Bu et al. 2022: ghost norm iff its T^2 per-pair Gram beats K O / 2
        return 2 * t * t < k * o
    return rule == "ghost"


def _matrices(layer: Layer, a: jax.Array, d: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
    """Linear and embedding operands per example: (B, GT, K) inputs (ids: (B, GT)), (B, GT, O)."""
    if layer.kind == "embed":
        return a.reshape(b, -1), d.reshape(b, -1, layer.o)
    return a.reshape(b, -1, layer.k), d.reshape(b, -1, layer.o)


def ghost_sq_norms(layer: Layer, a: jax.Array, d: jax.Array, b: int, kernel_shape) -> jax.Array:
    """An upper bound on ||G_i||^2, from Gram matrices, without G_i.

    sum_ts <a_t, a_s> <d_t, d_s> has terms of both signs, so when they cancel its
    float rounding can dwarf the result (a norm of 1e-6 for a gradient of norm 4).
    The rounding of the two Gram entries (K and O terms) and of the two-stage sum
    over s, then t (T terms each) is at most (K + O + 2T + 3) eps S^2 with
    S = sum_t ||a_t|| ||d_t|| (Cauchy-Schwarz on every term; Higham's gamma_n), so
    that is added: the clip factor then never exceeds C / ||exact G_i||. Without
    cancellation S^2 is about T ||G_i||^2 and the slack ~1e-4 of it or less. An
    embedding's input Gram [id_t == id_s] is exact (K = 1 below).
    """
    if layer.kind == "conv":
        p = conv_grads.patches(a, kernel_shape, layer.conv_args)  # (BG, offsets, T, C)
        g = a.shape[0] // b
        p = p.reshape(b, g, *p.shape[1:]).swapaxes(1, 2)
        p = p.reshape(b, p.shape[1], -1, p.shape[-1])  # (B, offsets, GT, C)
        gram_a = jnp.einsum("bktc,bksc->bts", p, p)
        norms_a = jnp.sqrt(jnp.sum(jnp.square(p), axis=(1, 3)))
        d = d.reshape(b, -1, layer.o)
    elif layer.kind == "embed":
        ids, d = _matrices(layer, a, d, b)
        gram_a = (ids[:, :, None] == ids[:, None, :]).astype(d.dtype)
        norms_a = jnp.ones(ids.shape, d.dtype)
    else:
        a, d = _matrices(layer, a, d, b)
        if a.shape[1] == 1:  # one position: ||a d^T||^2 = ||a||^2 ||d||^2, no cancellation
            return jnp.sum(jnp.square(a[:, 0]), -1) * jnp.sum(jnp.square(d[:, 0]), -1)
        gram_a = jnp.einsum("btk,bsk->bts", a, a)
        norms_a = jnp.sqrt(jnp.sum(jnp.square(a), axis=-1))
    t, k, o = gram_a.shape[1], layer.k, layer.o
    # Two reductions of T terms, kept apart so that XLA cannot merge them into one of T^2.
    rows = lax.optimization_barrier(jnp.sum(gram_a * jnp.einsum("bto,bso->bts", d, d), axis=2))
    s = jnp.sum(norms_a * jnp.sqrt(jnp.sum(jnp.square(d), axis=-1)), axis=1)
    eps = float(jnp.finfo(jnp.result_type(d.dtype, jnp.float32)).eps)
    slack = 1.01 * (k + o + 2 * t + 3) * eps * jnp.square(s)  # 1.01: gamma_n and S's own rounding
    return jnp.maximum(jnp.sum(rows, axis=1), 0.0) + slack


def per_example_grads(layer: Layer, a: jax.Array, d: jax.Array, b: int, kernel_shape) -> jax.Array:
    """Every example's gradient w.r.t. W (summed over its views), shape (B, *W.shape)."""
    if layer.kind == "conv":
        g = conv_grads.per_example(a, d, kernel_shape, layer.conv_args)
        return g.reshape(b, -1, *kernel_shape).sum(axis=1)
    if layer.kind == "embed":
        ids, d = _matrices(layer, a, d, b)
        grads = jnp.zeros((b, *kernel_shape), d.dtype)
        return grads.at[jnp.arange(b)[:, None], ids].add(d)
    a, d = _matrices(layer, a, d, b)
    return jnp.einsum("btk,bto->bko", a, d).reshape(b, *kernel_shape)


def bias_grads(d: jax.Array, b: int, bias_shape) -> jax.Array:
    """Every example's bias gradient (B, *bias_shape): its output gradient summed over rows."""
    size = math.prod(bias_shape)
    return jnp.sum(d.reshape(b, -1, size), axis=1).reshape(b, *bias_shape)


def weighted_sum(layer: Layer, a: jax.Array, d: jax.Array, kernel) -> jax.Array:
    """sum over rows of the rows' gradients w.r.t. W, with `a` and `d` already weighted."""
    if layer.kind == "embed":
        flat = d.reshape(-1, layer.o)
        return jnp.zeros(kernel.shape, d.dtype).at[a.reshape(-1)].add(flat)
    _, vjp = jax.vjp(lambda w: layer.contract(a, w), kernel)
    (g,) = vjp(d)
    return g
