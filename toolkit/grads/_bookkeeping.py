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
at the T output positions. Each layer either materialises G_i (T K O multiply-adds,
K O floats per example) or takes the ghost norm (T^2 (K + O) multiply-adds, T^2 floats),
by the rule of Bu et al. (2022): ghost iff 2 T^2 < K O. Materialised convolution
gradients use no patch tensor: at stride 1 each kernel offset is a constant shift of the
flattened input (one slice and one batched matmul per offset), and a strided convolution
is first rewritten as a stride-1 one on s x s space-to-depth blocks.

With weights w_i = mask_i * clip_factor_i (toolkit.grads.clipping, so the same rule, bound
and edge cases) the clipped sum is, per layer, `tensordot(w, G)` where G was
materialised, and otherwise the layer's ordinary batched weight gradient with output
gradient w_i d_i. Neither needs a second backward pass. Rows with weight 0 (masked,
non-finite) are zeroed before any product, so they contribute exact zeros.

The layers are found generically: every `nnx.Linear` / `nnx.Conv` of the merged model
gets its `dot_general` / `conv_general_dilated` hook wrapped, which records the hook's
operands and adds a zero perturbation to its output whose gradient is `d`. Checked at
trace time, with an `Unsupported` error otherwise: every `nnx.Param` is the kernel or
bias of exactly one such layer, each layer is called once with the example axis
leading, and convolutions are channels-last with no input dilation, no feature groups
and no kernel mask. The example axis must stay leading and unmixed inside the model
(true of any model that maps examples independently); this cannot be checked here,
and tests compare against `jax.vmap(jax.grad(...))`.

Ghost norms are upper bounds: each carries its worst-case float rounding (see
`_ghost_sq_norms`), since terms of both signs can cancel. Not handled: layers inside
`nnx.remat` / `nnx.scan` (they fail while tracing, use vmap), and a layer created with
an explicit `precision=` keeps it in its ghost-sum contraction while norms run at
"highest". `toolkit.grads._per_example.ClippedGradFn.checked` checks a model against vmap on real
examples before training.

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

from toolkit.base import ToolkitError
from toolkit.privacy import randomness

NORM_RULES = ("mixed", "ghost", "materialise")
_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)
# Below this many (offset, channel) columns, a convolution's per-example gradients come
# from one matmul over concatenated shifted inputs rather than one tiny matmul per offset.
_FUSE_OFFSETS_UP_TO = 256


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
    out: jax.ShapeDtypeStruct  # the contraction's output, where the zero perturbation goes


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
        setattr(
            module,
            hook,
            _tap(getattr(module, hook), path, kind, module.use_bias, calls, perturb, record),
        )
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
        call = _Call(
            path,
            kind,
            lambda a, k: original(a, k, *args, **kwargs),
            conv_args,
            use_bias,
            jax.ShapeDtypeStruct(out.shape, out.dtype),
        )
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


def _conv_padding(x: jax.Array, kernel_shape, args) -> tuple[list, tuple, tuple]:
    """Explicit (lo, hi) padding, strides and kernel dilation of a channels-last convolution."""
    spatial = kernel_shape[:-2]
    strides = tuple(args["window_strides"])
    dilation = tuple(args.get("rhs_dilation") or (1,) * len(spatial))
    padding = args["padding"]
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(spatial, dilation)]
        padding = lax.padtype_to_pads(x.shape[1:-1], dilated, strides, padding)
    return [tuple(p) for p in padding], strides, dilation


def _patches(x: jax.Array, kernel_shape, args) -> jax.Array:
    """(B, prod(kernel spatial), T, C) input patches, offsets ordered like the kernel.

    Strided slices, pure data movement: `lax.conv_general_dilated_patches` would
    cost prod(kernel) * C times more multiply-adds than the convolution itself.
    Offsets lead and channels trail so that each slice is written contiguously.
    """
    spatial = kernel_shape[:-2]
    padding, strides, dilation = _conv_padding(x, kernel_shape, args)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    out = [
        (s - (k - 1) * d - 1) // st + 1
        for s, k, d, st in zip(x.shape[1:-1], spatial, dilation, strides)
    ]
    cols = []
    for offset in itertools.product(*(range(k) for k in spatial)):
        start = [0, *(o * d for o, d in zip(offset, dilation)), 0]
        limit = [
            x.shape[0],
            *(s + (m - 1) * st + 1 for s, m, st in zip(start[1:], out, strides)),
            x.shape[-1],
        ]
        cols.append(
            lax.slice(x, start, limit, (1, *strides, 1)).reshape(x.shape[0], -1, x.shape[-1])
        )
    return jnp.stack(cols, axis=1)


