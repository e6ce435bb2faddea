"""Per-example clipping by book-keeping: one batched backward, no per-example backward.

For a model made of `nnx.Linear` / `nnx.Conv` layers whose examples do not interact
(no batch norm), one batched forward and one batched backward of the summed loss give,
for every layer l, its input `a` and the gradient `d` of the loss w.r.t. its pre-bias
output. Row i of `d` is example i's own output gradient, so example i's weight
gradient is a contraction of `a_i` with `d_i` (Bu et al. 2023, "book-keeping"):

    layer    per-example gradient              squared norm
    Linear   G_i = a_i d_i^T                   ||a_i||^2 ||d_i||^2
    Conv     G_i = P_i^T D_i                   <P_i P_i^T, D_i D_i^T>      ("ghost", T x T Grams)
    bias     g_i = sum_t D_i[t]                ||g_i||^2

with P_i (T x K) the input patches of example i and D_i (T x O) its output gradients
at the T output positions. Each layer either materialises G_i (T K O multiply-adds
and K O floats per example) or takes the ghost norm (T^2 (K + O) multiply-adds and
T^2 floats), whichever is cheaper (Bu et al. 2022, mixed ghost clipping).

With weights w_i = mask_i * clip_factor_i (toolkit.clipping) the clipped sum is, per layer,
`tensordot(w, G)` where G was materialised, and otherwise the layer's ordinary batched
weight gradient with output gradient w_i d_i. Neither needs a second backward pass.

The layers are found generically: every `nnx.Linear` / `nnx.Conv` of the merged model
gets its `dot_general` / `conv_general_dilated` hook wrapped, which records the hook's
operands and adds a zero perturbation to its output whose gradient is `d`. Checked at
trace time, with an `Unsupported` error otherwise: every `nnx.Param` is the kernel or
bias of exactly one such layer, each layer is called once with the example axis
leading, and convolutions are channels-last with no input dilation, no feature groups
and no kernel mask. The example axis must stay leading and unmixed inside the model
(true of any model that maps examples independently); this cannot be checked here,
and tests compare against `jax.vmap(jax.grad(...))`.

References:
  Bu, Mao, Xu (2022), "Scalable and Efficient Training of Large Convolutional Neural
    Networks with Differential Privacy" (mixed ghost clipping), NeurIPS.
  Bu, Wang, Zha, Karypis (2023), "Differentially Private Optimization on Large Model
    at Small Cost" (book-keeping), ICML.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from toolkit.errors import ToolkitError

NORM_RULES = ("mixed", "ghost", "materialise")
_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)


class Unsupported(ToolkitError):
    """The model has a parameter or layer the book-keeping path cannot handle; use vmap."""


@dataclasses.dataclass
class _Call:
    """One recorded Linear / Conv contraction (static description; arrays go through aux)."""

    path: tuple  # the layer's path in the model
    kind: str  # "linear" or "conv"
    contract: Callable[[jax.Array, jax.Array], jax.Array]  # (inputs, kernel) -> pre-bias output
    conv_args: dict[str, Any] | None
    use_bias: bool
    out_shape: tuple[int, ...] = ()


def _canonical_dims(ndim: int) -> lax.ConvDimensionNumbers:
    """Channels-last (N, spatial..., C) / (spatial..., I, O), the layout nnx.Conv uses."""
    spatial = tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim - 1, *spatial),
        rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
        out_spec=(0, ndim - 1, *spatial),
    )


def _install_taps(model: nnx.Module, calls: list[_Call], perturb, record) -> set[tuple]:
    """Wrap every Linear / Conv contraction hook; returns the param paths they cover."""
    covered = set()
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            kind, hook = "linear", "dot_general"
        elif isinstance(module, nnx.Conv):
            kind, hook = "conv", "conv_general_dilated"
            if module.mask is not None:
                raise Unsupported(f"layer {path}: masked convolution kernels are not supported.")
        else:
            continue
        covered.add((*path, "kernel"))
        if module.use_bias:
            covered.add((*path, "bias"))
        setattr(module, hook, _tap(getattr(module, hook), path, kind, module.use_bias, calls,
                                   perturb, record))  # fmt: skip
    return covered


def _tap(original, path, kind, use_bias, calls, perturb, record):
    def tapped(lhs, rhs, *args, **kwargs):
        if any(c.path == path for c in calls):
            raise Unsupported(f"layer {path} is called more than once per forward pass.")
        conv_args = None
        if kind == "conv":
            conv_args = _CONV_SIGNATURE.bind(lhs, rhs, *args, **kwargs).arguments
            _check_conv(path, lhs.ndim, conv_args)
        out = original(lhs, rhs, *args, **kwargs)
        call = _Call(path, kind, lambda a, k: original(a, k, *args, **kwargs), conv_args,
                     use_bias, out.shape)  # fmt: skip
        calls.append(call)
        record(lhs, rhs)
        return out + perturb(len(calls) - 1, out)

    return tapped


def _check_conv(path, ndim, args) -> None:
    n = ndim - 2
    if tuple(args.get("lhs_dilation") or (1,) * n) != (1,) * n:
        raise Unsupported(f"layer {path}: input dilation is not supported.")
    if args.get("feature_group_count", 1) != 1 or args.get("batch_group_count", 1) != 1:
        raise Unsupported(f"layer {path}: grouped convolutions are not supported.")
    dims = args.get("dimension_numbers")
    if not isinstance(dims, lax.ConvDimensionNumbers) or dims != _canonical_dims(ndim):
        raise Unsupported(f"layer {path}: only channels-last convolutions are supported.")


def _patches(x: jax.Array, kernel_shape, args) -> jax.Array:
    """(B, T, K) input patches of a channels-last convolution, K ordered like the kernel.

    Built from strided slices (pure data movement): `lax.conv_general_dilated_patches`
    would cost K times more multiply-adds than the convolution itself.
    """
    spatial = kernel_shape[:-2]
    n = len(spatial)
    strides = tuple(args["window_strides"])
    dilation = tuple(args.get("rhs_dilation") or (1,) * n)
    padding = args["padding"]
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(spatial, dilation)]
        padding = lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    out = [(s - (k - 1) * d - 1) // st + 1
           for s, k, d, st in zip(x.shape[1:-1], spatial, dilation, strides)]  # fmt: skip
    cols = []
    for offset in itertools.product(*(range(k) for k in spatial)):
        start = [0, *(o * d for o, d in zip(offset, dilation)), 0]
        limit = [x.shape[0], *(s + (m - 1) * st + 1 for s, m, st in zip(start[1:], out, strides)),
                 x.shape[-1]]  # fmt: skip
        cols.append(lax.slice(x, start, limit, (1, *strides, 1)))
    patches = jnp.stack(cols, axis=-2)  # (B, *out, prod(spatial), C)
    return patches.reshape(x.shape[0], math.prod(out), -1)


def _as_rows(a: jax.Array, d: jax.Array, call: _Call, kernel_shape) -> tuple[jax.Array, jax.Array]:
    """(B, T, K) inputs and (B, T, O) output gradients: G_i = A_i^T D_i."""
    b = a.shape[0]
    if call.kind == "conv":
        a = _patches(a, kernel_shape, call.conv_args)
    return a.reshape(b, -1, a.shape[-1]), d.reshape(b, -1, d.shape[-1])


def _use_ghost(rule: str, t: int, k: int, o: int) -> bool:
    if rule == "mixed":  # Bu et al. 2022: ghost iff its T^2 (K + O) beats materialising's T K O
        return t * t * (k + o) < t * k * o
    return rule == "ghost"


def _path_of(keypath) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", None)) for k in keypath
                 if not isinstance(k, jax.tree_util.GetAttrKey))  # fmt: skip


def make_clipped_grad(graphdef: nnx.GraphDef, *, norm_rule: str = "mixed") -> Callable:
    """`clipped_grad(params, x, y, weights_fn) -> (clipped_sum, norms, losses)`, traceable.

    `weights_fn(norms) -> weights` maps the (B,) per-example gradient norms to the
    weights of the sum (clip factor times mask; rows with weight 0 contribute exact
    zeros, even when their gradient is not finite). `norm_rule` chooses per layer:
    "mixed" (the cheaper of ghost and materialised), "ghost" or "materialise".
    Raises `Unsupported` at trace time for models outside the scope above.
    """
    if norm_rule not in NORM_RULES:
        raise ValueError(f"norm_rule={norm_rule!r}; expected one of {NORM_RULES}.")

    def run_model(params, x, y, calls, perturb, record):
        model = nnx.merge(graphdef, params)
        covered = _install_taps(model, calls, perturb, record)
        param_paths = {_path_of(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)}
        if param_paths - covered:
            raise Unsupported(f"parameters outside Linear/Conv layers: {sorted(param_paths - covered)}.")  # noqa: E501
        logits = model(x)
        if not calls or any(c.path + ("kernel",) not in param_paths for c in calls):
            raise Unsupported("a Linear/Conv layer was called that is not a parameter of the model.")  # noqa: E501
        missing = {p[:-1] for p in covered} - {c.path for c in calls}
        if missing:
            raise Unsupported(f"layers never called through their contraction hook: {sorted(missing)}.")  # noqa: E501
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    def clipped_grad(params, x, y, weights_fn):
        b = x.shape[0]
        # Pass 0 (shapes only): which layers, in which order, with which output shapes.
        probe: list[_Call] = []
        jax.eval_shape(lambda p: run_model(p, x, y, probe, lambda i, o: 0.0, lambda a, k: None),
                       params)  # fmt: skip
        for c in probe:
            if c.out_shape[0] != b:
                raise Unsupported(f"layer {c.path}: leading axis {c.out_shape[0]} != batch {b}.")

        calls: list[_Call] = []

        def forward(zs):
            operands = []
            losses = run_model(params, x, y, calls, lambda i, o: zs[i],
                               lambda a, k: operands.append((a, k)))  # fmt: skip
            return losses, operands

        zeros = [jnp.zeros(c.out_shape, jnp.float32) for c in probe]
        losses, backward, operands = jax.vjp(forward, zeros, has_aux=True)
        (grads_out,) = backward(jnp.ones_like(losses))

        sq = jnp.zeros(b, jnp.float32)
        layers = []
        for call, (a, kernel), d in zip(calls, operands, grads_out):
            rows_a, rows_d = _as_rows(a, d, call, kernel.shape)
            t, k, o = rows_a.shape[1], rows_a.shape[2], rows_d.shape[2]
            bias = jnp.sum(rows_d, axis=1) if call.use_bias else None
            if _use_ghost(norm_rule, t, k, o):
                if t == 1:
                    sq += jnp.sum(rows_a[:, 0] ** 2, -1) * jnp.sum(rows_d[:, 0] ** 2, -1)
                else:
                    gram_a = jnp.einsum("btk,bsk->bts", rows_a, rows_a)
                    gram_d = jnp.einsum("bto,bso->bts", rows_d, rows_d)
                    sq += jnp.sum(gram_a * gram_d, axis=(1, 2))
                per_example = None
            else:
                per_example = jnp.einsum("btk,bto->bko", rows_a, rows_d)
                sq += jnp.sum(jnp.square(per_example), axis=(1, 2))
            if bias is not None:
                sq += jnp.sum(jnp.square(bias), axis=1)
            layers.append((call, a, kernel, d, per_example, bias))

        norms = jnp.sqrt(sq)
        weights = weights_fn(norms)
        keep = weights != 0

        def rows(v, w=None):  # zero dropped rows before any product: 0 * inf = NaN
            v = jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0)
            return v if w is None else v * w.reshape((-1,) + (1,) * (v.ndim - 1))

        sums = {}
        for call, a, kernel, d, per_example, bias in layers:
            if per_example is not None:
                g = jnp.tensordot(weights, rows(per_example), axes=1).reshape(kernel.shape)
            else:
                _, vjp = jax.vjp(lambda kk: call.contract(rows(a), kk), kernel)  # noqa: B023
                (g,) = vjp(rows(d, weights))
            sums[(*call.path, "kernel")] = g
            if bias is not None:
                sums[(*call.path, "bias")] = jnp.tensordot(weights, rows(bias), axes=1)

        def leaf(kp, p):
            return sums[_path_of(kp)].astype(p.dtype)

        return jax.tree_util.tree_map_with_path(leaf, params), norms, losses

    return clipped_grad


def is_supported(graphdef: nnx.GraphDef, params, x: jax.Array, y: jax.Array) -> bool:
    """Whether `make_clipped_grad(graphdef)` can trace this model (shape-only check)."""
    fn = make_clipped_grad(graphdef)
    try:
        jax.eval_shape(lambda p, xx, yy: fn(p, xx, yy, lambda n: n), params, x, y)
    except Unsupported:
        return False
    return True