def _conv_grads_stride1(x: jax.Array, d: jax.Array, kernel_shape, args) -> jax.Array:
    """Per-example kernel gradients (B, *kernel_shape) of a stride-1 convolution, no patches.

    With the padded input and the output gradient both flattened over space in the
    padded input's row-major order (d zero-padded to the input's trailing widths),
    kernel offset (i, j, ...) becomes a constant shift of the flat index, so each
    offset is one contiguous slice of x and one batched matmul with d: the same
    multiply-adds as the batched weight gradient, and no (B, T, K) patch tensor.
    """
    spatial = kernel_shape[:-2]
    padding, _, dilation = _conv_padding(x, kernel_shape, args)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    b, c, o = x.shape[0], x.shape[-1], d.shape[-1]
    padded = x.shape[1:-1]
    d = jnp.pad(
        d, [(0, 0), (0, 0), *((0, p - n) for p, n in zip(padded[1:], d.shape[2:-1])), (0, 0)]
    )
    d = d.reshape(b, -1, o)
    place = [math.prod(padded[i + 1 :]) for i in range(len(padded))]  # flat stride of each dim
    shifts = [
        sum(i * dl * pl for i, dl, pl in zip(offset, dilation, place))
        for offset in itertools.product(*(range(k) for k in spatial))
    ]
    length = d.shape[1]
    tail = max(0, max(shifts) + length - math.prod(padded))  # room for the last shift
    x = jnp.pad(x.reshape(b, -1, c), [(0, 0), (0, tail), (0, 0)])
    # One physical transpose of d, so that every offset is a plain (O, L) @ (L, C) matmul;
    # without the barrier XLA folds the transpose into each dot as a slower transposed GEMM.
    d_t = lax.optimization_barrier(jnp.swapaxes(d, 1, 2))
    if c * len(shifts) <= _FUSE_OFFSETS_UP_TO:  # few channels: one matmul for all offsets
        cols = jnp.concatenate([x[:, s : s + length] for s in shifts], axis=-1)
        grads = jnp.matmul(d_t, cols).reshape(b, o, len(shifts), c).swapaxes(1, 2)
    else:
        grads = jnp.stack([jnp.matmul(d_t, x[:, s : s + length]) for s in shifts], axis=1)
    return jnp.swapaxes(grads, 2, 3).reshape(b, *kernel_shape)


def _rows(a: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Linear layer operands as (B, T, K) inputs and (B, T, O) output gradients."""
    b = a.shape[0]
    return a.reshape(b, -1, a.shape[-1]), d.reshape(b, -1, d.shape[-1])


def _geometry(d: jax.Array, kernel_shape) -> tuple[int, int, int]:
    """(T, K, O): output positions per example, kernel fan-in, kernel fan-out."""
    return d.size // (d.shape[0] * d.shape[-1]), math.prod(kernel_shape[:-1]), kernel_shape[-1]


def _use_ghost(rule: str, t: int, k: int, o: int) -> bool:
    if rule == "mixed":  # Bu et al. 2022: ghost norm iff its T^2 per-pair Gram beats K O / 2
        return 2 * t * t < k * o
    return rule == "ghost"


def _ghost_sq_norms(call: _Call, a: jax.Array, d: jax.Array, kernel_shape) -> jax.Array:
    """An upper bound on ||G_i||^2, from Gram matrices, without G_i.

    sum_ts <a_t, a_s> <d_t, d_s> has terms of both signs, so when they cancel its
    float rounding can dwarf the result (a norm of 1e-6 for a gradient of norm 4).
    The rounding of the two Gram entries (K and O terms) and of the two-stage sum
    over s, then t (T terms each) is at most (K + O + 2T + 3) eps S^2 with
    S = sum_t ||a_t|| ||d_t|| (Cauchy-Schwarz on every term; Higham's gamma_n), so
    that is added: the clip factor then never exceeds C / ||exact G_i||. Without
    cancellation S^2 is about T ||G_i||^2 and the slack ~1e-4 of it or less.
    """
    if call.kind == "conv":
        p = _patches(a, kernel_shape, call.conv_args)
        gram_a = jnp.einsum("bktc,bksc->bts", p, p)
        norms_a = jnp.sqrt(jnp.sum(jnp.square(p), axis=(1, 3)))
        d = d.reshape(d.shape[0], -1, d.shape[-1])
    else:
        a, d = _rows(a, d)
        if a.shape[1] == 1:  # one position: ||a d^T||^2 = ||a||^2 ||d||^2, no cancellation
            return jnp.sum(jnp.square(a[:, 0]), -1) * jnp.sum(jnp.square(d[:, 0]), -1)
        gram_a = jnp.einsum("btk,bsk->bts", a, a)
        norms_a = jnp.sqrt(jnp.sum(jnp.square(a), axis=-1))
    t, k, o = gram_a.shape[1], math.prod(kernel_shape[:-1]), kernel_shape[-1]
    # Two reductions of T terms, kept apart so that XLA cannot merge them into one of T^2.
    rows = lax.optimization_barrier(jnp.sum(gram_a * jnp.einsum("bto,bso->bts", d, d), axis=2))
    s = jnp.sum(norms_a * jnp.sqrt(jnp.sum(jnp.square(d), axis=-1)), axis=1)
    eps = float(jnp.finfo(jnp.result_type(a.dtype, jnp.float32)).eps)
    slack = 1.01 * (k + o + 2 * t + 3) * eps * jnp.square(s)  # 1.01: gamma_n and S's own rounding
    return jnp.maximum(jnp.sum(rows, axis=1), 0.0) + slack


def _conv_grads_strided(x: jax.Array, d: jax.Array, kernel_shape, args) -> jax.Array:
    """Per-example kernel gradients of a strided, undilated convolution via space-to-depth.

    With x regrouped into s x s blocks (channels (a, b, c)), kernel tap (s i' + a, s j' + b)
    of the stride-s convolution is tap (i', j') of a stride-1 convolution on the blocks,
    whose gradients `_conv_grads_stride1` computes without a patch tensor.
    """
    spatial, (c, o) = kernel_shape[:-2], kernel_shape[-2:]
    padding, strides, _ = _conv_padding(x, kernel_shape, args)
    small = [-(-k // st) for k, st in zip(spatial, strides)]  # kernel taps per block
    out = d.shape[1:-1]
    size = [
        max(-(-(n + lo + hi) // st), m - 1 + k)
        for n, (lo, hi), st, m, k in zip(x.shape[1:-1], padding, strides, out, small)
    ]
    x = jnp.pad(
        x,
        [
            (0, 0),
            *(
                (lo, sz * st - n - lo)
                for n, (lo, _), sz, st in zip(x.shape[1:-1], padding, size, strides)
            ),
            (0, 0),
        ],
    )
    b, n = x.shape[0], len(spatial)
    x = x.reshape(b, *(v for sz, st in zip(size, strides) for v in (sz, st)), c)
    x = x.transpose(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    x = x.reshape(b, *size, -1)  # (B, blocks..., s..., C) -> channels (a, b, c)
    unit = {"window_strides": (1,) * n, "padding": [(0, 0)] * n, "rhs_dilation": (1,) * n}
    g = _conv_grads_stride1(x, d, (*small, math.prod(strides) * c, o), unit)
    g = g.reshape(b, *small, *strides, c, o)
    g = g.transpose(0, *(v for i in range(n) for v in (1 + i, 1 + n + i)), 2 * n + 1, 2 * n + 2)
    g = g.reshape(b, *(k * st for k, st in zip(small, strides)), c, o)
    return g[(slice(None), *(slice(0, k) for k in spatial))]


def _per_example_grads(call: _Call, a: jax.Array, d: jax.Array, kernel_shape) -> jax.Array:
    """Every example's kernel gradient G_i, shape (B, *kernel_shape)."""
    if call.kind == "linear":
        a, d = _rows(a, d)
        return jnp.einsum("btk,bto->bko", a, d)
    n = len(kernel_shape) - 2
    if tuple(call.conv_args["window_strides"]) == (1,) * n:
        return _conv_grads_stride1(a, d, kernel_shape, call.conv_args)
    if tuple(call.conv_args.get("rhs_dilation") or (1,) * n) == (1,) * n:
        return _conv_grads_strided(a, d, kernel_shape, call.conv_args)
    b = a.shape[0]  # strided and dilated: explicit patches
    p = _patches(a, kernel_shape, call.conv_args)
    return jnp.einsum("bktc,bto->bkco", p, d.reshape(b, -1, d.shape[-1])).reshape(b, *kernel_shape)


def _softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _path_of(keypath) -> tuple:
    return tuple(
        getattr(k, "key", getattr(k, "idx", None))
        for k in keypath
        if not isinstance(k, jax.tree_util.GetAttrKey)
    )


def make_clipped_grad(
    graphdef: nnx.GraphDef,
    *,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    norm_rule: str = "mixed",
    per_layer: bool = False,
) -> Callable:
    """`clipped_grad(params, x, y, weights_fn, state=None, keys=None) -> (sum, norms, losses)`.

    Traceable. `loss_fn(outputs, labels)` gives the (B,) per-example losses (default:
    softmax cross-entropy with integer labels); each must depend on its own example
    only, which `toolkit.grads._per_example.ClippedGradFn.checked` verifies against vmap.
    `state` is the model's non-`nnx.Param` state (`toolkit.grads._per_example.split_model`),
    merged back in for the forward pass and never differentiated. With `keys` ((B,) PRNG
    keys, one per example: `toolkit.privacy.randomness`), each example runs its own forward pass
    with its state's PRNG keys folded with its key (for models that draw randomness);
    without, one forward pass runs over the whole batch.

    `weights_fn(norms) -> weights` maps the (B,) per-example gradient norms to the
    weights of the sum (clip factor times mask; rows with weight 0 contribute exact
    zeros, even when their gradient is not finite). With `per_layer`, `weights_fn` maps
    {layer: (B,) norms of the examples' gradients in that layer} to {layer: (B,) weights}
    (a layer's kernel and bias together; `toolkit.grads.clipping.layer_of` names it), and
    `norms` are still the whole gradients' norms. `norm_rule` chooses per layer:
    "mixed" (Bu et al.'s rule above), "ghost" or "materialise" for every layer.
    Raises `Unsupported` at trace time for models outside the scope above.
    """
    if norm_rule not in NORM_RULES:
        raise ValueError(f"norm_rule={norm_rule!r}; expected one of {NORM_RULES}.")
    loss_fn = loss_fn or _softmax_cross_entropy

    def run_model(params, state, x, y, calls, perturb, record):
        model = nnx.merge(graphdef, params, *([] if state is None else [state]))
        covered = _install_taps(model, calls, perturb, record)
        param_paths = {_path_of(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)}
        if param_paths - covered:
            raise Unsupported(
                f"parameters outside Linear/Conv layers: {sorted(param_paths - covered)}."
            )
        logits = model(x)
        if not calls or any(c.path + ("kernel",) not in param_paths for c in calls):
            raise Unsupported(
                "a Linear/Conv layer was called that is not a parameter of the model."
            )
        missing = {p[:-1] for p in covered} - {c.path for c in calls}
        if missing:
            raise Unsupported(
                f"layers never called through their contraction hook: {sorted(missing)}."
            )
        return loss_fn(logits, y)

    def batched_forward(params, state, x, y):
        """One forward over the batch: [(call, (input, kernel))] and the output gradients."""
        b = x.shape[0]
        # Pass 0 (shapes only): which layers, in which order, with which output shapes.
        probe: list[_Call] = []
        jax.eval_shape(
            lambda p, s: run_model(p, s, x, y, probe, lambda i, o: 0.0, lambda a, k: None),
            params,
            state,
        )
        for c in probe:
            if c.out.shape[0] != b:
                raise Unsupported(f"layer {c.path}: leading axis {c.out.shape[0]} != batch {b}.")

        calls: list[_Call] = []

        # `state` is an input of the vjp, not a closure: NNX refuses to mutate a variable
        # (dropout's RngCount) merged from a value of another trace level.
        def forward(zs, state):
            operands = []
            losses = run_model(
                params, state, x, y, calls, lambda i, o: zs[i], lambda a, k: operands.append((a, k))
            )
            return losses, operands

        zeros = [jnp.zeros(c.out.shape, c.out.dtype) for c in probe]
        losses, backward, operands = jax.vjp(forward, zeros, state, has_aux=True)
        grads_out, _ = backward(jnp.ones_like(losses))
        return list(zip(calls, operands, strict=True)), grads_out, losses

    def per_example_forward(params, state, x, y, keys):
        """The forward pass of each example alone (jax.vmap), the PRNG keys of its state
        folded with its own key (`toolkit.privacy.randomness`), so that its dropout masks are the
        vmap path's, row for row. Inputs and output gradients come out as from
        `batched_forward`; the kernel operand is a zero of the kernel's shape, which is
        all the sums need (the contraction is linear in the kernel).
        """
        b = x.shape[0]
        calls: list[_Call] = []
        kernels: list[jax.ShapeDtypeStruct] = []

        def one(zs, xi, yi, key, state, probe):
            inputs = []

            def record(a, k):
                inputs.append(a)
                if probe:
                    kernels.append(jax.ShapeDtypeStruct(k.shape, k.dtype))

            losses = run_model(
                params, randomness.fold_state(state, key), xi[None], yi[None],
                calls if probe else [], lambda i, o: 0.0 if zs is None else zs[i], record,
            )  # fmt: skip
            return losses[0], inputs

        jax.eval_shape(
            lambda s: jax.vmap(one, in_axes=(None, 0, 0, 0, None, None))(None, x, y, keys, s, True),
            state,
        )
        for c in calls:
            if c.out.shape[0] != 1:
                raise Unsupported(f"layer {c.path}: leading axis {c.out.shape[0]} != 1 example.")

        def forward(zs, state):
            return jax.vmap(one, in_axes=(0, 0, 0, 0, None, None))(zs, x, y, keys, state, False)

        zeros = [jnp.zeros((b, *c.out.shape), c.out.dtype) for c in calls]
        losses, backward, inputs = jax.vjp(forward, zeros, state, has_aux=True)
        grads_out, _ = backward(jnp.ones_like(losses))
        operands = [
            (call, (a.reshape(b, *a.shape[2:]), jnp.zeros(k.shape, k.dtype)))
            for call, a, k in zip(calls, inputs, kernels, strict=True)
        ]
        return operands, [d.reshape(b, *d.shape[2:]) for d in grads_out], losses

    def clipped_grad(params, x, y, weights_fn, state=None, keys=None):
        b = x.shape[0]
        if keys is None:
            operands, grads_out, losses = batched_forward(params, state, x, y)
        else:
            operands, grads_out, losses = per_example_forward(params, state, x, y, keys)

        # Norms and sums in full float32 precision on every backend (no TF32 on GPU): the
        # clip bound holds only if each norm matches the gradient it scales to rounding.
        with jax.default_matmul_precision("highest"):
            sq = jnp.zeros(b, jnp.float32)  # the whole gradient's squared norm
            sq_layers = {}  # layer name -> (B,) squared norm of its kernel and bias
            layers = []
            for (call, (a, kernel)), d in zip(operands, grads_out, strict=True):
                # The name `toolkit.grads.clipping.layer_of` gives this layer's parameters;
                # layers whose paths join to one name share one C_l, as on the vmap path.
                name = "/".join(map(str, call.path))
                bias = jnp.sum(d.reshape(b, -1, d.shape[-1]), axis=1) if call.use_bias else None
                if _use_ghost(norm_rule, *_geometry(d, kernel.shape)):
                    sq_kernel = _ghost_sq_norms(call, a, d, kernel.shape)
                    per_example = None
                else:
                    per_example = _per_example_grads(call, a, d, kernel.shape)
                    sq_kernel = jnp.sum(jnp.square(per_example.reshape(b, -1)), axis=1)
                sq_bias = None if bias is None else jnp.sum(jnp.square(bias), axis=1)
                sq += sq_kernel
                if sq_bias is not None:
                    sq += sq_bias
                if per_layer:
                    part = sq_kernel if sq_bias is None else sq_kernel + sq_bias
                    sq_layers[name] = sq_layers.get(name, 0.0) + part
                layers.append((name, call, a, kernel, d, per_example, bias))

            norms = jnp.sqrt(sq)
            if per_layer:
                weights = weights_fn({name: jnp.sqrt(v) for name, v in sq_layers.items()})
            else:
                weights = dict.fromkeys((layer[0] for layer in layers), weights_fn(norms))

            def rows(v, w):  # zero dropped rows before any product: 0 * inf = NaN
                v = jnp.where((w != 0).reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0)
                return v

            def scaled(v, w):
                return rows(v, w) * w.reshape((-1,) + (1,) * (v.ndim - 1))

            sums = {}
            for name, call, a, kernel, d, per_example, bias in layers:
                w = weights[name]
                if per_example is not None:
                    g = jnp.tensordot(w, rows(per_example, w), axes=1)
                else:
                    _, vjp = jax.vjp(lambda kk: call.contract(rows(a, w), kk), kernel)  # noqa: B023
                    (g,) = vjp(scaled(d, w))
                sums[(*call.path, "kernel")] = g
                if bias is not None:
                    sums[(*call.path, "bias")] = jnp.tensordot(w, rows(bias, w), axes=1)

        def leaf(kp, p):
            return sums[_path_of(kp)].astype(p.dtype)

        return jax.tree_util.tree_map_with_path(leaf, params), norms, losses

    return clipped_grad
